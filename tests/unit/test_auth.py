"""service.auth: algorithm allowlist, key selection, claim rules, minting, bearer parsing."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.auth import Authenticator, bearer_token
from service.errors import AuthError

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"
NOW = 1_700_000_000.0


class Clock:
    """A settable clock for injection."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for user `u1` at NOW; a value of None removes the claim."""
    base: dict[str, Any] = {"sub": "u1", "iat": int(NOW), "exp": int(NOW) + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A hand-made token with an empty signature (what `alg: none` looks like)."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


def refused(auth: Authenticator, token: str, code: str = "invalid_token") -> str:
    """Assert `token` is refused with `code`; return the reason, checked not to leak it."""
    with pytest.raises(AuthError) as info:
        auth.verify(token)
    assert info.value.code == code
    if len(token) > 8:  # a real token: never echoed
        assert token not in str(info.value)
    return info.value.reason


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hs_auth(clock: Clock) -> Authenticator:
    return Authenticator(secret=SECRET, clock=clock)


# --- HS256 -----------------------------------------------------------------------------------


def test_hs256_token_gives_principal(hs_auth: Authenticator) -> None:
    principal = hs_auth.verify(hs256())
    assert principal.sub == "u1"
    assert principal.scopes == frozenset()
    assert principal.topics is None
    assert principal.exp == NOW + 600


def test_bad_signature_refused(hs_auth: Authenticator) -> None:
    token = jwt.encode(claims(), SECRET + "-other", algorithm="HS256")
    assert refused(hs_auth, token) == "invalid signature"


def test_tampered_payload_refused(hs_auth: Authenticator) -> None:
    header, _, signature = hs256().split(".")
    forged = b64(json.dumps(claims(sub="admin")).encode())
    refused(hs_auth, f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "...."])
def test_malformed_token_refused(hs_auth: Authenticator, token: str) -> None:
    refused(hs_auth, token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_refused(hs_auth: Authenticator, alg: str) -> None:
    token = unsigned({"alg": alg, "typ": "JWT"}, claims())
    assert refused(hs_auth, token) == "algorithm not allowed"


def test_other_hmac_algorithms_refused(hs_auth: Authenticator) -> None:
    token = jwt.encode(claims(), SECRET + SECRET, algorithm="HS512")
    assert refused(hs_auth, token) == "algorithm not allowed"


def test_short_secret_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        Authenticator(secret="short")


# --- RS256 / ES256 / JWKS -----------------------------------------------------------------------


def test_rs256_pem(rsa_key: rsa.RSAPrivateKey, clock: Clock) -> None:
    auth = Authenticator(public_key_pem=public_pem(rsa_key), clock=clock)
    assert auth.algorithms == {"RS256"}
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert auth.verify(token).sub == "u1"


def test_es256_pem(ec_key: ec.EllipticCurvePrivateKey, clock: Clock) -> None:
    auth = Authenticator(public_key_pem=public_pem(ec_key), clock=clock)
    assert auth.algorithms == {"ES256"}
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert auth.verify(token).sub == "u1"


def test_es256_signed_by_other_key_refused(
    ec_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    auth = Authenticator(public_key_pem=public_pem(ec_key), clock=clock)
    other = ec.generate_private_key(ec.SECP256R1())
    assert refused(auth, jwt.encode(claims(), other, algorithm="ES256")) == "invalid signature"


def test_pem_certificate_accepted(rsa_key: rsa.RSAPrivateKey, clock: Clock) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    auth = Authenticator(public_key_pem=pem, clock=clock)
    assert auth.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).sub == "u1"


def test_hs256_token_refused_by_rs256_authenticator(
    rsa_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    auth = Authenticator(public_key_pem=public_pem(rsa_key), clock=clock)
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert refused(auth, token) == "algorithm not allowed"


def test_key_confusion_public_pem_as_hmac_secret_refused(
    rsa_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    """The classic attack: HS256 signed with the server's public key PEM as the secret."""
    pem = public_pem(rsa_key)
    signing_input = unsigned({"alg": "HS256", "typ": "JWT"}, claims())[:-1]
    signature = hmac.new(pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(signature)}"
    assert refused(Authenticator(public_key_pem=pem, clock=clock), forged) == (
        "algorithm not allowed"
    )
    # Even with a secret configured as well, HS256 is only ever checked against the secret.
    both = Authenticator(secret=SECRET, public_key_pem=pem, clock=clock)
    assert refused(both, forged) == "invalid signature"


def test_rs256_token_refused_by_hs256_authenticator(
    rsa_key: rsa.RSAPrivateKey, hs_auth: Authenticator
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert refused(hs_auth, token) == "algorithm not allowed"


def test_secret_and_pem_both_accepted(rsa_key: rsa.RSAPrivateKey, clock: Clock) -> None:
    auth = Authenticator(secret=SECRET, public_key_pem=public_pem(rsa_key), clock=clock)
    assert auth.algorithms == {"HS256", "RS256"}
    assert auth.verify(hs256()).sub == "u1"
    assert auth.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).sub == "u1"


def jwks(*entries: dict[str, Any]) -> str:
    return json.dumps({"keys": list(entries)})


def rsa_jwk(key: rsa.RSAPrivateKey, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwk | extra


def ec_jwk(key: ec.EllipticCurvePrivateKey, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwk | extra


def test_jwks_selects_key_by_kid(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = Authenticator(
        jwks_json=jwks(
            rsa_jwk(other, kid="old", alg="RS256", use="sig"),
            rsa_jwk(rsa_key, kid="new"),
            ec_jwk(ec_key, kid="ec"),
            {"kty": "oct", "k": b64(b"x" * 32), "kid": "sym"},  # not ours: skipped
        ),
        clock=clock,
    )
    assert auth.algorithms == {"RS256", "ES256"}
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "new"})
    assert auth.verify(token).sub == "u1"
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec"})
    assert auth.verify(token).sub == "u1"
    wrong_kid = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "old"})
    assert refused(auth, wrong_kid) == "invalid signature"
    unknown = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "nope"})
    assert refused(auth, unknown) == "unknown signing key"
    no_kid = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert refused(auth, no_kid) == "unknown signing key"
    alg_mismatch = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "new"})
    assert refused(auth, alg_mismatch) == "unknown signing key"


def test_jwks_single_key_used_without_kid(rsa_key: rsa.RSAPrivateKey, clock: Clock) -> None:
    auth = Authenticator(jwks_json=jwks(rsa_jwk(rsa_key, kid="only")), clock=clock)
    assert auth.verify(jwt.encode(claims(), rsa_key, algorithm="RS256")).sub == "u1"


def test_jwks_skips_keys_for_other_algorithms(
    ec_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    auth = Authenticator(
        jwks_json=jwks(
            ec_jwk(ec_key, kid="p256"),
            ec_jwk(p384, kid="p384"),  # ES384 by its curve: skipped
            ec_jwk(ec_key, kid="enc", use="enc"),  # not a signing key: skipped
        ),
        clock=clock,
    )
    assert auth.algorithms == {"ES256"}
    assert auth.verify(jwt.encode(claims(), ec_key, algorithm="ES256")).sub == "u1"


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"keys": {}}',
        '{"keys": []}',
        '{"keys": [1]}',
        '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}',
        '{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}',
    ],
)
def test_unusable_jwks_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        Authenticator(jwks_json=text)


def test_unusable_pem_raises_value_error(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError):
        Authenticator(public_key_pem="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ValueError):
        Authenticator(public_key_pem=private_pem)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError):
        Authenticator(public_key_pem=public_pem(p384))


def test_configured() -> None:
    assert not Authenticator().configured
    assert Authenticator(secret=SECRET).configured


def test_unconfigured_refuses_everything() -> None:
    refused(Authenticator(), hs256())


# --- time claims --------------------------------------------------------------------------------


def test_expired_token_has_its_own_code(hs_auth: Authenticator, clock: Clock) -> None:
    token = hs256()
    assert hs_auth.verify(token).sub == "u1"
    clock.now = NOW + 600
    assert refused(hs_auth, token, code="token_expired") == "token expired"


def test_leeway_extends_expiry(clock: Clock) -> None:
    auth = Authenticator(secret=SECRET, leeway_s=30, clock=clock)
    token = hs256()
    clock.now = NOW + 620
    assert auth.verify(token).sub == "u1"
    clock.now = NOW + 630
    refused(auth, token, code="token_expired")


def test_clock_is_injected_not_wall_time(clock: Clock) -> None:
    """A token that expired long ago in wall time is valid at the injected time."""
    clock.now = 1_000.0
    auth = Authenticator(secret=SECRET, clock=clock)
    assert auth.verify(hs256(iat=900, exp=2_000)).sub == "u1"


@pytest.mark.parametrize("exp", [None, "soon", True, [1]])
def test_missing_or_bad_exp_refused(hs_auth: Authenticator, exp: Any) -> None:
    refused(hs_auth, hs256(exp=exp))


def test_infinite_exp_refused(hs_auth: Authenticator) -> None:
    """Python's json reads `Infinity`; a token must not live forever through it."""
    token = jwt.PyJWS().encode(b'{"sub": "u1", "exp": Infinity}', SECRET, algorithm="HS256")
    assert refused(hs_auth, token) == "exp must be a number"


def test_nbf_in_future_refused(hs_auth: Authenticator, clock: Clock) -> None:
    token = hs256(nbf=int(NOW) + 60)
    assert refused(hs_auth, token) == "token not yet valid"
    clock.now = NOW + 60
    assert hs_auth.verify(token).sub == "u1"


# --- audience and issuer -----------------------------------------------------------------------


def test_audience_checked_when_configured(clock: Clock) -> None:
    auth = Authenticator(secret=SECRET, audience="gateway", clock=clock)
    assert auth.verify(hs256(aud="gateway")).sub == "u1"
    assert auth.verify(hs256(aud=["other", "gateway"])).sub == "u1"
    assert refused(auth, hs256(aud="other")) == "invalid audience"
    assert refused(auth, hs256()) == "aud claim missing"


def test_audience_ignored_when_not_configured(hs_auth: Authenticator) -> None:
    assert hs_auth.verify(hs256(aud="anything")).sub == "u1"


def test_issuer_checked_when_configured(clock: Clock) -> None:
    auth = Authenticator(secret=SECRET, issuer="https://idp", clock=clock)
    assert auth.verify(hs256(iss="https://idp")).sub == "u1"
    assert refused(auth, hs256(iss="https://evil")) == "invalid issuer"
    assert refused(auth, hs256()) == "iss claim missing"


def test_issuer_ignored_when_not_configured(hs_auth: Authenticator) -> None:
    assert hs_auth.verify(hs256(iss="anyone")).sub == "u1"


# --- sub, scope, topics -------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["#", "*", "a.#", "a.*.b", "", "a b", "a..b", ".a", "x" * 201])
def test_sub_that_is_not_an_id_refused(hs_auth: Authenticator, sub: str) -> None:
    assert refused(hs_auth, hs256(sub=sub)).startswith("sub ")


@pytest.mark.parametrize("sub", [42, True, ["u1"], {"id": "u1"}])
def test_non_string_sub_refused(hs_auth: Authenticator, sub: Any) -> None:
    assert refused(hs_auth, hs256(sub=sub)) == "sub must be a string"


def test_missing_sub_refused(hs_auth: Authenticator) -> None:
    assert refused(hs_auth, hs256(sub=None)) == "sub claim missing"


def test_sub_with_dots_accepted(hs_auth: Authenticator) -> None:
    assert hs_auth.verify(hs256(sub="org.user-1@example.com")).sub == "org.user-1@example.com"


def test_scope_string(hs_auth: Authenticator) -> None:
    principal = hs_auth.verify(hs256(scope="dashboard:publish  read"))
    assert principal.scopes == {"dashboard:publish", "read"}


def test_scope_list(hs_auth: Authenticator) -> None:
    principal = hs_auth.verify(hs256(scope=["dashboard:publish", "read"]))
    assert principal.scopes == {"dashboard:publish", "read"}


@pytest.mark.parametrize("scope", [42, ["ok", 1], [""], {"a": 1}])
def test_bad_scope_refused(hs_auth: Authenticator, scope: Any) -> None:
    refused(hs_auth, hs256(scope=scope))


def test_topics_claim(hs_auth: Authenticator) -> None:
    principal = hs_auth.verify(hs256(topics=["sales", "ops.eu"]))
    assert principal.topics == frozenset({"sales", "ops.eu"})
    assert principal.may_see("sales")
    assert not principal.may_see("hr")
    assert hs_auth.verify(hs256(topics=[])).topics == frozenset()


@pytest.mark.parametrize("topics", ["sales", [1], ["*"], ["sales.#"], [""], None])
def test_bad_topics_refused(hs_auth: Authenticator, topics: Any) -> None:
    token = jwt.encode({**claims(), "topics": topics}, SECRET, algorithm="HS256")
    refused(hs_auth, token)


# --- mint ---------------------------------------------------------------------------------------


def test_mint_round_trip(hs_auth: Authenticator) -> None:
    token = hs_auth.mint("u1", ttl_s=60, scopes=["dashboard:publish", "read"], topics=["sales"])
    principal = hs_auth.verify(token)
    assert principal.sub == "u1"
    assert principal.scopes == {"dashboard:publish", "read"}
    assert principal.topics == frozenset({"sales"})
    assert principal.exp == NOW + 60
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload == {
        "sub": "u1",
        "iat": int(NOW),
        "exp": int(NOW) + 60,
        "scope": "dashboard:publish read",
        "topics": ["sales"],
    }


def test_mint_minimal_claims(hs_auth: Authenticator) -> None:
    token = hs_auth.mint("u1")
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert set(payload) == {"sub", "iat", "exp"}
    assert hs_auth.verify(token).topics is None


def test_mint_includes_configured_aud_and_iss(clock: Clock) -> None:
    auth = Authenticator(secret=SECRET, audience="gw", issuer="dev", clock=clock)
    assert auth.verify(auth.mint("u1")).sub == "u1"


def test_mint_expiry_follows_clock(hs_auth: Authenticator, clock: Clock) -> None:
    token = hs_auth.mint("u1", ttl_s=10)
    clock.now = NOW + 10
    refused(hs_auth, token, code="token_expired")


def test_mint_needs_secret(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError):
        Authenticator(public_key_pem=public_pem(rsa_key)).mint("u1")


@pytest.mark.parametrize(
    "kwargs",
    [{"sub": "#"}, {"sub": ""}, {"scopes": ["a b"]}, {"scopes": [""]}, {"topics": ["*"]}],
)
def test_mint_refuses_invalid_input(hs_auth: Authenticator, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        hs_auth.mint(**({"sub": "u1"} | kwargs))


# --- bearer_token -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwdw==", None),
        ("abc.def.ghi", None),
        ("Bearer a b", None),
        ("Bearerabc", None),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected
