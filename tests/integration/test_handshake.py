"""Every refusal happens as HTTP with a JSON error body, before any upgrade."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from tests.conftest import SECRET, Gateway, GatewayFactory, mint

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def token(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def unsigned(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, None, algorithm="none")


async def refused(gateway: Gateway, path: str, headers: dict[str, str]) -> tuple[int, str]:
    resp = await gateway.client.get(path, headers={**UPGRADE, **headers})
    body = await resp.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str)
    return resp.status, body["error"]["code"]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


EXP = int(time.time()) + 3600


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unauthorized"),
        (bearer("not-a-jwt"), "invalid_token"),
        (bearer(token({"sub": "1", "exp": EXP}, key="wrong-" + "k" * 40)), "invalid_token"),
        (bearer(unsigned({"sub": "1", "exp": EXP})), "invalid_token"),
        (bearer(token({"sub": "1", "exp": int(time.time()) - 10})), "token_expired"),
        (bearer(token({"sub": "1"})), "invalid_token"),
        (bearer(token({"exp": EXP})), "invalid_token"),
    ],
    ids=["missing", "garbage", "bad-signature", "alg-none", "expired", "no-exp", "no-sub"],
)
async def test_bad_tokens_get_401(gateway: Gateway, headers: dict[str, str], code: str) -> None:
    assert await refused(gateway, "/ws/notifications", headers) == (401, code)


async def test_wrong_audience_gets_401(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(jwt_audience="gateway")
    wrong = token({"sub": "1", "exp": EXP, "aud": "someone-else"})
    assert await refused(gateway, "/ws/dashboard", bearer(wrong)) == (401, "invalid_token")
    right = token({"sub": "1", "exp": EXP, "aud": "gateway"})
    ws = await gateway.connect("dashboard", token=right)
    await ws.close()


async def test_wrong_issuer_gets_401(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(jwt_issuer="https://idp.example")
    wrong = token({"sub": "1", "exp": EXP, "iss": "https://evil.example"})
    assert await refused(gateway, "/ws/dashboard", bearer(wrong)) == (401, "invalid_token")


async def test_token_in_query_parameter_is_accepted(gateway: Gateway) -> None:
    ws = await gateway.connect("notifications", query={"access_token": mint("42")})
    await ws.close()


async def test_unknown_namespace_is_404(gateway: Gateway) -> None:
    assert await refused(gateway, "/ws/chat", bearer(mint("1"))) == (404, "not_found")


async def test_unserved_namespace_is_404(start_gateway: GatewayFactory) -> None:
    from service.model import Namespace

    gateway = await start_gateway(namespaces=frozenset({Namespace.DASHBOARD}))
    assert await refused(gateway, "/ws/notifications", bearer(mint("1"))) == (404, "not_found")


async def test_origin_not_listed_gets_403(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(allowed_origins=("https://app.example",))
    headers = {**bearer(mint("1")), "Origin": "https://evil.example"}
    assert await refused(gateway, "/ws/dashboard", headers) == (403, "forbidden")
    ok = await gateway.connect("dashboard", user="1", headers={"Origin": "https://app.example"})
    await ok.close()
    no_origin = await gateway.connect("dashboard", user="1")  # not a browser
    await no_origin.close()


async def test_default_origin_list_refuses_every_browser(gateway: Gateway) -> None:
    headers = {**bearer(mint("1")), "Origin": "http://localhost:8080"}
    assert await refused(gateway, "/ws/dashboard", headers) == (403, "forbidden")


async def test_public_namespace_accepts_anonymous_clients(start_gateway: GatewayFactory) -> None:
    from service.model import Namespace

    gateway = await start_gateway(public_namespaces=frozenset({Namespace.DASHBOARD}))
    ws = await gateway.connect("dashboard")
    await gateway.publish("dashboard.sales", {"total": 3})
    frame = await ws.receive_json(timeout=5)
    assert frame["data"] == {"total": 3}
    assert await refused(gateway, "/ws/notifications", {}) == (401, "unauthorized")


async def test_per_user_connection_cap_gets_429(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(max_connections_per_user=2)
    first = await gateway.connect("notifications", user="42")
    second = await gateway.connect("dashboard", user="42")  # counted over both namespaces
    code = await refused(gateway, "/ws/notifications", bearer(mint("42")))
    assert code == (429, "too_many_connections")
    other = await gateway.connect("notifications", user="7")
    await first.close()
    again = await gateway.connect("notifications", user="42")
    for ws in (second, other, again):
        await ws.close()


async def test_process_connection_cap_gets_503(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(max_connections=1)
    ws = await gateway.connect("dashboard", user="1")
    assert await refused(gateway, "/ws/dashboard", bearer(mint("2"))) == (503, "unavailable")
    await ws.close()


async def test_draining_gateway_refuses_upgrades_with_503(gateway: Gateway) -> None:
    gateway.node.begin_drain()
    assert await refused(gateway, "/ws/dashboard", bearer(mint("1"))) == (503, "unavailable")
    resp = await gateway.client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["status"] == "draining"


async def test_plain_get_without_upgrade_is_400_after_auth(gateway: Gateway) -> None:
    resp = await gateway.client.get("/ws/dashboard", headers=bearer(mint("1")))
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"
