"""JWT verification for the handshake, and dev-token minting. Takes strings, not requests.

Keys and algorithms (RFC 8725 §2.1: the algorithm follows the configured key, never the token):

- `secret` → HS256, at least 32 bytes (RFC 7518 §3.2).
- `public_key_pem` → RS256 for an RSA key (at least 2048 bits), ES256 for an EC P-256 key.
- `jwks_json` → one key per usable JWK, algorithm from its `alg` (or `kty`: RSA → RS256,
  EC P-256 → ES256); JWKs for other algorithms or for encryption are skipped. A token picks
  its key by the header's `kid`; without a `kid` the PEM key serves, or the set's only key.

A token whose header names any other algorithm (`none` included) is refused before any
signature check, and an HS256 token is only ever checked against the secret, so a public key
can never serve as an HMAC secret (key confusion).

Claims: `exp` is required and checked against the injected clock with `leeway_s`, as is `nbf`
when present. `sub` is a valid user id (`routing.id_problem`). `aud` and `iss` are checked
only when configured. `scope` is a space-separated string (or a list of strings); `topics` a
list of valid topics (absent = every topic).

Every refusal is an `AuthError` whose reason is short and safe to show a client (it never
contains the token): code `token_expired` for an expired token, `invalid_token` otherwise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import load_pem_x509_certificate

from service.errors import AuthError
from service.model import Principal
from service.routing import id_problem

HS256 = "HS256"
RS256 = "RS256"
ES256 = "ES256"
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
TOKEN_EXPIRED = "token_expired"
INVALID_TOKEN = "invalid_token"

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class _Key:
    """One verification key and the only algorithm it verifies."""

    alg: str
    key: PublicKey
    kid: str | None = None


class Authenticator:
    """Verifies bearer JWTs into `Principal`s; mints HS256 dev tokens from the secret."""

    def __init__(
        self,
        *,
        secret: str = "",
        public_key_pem: str = "",
        jwks_json: str = "",
        audience: str = "",
        issuer: str = "",
        leeway_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Load the keys; ValueError for a weak secret or an unusable key or JWKS."""
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} bytes")
        if not (math.isfinite(leeway_s) and leeway_s >= 0):
            raise ValueError("leeway must be a finite number of seconds >= 0")
        self._secret = secret
        self._pem = _load_pem(public_key_pem) if public_key_pem.strip() else None
        self._jwks = _load_jwks(jwks_json) if jwks_json.strip() else ()
        self._audience = audience
        self._issuer = issuer
        self._leeway_s = leeway_s
        self._clock = clock
        keys = ([self._pem] if self._pem else []) + list(self._jwks)
        self._algorithms = frozenset([HS256] if secret else []) | {k.alg for k in keys}

    @property
    def configured(self) -> bool:
        """Whether any key is set (without one, no token can be verified)."""
        return bool(self._secret or self._pem or self._jwks)

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms the configured keys accept."""
        return self._algorithms

    def verify(self, token: str) -> Principal:
        """The principal a token names, or AuthError (`token_expired` / `invalid_token`)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _invalid("algorithm not allowed")
        key = self._key_for(alg, header.get("kid"))
        claims = self._decode(token, alg, key)
        self._check_times(claims)
        return Principal(
            sub=_subject(claims),
            scopes=_scopes(claims),
            topics=_topics(claims),
            exp=float(claims["exp"]),
        )

    def mint(
        self,
        sub: str,
        *,
        ttl_s: float = 3600,
        scopes: Iterable[str] = (),
        topics: Iterable[str] | None = None,
    ) -> str:
        """An HS256 token for `sub` signed with the secret (plus `aud`/`iss` when configured).

        ValueError without a secret or for an invalid sub, scope or topic. A negative `ttl_s`
        mints an already expired token (for tests).
        """
        if not self._secret:
            raise ValueError("minting a token needs a JWT secret")
        if not math.isfinite(ttl_s):
            raise ValueError("ttl must be a finite number of seconds")
        if problem := id_problem(sub):
            raise ValueError(f"sub {problem}")
        scope_list = list(dict.fromkeys(scopes))
        for scope in scope_list:
            if not scope or any(ch.isspace() for ch in scope):
                raise ValueError(f"scope {scope!r} must be non-empty without whitespace")
        now = self._clock()
        claims: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + ttl_s)}
        if scope_list:
            claims["scope"] = " ".join(scope_list)
        if topics is not None:
            topic_list = list(dict.fromkeys(topics))
            for topic in topic_list:
                if problem := id_problem(topic):
                    raise ValueError(f"topic {topic!r} {problem}")
            claims["topics"] = topic_list
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._secret, algorithm=HS256)

    def _key_for(self, alg: str, kid: object) -> str | PublicKey:
        """The configured key for this algorithm (and `kid`), chosen by configuration only."""
        if alg == HS256:
            return self._secret
        if kid is not None:
            for key in self._jwks:
                if key.kid == kid and key.alg == alg:
                    return key.key
        if self._pem is not None and self._pem.alg == alg:
            return self._pem.key
        if kid is None and len(self._jwks) == 1 and self._jwks[0].alg == alg:
            return self._jwks[0].key
        raise _invalid("unknown signing key")

    def _decode(self, token: str, alg: str, key: str | PublicKey) -> dict[str, Any]:
        """Check the signature (and aud/iss when configured); times are checked by the caller.

        PyJWT's own exp/nbf/iat checks read the wall clock, so they are off here.
        """
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience or None,
                issuer=self._issuer or None,
                options={
                    "require": ["exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": bool(self._audience),
                    "verify_iss": bool(self._issuer),
                    "verify_sub": False,  # checked below, with a precise reason
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise _invalid("invalid signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"{exc.claim} claim missing") from None
        except jwt.InvalidAudienceError:
            raise _invalid("invalid audience") from None
        except jwt.InvalidIssuerError:
            raise _invalid("invalid issuer") from None
        except jwt.DecodeError:
            raise _invalid("malformed token") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _invalid("invalid token") from None

    def _check_times(self, claims: dict[str, Any]) -> None:
        """`exp` (required) and `nbf` (optional) against the injected clock and leeway."""
        now = self._clock()
        exp = claims["exp"]
        if not _is_number(exp):
            raise _invalid("exp must be a number")
        if exp <= now - self._leeway_s:
            raise AuthError("token expired", TOKEN_EXPIRED)
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_number(nbf):
                raise _invalid("nbf must be a number")
            if nbf > now + self._leeway_s:
                raise _invalid("token not yet valid")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(ch.isspace() for ch in token):
        return None
    return token


def _invalid(reason: str) -> AuthError:
    return AuthError(reason, INVALID_TOKEN)


def _is_number(value: object) -> bool:
    """A finite JSON number (bools excluded; Python's json accepts NaN and Infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _subject(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if sub is None:
        raise _invalid("sub claim missing")
    if not isinstance(sub, str):
        raise _invalid("sub must be a string")
    if problem := id_problem(sub):
        raise _invalid(f"sub {problem}")
    return sub


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if scope is None:
        return frozenset()
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list) and all(isinstance(s, str) and s for s in scope):
        return frozenset(scope)
    raise _invalid("scope must be a string or a list of strings")


def _topics(claims: dict[str, Any]) -> frozenset[str] | None:
    if "topics" not in claims:
        return None
    topics = claims["topics"]
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise _invalid("topics must be a list of strings")
    for topic in topics:
        if problem := id_problem(topic):
            raise _invalid(f"topic {problem}")
    return frozenset(topics)


def _load_pem(pem: str) -> _Key:
    """A public key or certificate in PEM → its key and algorithm; ValueError otherwise."""
    data = pem.strip().encode()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM public key or certificate") from exc
    return _public_key(key)


def _load_jwks(text: str) -> tuple[_Key, ...]:
    """The usable signing keys of a JWKS document; ValueError if unparseable or none usable.

    PyJWT's `PyJWKSet` parses the document (skipping keys it cannot load); of those, the
    RS256 / ES256 signing keys of acceptable strength are kept.
    """
    try:
        jwk_set = jwt.PyJWKSet.from_json(text)
    except ValueError as exc:  # not JSON
        raise ValueError("JWKS is not valid JSON") from exc
    except (jwt.PyJWTError, AttributeError, TypeError, KeyError) as exc:
        # PyJWT's messages may quote the JWKs, which may hold private material: leave them out.
        raise ValueError('JWKS must be an object with a "keys" list of usable keys') from exc
    keys: list[_Key] = []
    for index, jwk in enumerate(jwk_set.keys):
        alg = jwk.algorithm_name  # from `alg`, else from kty/crv: RSA → RS256, P-256 → ES256
        if alg not in (RS256, ES256) or jwk.public_key_use not in (None, "sig"):
            continue  # another algorithm, or an encryption key: not ours to use
        kid = jwk.key_id
        if kid is not None and not isinstance(kid, str):
            raise ValueError(f"JWKS key {index}: kid must be a string")
        name = f"JWKS key {index} ({kid or 'no kid'})"
        try:
            key = _public_key(jwk.key)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        if key.alg != alg:
            raise ValueError(f"{name} is a {key.alg} key, not {alg}")
        keys.append(_Key(alg, key.key, kid))
    if not keys:
        raise ValueError("JWKS holds no RS256 or ES256 signing key")
    return tuple(keys)


def _public_key(key: object) -> _Key:
    """The key and its algorithm: RS256 for RSA >= 2048 bits, ES256 for EC P-256."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key must be at least {MIN_RSA_BITS} bits")
        return _Key(RS256, key)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return _Key(ES256, key)
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("expected a public key, got a private key")
    raise ValueError("public key must be RSA or EC P-256")
