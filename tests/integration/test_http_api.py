"""`POST /api/publish`, `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

from typing import Any

import pytest

from service.backbone.memory import MemoryBackbone
from tests.conftest import API_KEY, Gateway, GatewayFactory, receive

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def post(gateway: Gateway, body: Any, headers: dict[str, str] | None = None) -> Any:
    resp = await gateway.client.post("/api/publish", json=body, headers=AUTH | (headers or {}))
    return resp.status, await resp.json()


async def test_publish_returns_the_id_sockets_see(gateway: Gateway) -> None:
    ws = await gateway.connect("dashboard", user="1")
    status, body = await post(gateway, {"routing_key": "dashboard.sales", "data": [1, 2]})
    assert status == 202
    frame = await receive(ws)
    assert frame["id"] == body["id"]
    assert frame["data"] == [1, 2]


async def test_publish_keeps_a_given_id(gateway: Gateway) -> None:
    status, body = await post(
        gateway, {"routing_key": "notification.broadcast", "data": {}, "id": "given-1"}
    )
    assert (status, body) == (202, {"id": "given-1"})


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        {"data": 1},
        {"routing_key": "orders.created", "data": 1},
        {"routing_key": "dashboard.#", "data": 1},
        {"routing_key": "notification.user.*", "data": 1},
        {"routing_key": "notification.user.", "data": 1},
        {"routing_key": "dashboard.sales", "event": 5},
        {"routing_key": "dashboard.sales", "id": ""},
    ],
)
async def test_bad_bodies_get_400_with_a_reason(gateway: Gateway, body: Any) -> None:
    status, answer = await post(gateway, body)
    assert status == 400
    assert answer["error"]["code"] == "bad_request"
    assert answer["error"]["message"]


async def test_non_json_body_gets_400(gateway: Gateway) -> None:
    resp = await gateway.client.post("/api/publish", data=b"{nope", headers=AUTH)
    assert resp.status == 400


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
async def test_bad_api_key_gets_401(gateway: Gateway, headers: dict[str, str]) -> None:
    resp = await gateway.client.post(
        "/api/publish", json={"routing_key": "dashboard.a", "data": 1}, headers=headers
    )
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_no_api_keys_means_404(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(api_keys=())
    resp = await gateway.client.post("/api/publish", json={}, headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_backbone_down_gets_503(start_gateway: GatewayFactory) -> None:
    backbone = MemoryBackbone()
    gateway = await start_gateway(backbone=backbone)
    backbone.set_available(False)
    status, body = await post(gateway, {"routing_key": "dashboard.sales", "data": 1})
    assert status == 503
    assert body["error"]["code"] == "unavailable"
    resp = await gateway.client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json()) == {"status": "unavailable", "reason": "backbone unavailable"}


async def test_health_and_readiness(gateway: Gateway) -> None:
    resp = await gateway.client.get("/healthz")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    assert (await gateway.client.get("/readyz")).status == 200


async def test_metrics_count_connections_and_deliveries(gateway: Gateway) -> None:
    ws = await gateway.connect("notifications", user="42")
    await gateway.publish("notification.user.42", {"n": 1})
    await receive(ws)
    resp = await gateway.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    connections = 'realtime_gateway_connections{gateway_namespace="notifications",transport="ws"}'
    assert f"{connections} 1.0" in text
    assert 'realtime_gateway_deliveries_total{kind="user"} 1.0' in text
