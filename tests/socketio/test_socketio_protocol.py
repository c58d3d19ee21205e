"""Clients that break the Socket.IO v4 protocol are disconnected at once (contract §5).

socket.io's own server closes the connection when a packet does not parse or is not allowed
in its place (the first packet must be a CONNECT); python-socketio alone would log it and keep
the connection until the connect timeout. Raw Engine.IO clients play the rule-breakers.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from service.transports.socketio import SOCKETIO
from tests.broker import until
from tests.conftest import GatewayFactory, mint

WS_URL = "/socket.io/?EIO=4&transport=websocket"
POLLING_URL = "/socket.io/?EIO=4&transport=polling"
PROMPTLY_S = 2.0  # far below the 45 s connect timeout and the 25 s heartbeat


async def _open_ws(gateway: object, connect: str | None = None) -> aiohttp.ClientWebSocketResponse:
    """A raw Engine.IO WebSocket, opened, and connected to `connect` when given."""
    ws = await gateway.client.ws_connect(WS_URL)  # type: ignore[attr-defined]
    assert (await ws.receive_str(timeout=5)).startswith("0{")
    if connect is not None:
        await ws.send_str(f"40/{connect}," + orjson.dumps({"token": mint("42")}).decode())
        assert (await ws.receive_str(timeout=5)).startswith(f"40/{connect},")
    return ws


async def _closed_promptly(ws: aiohttp.ClientWebSocketResponse) -> list[str]:
    """Read until the server closes the WebSocket (within PROMPTLY_S); the texts before."""
    texts: list[str] = []
    async with asyncio.timeout(PROMPTLY_S):
        while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
            texts.append(msg.data)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    return texts


BEFORE_CONNECT = [
    pytest.param('42/notifications,["notification_read",{"id":"n"}]', id="event"),
    pytest.param('42["notification_read",{"id":"n"}]', id="event-default-namespace"),
    pytest.param("43/notifications,1[null]", id="ack"),
]

MALFORMED = [
    pytest.param("4x", id="unknown-type-letter"),
    pytest.param("49/notifications,[]", id="unknown-type-digit"),
    pytest.param("4", id="empty"),
    pytest.param("42/notifications,[not json", id="bad-json"),
    pytest.param('42/notifications,{"event":"x"}', id="event-not-an-array"),
    pytest.param("42/notifications,[]", id="event-without-name"),
    pytest.param("42/notifications", id="event-without-data"),
    pytest.param('42/notifications,["disconnect"]', id="reserved-name"),
    pytest.param("43/notifications,1", id="ack-without-array"),
    pytest.param('44/notifications,{"message":"x"}', id="connect-error-from-client"),
    pytest.param('40/dashboard,"a-token"', id="connect-data-not-an-object"),
]


@pytest.mark.parametrize("packet", BEFORE_CONNECT)
async def test_a_first_packet_that_is_not_connect_closes_the_connection(
    start_gateway: GatewayFactory, packet: str
) -> None:
    gateway = await start_gateway()
    ws = await _open_ws(gateway)
    await ws.send_str(packet)
    await _closed_promptly(ws)
    await until(lambda: not gateway.app[SOCKETIO].sio.eio.sockets, 2, "the Engine.IO socket")


@pytest.mark.parametrize("packet", MALFORMED)
async def test_a_packet_that_does_not_parse_closes_every_namespace(
    start_gateway: GatewayFactory, packet: str
) -> None:
    gateway = await start_gateway()
    ws = await _open_ws(gateway, connect="notifications")
    session = next(iter(gateway.node.hub.sessions()))

    await ws.send_str(packet)

    await _closed_promptly(ws)
    await asyncio.wait_for(session.wait_closed(), PROMPTLY_S)
    assert session.close_code == 1008
    assert len(gateway.node.hub) == 0
    metrics = await (await gateway.client.get("/metrics")).text()
    assert (
        'realtime_gateway_disconnects_total{code="1008",gateway_namespace="notifications",'
        'transport="socketio"} 1.0'
    ) in metrics


async def test_an_event_for_a_namespace_not_joined_closes_the_connection(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway()
    ws = await _open_ws(gateway, connect="notifications")
    await ws.send_str('42/dashboard,["subscribe",{"topics":["sales"]}]')
    await _closed_promptly(ws)
    await until(lambda: len(gateway.node.hub) == 0, 2, "the notifications session to close")


async def test_a_binary_message_that_is_no_attachment_closes_the_connection(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway()
    ws = await _open_ws(gateway, connect="notifications")
    await ws.send_bytes(b'2["notification_read",{"id":"n"}]')
    await _closed_promptly(ws)


async def test_a_polling_client_that_breaks_the_protocol_gets_a_close_packet(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway()
    opened = await (await gateway.client.get(POLLING_URL)).text()
    url = f"{POLLING_URL}&sid={orjson.loads(opened[1:])['sid']}"
    sent = await gateway.client.post(url, data='42/notifications,["notification_read",{}]')
    assert sent.status == 200
    async with asyncio.timeout(PROMPTLY_S):
        answer = await gateway.client.get(url)
        text = await answer.text()
    # The Engine.IO CLOSE packet to a long-poll in flight, else the session is gone (400):
    # socket.io-client reports either as a closed transport.
    assert (answer.status, text) == (200, "1") or answer.status == 400, (answer.status, text)
    assert not gateway.app[SOCKETIO].sio.eio.sockets


async def test_well_formed_packets_keep_the_connection(start_gateway: GatewayFactory) -> None:
    """The checks refuse nothing a socket.io-client sends: events with and without acks, a
    DISCONNECT for a namespace, and a numeric event name (answered bad_request)."""
    gateway = await start_gateway()
    ws = await _open_ws(gateway, connect="notifications")
    await ws.send_str('42/notifications,1["notification_read",{"id":"n-1"}]')
    assert await ws.receive_str(timeout=5) == '43/notifications,1[{"id":"n-1"}]'
    await ws.send_str("42/notifications,[7]")
    answer = await ws.receive_str(timeout=5)
    assert answer.startswith('42/notifications,["error",{"code":"bad_request"'), answer
    await ws.send_str("41/notifications,")
    await ws.send_str("41/dashboard,")  # never joined: ignored, like socket.io's client does
    await until(lambda: len(gateway.node.hub) == 0, 2, "the namespace to disconnect")
    await ws.send_str("40/dashboard," + orjson.dumps({"token": mint("42")}).decode())
    assert (await ws.receive_str(timeout=5)).startswith("40/dashboard,")
    await ws.close()
