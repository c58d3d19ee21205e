"""The upgrade handover (`upgrade.py`): checked against the installed aiohttp.

After the 101, aiohttp must keep nothing of a native socket (no connection in its manager, no
task), and bytes the client sent in the same write as its request must reach the socket.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from service.errors import Refused
from service.transports.context import GATEWAY
from service.transports.heartbeat import HeartbeatWheel
from service.transports.upgrade import accept_key
from tests.broker import until
from tests.conftest import GatewayFactory, mint, request
from tests.unit.test_ws_reader import frame

SOCKETS = 40


def _upgrade_headers(**overrides: str) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    headers.update(overrides)
    return headers


def test_accept_key_is_rfc_6455s_example() -> None:
    req = make_mocked_request("GET", "/ws/dashboard", headers=_upgrade_headers())
    assert accept_key(req) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    "overrides",
    [
        {"Upgrade": "h2c"},
        {"Connection": "keep-alive"},
        {"Sec-WebSocket-Version": "12"},
        {"Sec-WebSocket-Key": "c2hvcnQ="},  # 5 bytes
        {"Sec-WebSocket-Key": "not base64!"},
    ],
)
def test_a_bad_upgrade_request_is_refused_with_400(overrides: dict[str, str]) -> None:
    req = make_mocked_request("GET", "/ws/dashboard", headers=_upgrade_headers(**overrides))
    with pytest.raises(Refused) as info:
        accept_key(req)
    assert info.value.status == 400


def _server(gateway: Any) -> web.Server:
    server = gateway.client.server.runner.server
    assert isinstance(server, web.Server)
    return server


async def test_aiohttp_keeps_no_connection_and_no_task_of_an_open_socket(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway()
    before = len(asyncio.all_tasks())
    sockets = [await gateway.connect("dashboard", user=f"u{i}") for i in range(SOCKETS)]
    # Every socket is open and answers (through the lean protocol) ...
    for ws in sockets[:3]:
        assert (await request(ws, "subscribe", {"topics": ["t"]}))["event"] == "ack"
    wheel: HeartbeatWheel = gateway.app[GATEWAY].heartbeats
    assert len(wheel) == SOCKETS
    # ... while aiohttp's manager forgot them once their handler returned.
    await until(lambda: not _server(gateway).connections, what="aiohttp let go of the sockets")
    # No task per socket: the client side's own reader tasks aside, the server added none.
    assert len(asyncio.all_tasks()) - before < SOCKETS
    for ws in sockets:
        await ws.close()
    await until(lambda: not len(wheel), what="closed sockets left the wheel")


async def test_frames_sent_with_the_upgrade_request_are_not_lost(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway()
    host, port = gateway.client.host, gateway.client.port
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET /ws/dashboard HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        f"Authorization: Bearer {mint('early')}\r\n\r\n"
    ).encode()
    message = b'{"event":"subscribe","data":{"topics":["t"]},"ack":7}'
    writer.write(head + frame(0x1, message))
    try:
        async with asyncio.timeout(5):
            status = await reader.readuntil(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 101")
            first, length = await reader.readexactly(2)
            assert first == 0x81
            assert length < 126
            reply = await reader.readexactly(length)
        assert b'"ack":7' in reply
        assert b'"event":"ack"' in reply
    finally:
        writer.close()
