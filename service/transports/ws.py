"""The native WebSocket transport: `GET /ws/{namespace}`.

Every refusal happens as HTTP before the upgrade (404, 401, 403, 429, 503). The handler
answers the upgrade itself and hands the socket to a `ws_socket.WebSocket` protocol; aiohttp
then lets the request go, and the connection has no task of its own. Client frames go from
the protocol to the connection layer (`connection.ClientConnection`) through `NativeClient`;
outbound frames go from the session to the transport through `WireSink`, flushed by the
node's Outbox once per loop iteration; the hub never awaits a socket. This module is only
the transport's glue: the frames themselves are `ws_reader`'s and `ws_socket`'s.
"""

from __future__ import annotations

import functools
from typing import Any

import structlog
from aiohttp import web

from service import codec
from service.errors import ErrorCode, Refused
from service.model import Namespace
from service.transports import connection, upgrade
from service.transports.connection import (
    ABORT_AFTER_S,
    CLOSE_TIMEOUT_S,
    ClientConnection,
    Dialect,
    count_refusal,
)
from service.transports.context import GATEWAY, error_response
from service.transports.handshake import Handshake, check_origin, find_namespace
from service.transports.sink import WireSink
from service.transports.ws_socket import WebSocket

log = structlog.get_logger(__name__)

TRANSPORT = "ws"


def _ack(namespace: Namespace, ack: int, data: Any) -> bytes:
    return codec.encode_ack(ack, data)


def _error(namespace: Namespace, code: ErrorCode, message: str, ack: int | None) -> bytes:
    return codec.encode_error(code, message, ack)


DIALECT = Dialect(TRANSPORT, _ack, _error)


async def handle_ws(request: web.Request) -> web.StreamResponse:
    """Handshake checks, then the socket goes to a `WebSocket` protocol and aiohttp lets go."""
    gateway = request.app[GATEWAY]
    name = request.match_info["namespace"]
    namespace = find_namespace(gateway.config, name)
    if namespace is None:
        return error_response(404, "not_found", f"unknown namespace {name!r}")
    handshake = Handshake(namespace, request.headers.get("Authorization"), request.query)
    client = NativeClient()
    try:
        if not check_origin(request.headers.get("Origin"), gateway.config.allowed_origins):
            raise Refused(403, "forbidden", "origin not allowed")
        principal = connection.admit(gateway, handshake)
        accept = upgrade.accept_key(request)
        conn = await connection.join(gateway, handshake, principal, DIALECT, client.close)
    except Refused as exc:
        count_refusal(gateway, name, TRANSPORT, exc)
        return error_response(exc.status, exc.code, exc.message)
    taken = upgrade.take_over(request, accept)
    if taken is None:  # the client left while it was being admitted
        conn.abandon()
        return upgrade.switched()
    transport, tail = taken
    client.conn = conn
    socket = client.socket = WebSocket(
        transport,
        client,
        gateway.heartbeats,
        # The contract accepts exactly GATEWAY_MAX_MESSAGE_BYTES and closes with 1009 above.
        max_message_bytes=gateway.config.max_message_bytes,
        close_timeout_s=CLOSE_TIMEOUT_S,
        abort_after_s=ABORT_AFTER_S,
    )
    session = conn.session
    with conn.bound():
        socket.start(tail, conn.resume() if conn.since is not None else None)
        frames_out = gateway.frames_out(session.namespace, TRANSPORT)
        sink = WireSink(socket, transport, frames_out, gateway.ws_framer.wire, alive=socket.alive)
        # No writer task: the node's Outbox hands this socket's frames to the sink once per
        # loop iteration (see WireSink), and the client's frames reach `conn` through the
        # socket's protocol. When the session asks to close (slow consumer, drain, expiry,
        # rate limit...), `NativeClient.close` runs the closing handshake.
        session.attach_sink(sink, conn.close_soon, flow=sink.flow)
        log.info("connected")
    return upgrade.switched()


class NativeClient:
    """A native client between its `WebSocket` and its `ClientConnection`."""

    __slots__ = ("conn", "socket")

    def __init__(self) -> None:
        self.conn: ClientConnection | None = None
        self.socket: WebSocket | None = None

    async def on_text(self, text: str) -> None:
        """A client frame: decoded, rate limited and handled by the connection layer."""
        conn = self.conn
        assert conn is not None
        with conn.bound():
            await conn.receive(functools.partial(codec.decode_client_frame, text))

    def on_binary(self, data: bytes) -> None:
        """Binary frames are refused with an error frame; the socket stays open."""
        assert self.conn is not None
        self.conn.reject(ErrorCode.BAD_REQUEST, "binary frames are not accepted")

    def on_ended(self, code: int, reason: str) -> None:
        """The socket is closed: the session leaves the node."""
        conn = self.conn
        assert conn is not None
        with conn.bound():
            conn.ended(code, reason)

    async def close(self, code: int, reason: str) -> None:
        """The session asked to close: the closing handshake with its code."""
        if self.socket is not None:
            await self.socket.close(code, reason)


def add_routes(app: web.Application) -> None:
    """Mount `/ws/{namespace}`."""
    app.router.add_get("/ws/{namespace}", handle_ws)
