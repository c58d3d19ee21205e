"""Client → server events, acks and error frames, and the close codes of section 3."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from service.backbone.memory import MemoryBackbone, UpstreamRecord
from tests.conftest import Gateway, GatewayFactory, mint, nothing_arrives, receive, request


async def test_notification_read_goes_upstream_with_the_token_user_and_echoes(
    start_gateway: GatewayFactory,
) -> None:
    backbone = MemoryBackbone()
    gateway = await start_gateway(backbone=backbone)
    phone = await gateway.connect("notifications", user="42")
    laptop = await gateway.connect("notifications", user="42")
    stranger = await gateway.connect("notifications", user="7")
    seen: list[UpstreamRecord] = []
    backbone.on_upstream(seen.append)

    answer = await request(phone, "notification_read", {"id": "n-1", "user_id": "7"})

    assert answer == {"event": "ack", "ack": 1, "data": {"id": "n-1"}}
    assert len(seen) == 1
    assert seen[0].routing_key == "notifications.notification_read"
    body = orjson.loads(seen[0].body)
    assert body["user_id"] == "42"
    assert body["event"] == "notification_read"
    assert body["namespace"] == "notifications"
    assert body["data"] == {"id": "n-1"}
    assert body["instance"] == "test-instance"
    assert isinstance(body["connection_id"], str)
    assert isinstance(body["ts"], int)
    echo = await receive(laptop)
    assert (echo["event"], echo["data"]) == ("notification_read", {"id": "n-1"})
    assert isinstance(echo["offset"], int)
    # Neither the sender nor another user gets the echo: a broadcast is the barrier.
    await gateway.publish("notification.broadcast", {"barrier": 1})
    assert (await receive(phone))["data"] == {"barrier": 1}
    assert (await receive(stranger))["data"] == {"barrier": 1}


async def test_upstream_unavailable_is_reported_and_nothing_is_sent(
    start_gateway: GatewayFactory,
) -> None:
    backbone = MemoryBackbone()
    gateway = await start_gateway(backbone=backbone)
    ws = await gateway.connect("notifications", user="42")
    backbone.set_available(False)
    answer = await request(ws, "notification_read", {"id": "n-1"})
    assert answer["event"] == "error"
    assert answer["error"]["code"] == "unavailable"
    assert not backbone.upstream
    assert (await gateway.client.get("/readyz")).status == 503
    backbone.set_available(True)
    assert (await request(ws, "notification_read", {"id": "n-1"}, ack=2))["event"] == "ack"


async def test_dashboard_update_needs_the_publish_scope(gateway: Gateway) -> None:
    reader = await gateway.connect("dashboard", user="1")
    writer = await gateway.connect("dashboard", token=mint("2", scopes=["dashboard:publish"]))
    denied = await request(reader, "dashboard_update", {"topic": "sales", "data": {"t": 1}})
    assert denied["error"]["code"] == "forbidden"

    answer = await request(writer, "dashboard_update", {"topic": "sales", "data": {"t": 2}})
    assert answer["event"] == "ack"
    frame = await receive(reader)
    assert (frame["event"], frame["topic"], frame["data"]) == (
        "dashboard_update",
        "sales",
        {"t": 2},
    )
    assert frame["id"] == answer["data"]["id"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('"text"', "bad_request"),
        ('{"data": {}}', "bad_request"),
        ('{"event": "dance", "ack": 3}', "unknown_event"),
        ('{"event": "subscribe", "data": {"topics": "sales"}, "ack": 4}', "bad_request"),
        ('{"event": "subscribe", "data": {"topics": ["a#"]}, "ack": 5}', "bad_request"),
        ('{"event": "notification_read", "data": {}, "ack": 6}', "unknown_event"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_usable(
    gateway: Gateway, raw: str, code: str
) -> None:
    ws = await gateway.connect("dashboard", user="1")
    await ws.send_str(raw)
    frame = await receive(ws)
    assert frame["event"] == "error"
    assert frame["error"]["code"] == code
    if '"ack"' in raw:
        assert frame["ack"] == orjson.loads(raw)["ack"]
    assert (await request(ws, "subscribe", {"topics": ["sales"]}, ack=99))["event"] == "ack"


async def test_binary_frame_is_refused_but_the_socket_stays_open(gateway: Gateway) -> None:
    ws = await gateway.connect("dashboard", user="1")
    await ws.send_bytes(b'{"event": "subscribe"}')
    frame = await receive(ws)
    assert frame["error"]["code"] == "bad_request"
    assert (await request(ws, "subscribe", {"topics": ["sales"]}))["event"] == "ack"


async def test_frame_of_exactly_the_limit_is_accepted_one_more_byte_closes_1009(
    start_gateway: GatewayFactory,
) -> None:
    limit = 2048
    gateway = await start_gateway(max_message_bytes=limit)
    ws = await gateway.connect("dashboard", user="1")
    prefix = '{"event": "unsubscribe", "ack": 1, "data": {"topics": ["sales"]}, "pad": "'
    exact = prefix + "x" * (limit - len(prefix) - 2) + '"}'
    assert len(exact.encode()) == limit
    await ws.send_str(exact)
    assert (await receive(ws))["event"] == "ack"
    await ws.send_str(exact[:-2] + 'x"}')
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1009


async def test_invalid_utf8_closes_1007(gateway: Gateway) -> None:
    ws = await gateway.connect("dashboard", user="1")
    writer = ws._writer
    await writer.send_frame(b'{"event": "\xff\xfe"}', aiohttp.WSMsgType.TEXT)
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1007


async def test_rate_limit_errors_then_closes_4029(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(rate_limit_per_s=1.0, rate_limit_burst=2)
    ws = await gateway.connect("dashboard", user="1")
    codes: list[str] = []
    async with asyncio.timeout(10):
        for ack in range(100):
            try:
                await ws.send_json({"event": "subscribe", "data": {"topics": ["a"]}, "ack": ack})
            except ConnectionError:
                break
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = msg.json()
            codes.append(frame["event"] if frame["event"] == "ack" else frame["error"]["code"])
    assert codes[:2] == ["ack", "ack"]
    assert "rate_limited" in codes
    assert ws.close_code == 4029


async def test_auth_refresh_keeps_the_socket_and_expiry_closes_4001(gateway: Gateway) -> None:
    ws = await gateway.connect("notifications", token=mint("42", ttl_s=2))
    wrong_user = await request(ws, "auth", {"token": mint("7")}, ack=1)
    assert wrong_user["error"]["code"] == "forbidden"
    fresh = await request(ws, "auth", {"token": mint("42", ttl_s=3600)}, ack=2)
    assert fresh["event"] == "ack"
    assert fresh["data"]["exp"] > time.time() + 3000
    gateway.node.expire_tokens(time.time() + 5)  # the old expiry passes: socket stays
    assert await nothing_arrives(ws, 0.2)
    closing = await gateway.connect("notifications", token=mint("42", ttl_s=1))
    msg = await closing.receive(timeout=10)  # the sweeper closes it a second or two later
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 4001
    assert not ws.closed
