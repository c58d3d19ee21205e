"""The native WebSocket transport: `GET /ws/{namespace}`.

Every refusal happens as HTTP before the upgrade (404, 401, 403, 429, 503). After the upgrade,
the handler is the connection's only task: it reads client frames and hands them to the
connection layer (`connection.ClientConnection`), while outbound frames go from the session
to the socket's transport through `WireSink`, flushed by the node's Outbox once per loop
iteration; the hub never awaits a socket. This module is only the protocol: the handshake it
speaks, reading, framing and the close frame.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from service import codec
from service.errors import CloseCode, ErrorCode, Refused
from service.model import Namespace
from service.transports import connection
from service.transports.connection import (
    ABORT_AFTER_S,
    CLOSE_TIMEOUT_S,
    ClientConnection,
    Dialect,
    count_refusal,
)
from service.transports.context import GATEWAY, Gateway, error_response
from service.transports.handshake import Handshake, check_origin, find_namespace
from service.transports.sink import WireSink

log = structlog.get_logger(__name__)

TRANSPORT = "ws"


def _ack(namespace: Namespace, ack: int, data: Any) -> bytes:
    return codec.encode_ack(ack, data)


def _error(namespace: Namespace, code: ErrorCode, message: str, ack: int | None) -> bytes:
    return codec.encode_error(code, message, ack)


DIALECT = Dialect(TRANSPORT, _ack, _error)


async def handle_ws(request: web.Request) -> web.StreamResponse:
    """Handshake checks, then the connection's reader loop."""
    gateway = request.app[GATEWAY]
    name = request.match_info["namespace"]
    namespace = find_namespace(gateway.config, name)
    if namespace is None:
        return error_response(404, "not_found", f"unknown namespace {name!r}")
    ws = web.WebSocketResponse(
        heartbeat=gateway.config.heartbeat_s,
        # aiohttp refuses a frame whose size reaches max_msg_size; the contract accepts
        # exactly GATEWAY_MAX_MESSAGE_BYTES and closes with 1009 one byte above.
        max_msg_size=gateway.config.max_message_bytes + 1,
        compress=False,  # permessage-deflate costs memory per socket and CPU per frame
        timeout=CLOSE_TIMEOUT_S,
    )
    handshake = Handshake(namespace, request.headers.get("Authorization"), request.query)
    try:
        if not check_origin(request.headers.get("Origin"), gateway.config.allowed_origins):
            raise Refused(403, "forbidden", "origin not allowed")
        principal = connection.admit(gateway, handshake)
        if not ws.can_prepare(request).ok:
            raise Refused(400, "bad_request", "expected a WebSocket upgrade")
        close = functools.partial(_close, request, ws)
        conn = await connection.join(gateway, handshake, principal, DIALECT, close)
    except Refused as exc:
        count_refusal(gateway, name, TRANSPORT, exc)
        return error_response(exc.status, exc.code, exc.message)
    try:
        await ws.prepare(request)
    except BaseException:
        conn.abandon()
        raise
    with conn.bound():
        await _serve(gateway, request, ws, conn)
    return ws


async def _serve(
    gateway: Gateway, request: web.Request, ws: web.WebSocketResponse, conn: ClientConnection
) -> None:
    session = conn.session
    # No writer task: the node's Outbox hands this socket's frames to the sink once per
    # loop iteration (see WireSink); this handler task is the connection's only task. When
    # the session asks to close (slow consumer, drain, expiry, rate limit...), the close
    # frame goes out at once while this handler keeps reading until the peer answers it.
    transport = request.transport
    assert transport is not None  # prepared just now
    frames_out = gateway.frames_out(session.namespace, TRANSPORT)
    sink = WireSink(ws, transport, frames_out, gateway.ws_framer.wire)
    session.attach_sink(sink, conn.close_soon, flow=sink.flow)
    log.info("connected")
    try:
        await conn.resume()
        while not session.closed:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                await conn.receive(functools.partial(codec.decode_client_frame, msg.data))
            elif msg.type is WSMsgType.BINARY:
                conn.reject(ErrorCode.BAD_REQUEST, "binary frames are not accepted")
            else:  # CLOSE / CLOSING / CLOSED / ERROR: aiohttp has answered already
                if msg.type is WSMsgType.ERROR:
                    code = getattr(msg.data, "code", None) or ws.close_code
                    session.close(int(code or CloseCode.INTERNAL), str(msg.data))
                break
    finally:
        await conn.end(CloseCode.NORMAL, "client closed")


async def _close(request: web.Request, ws: web.WebSocketResponse, code: int, reason: str) -> None:
    try:
        if not ws.closed:
            await ws.close(code=code, message=reason.encode()[:120])
    finally:
        transport = request.transport
        if transport is not None and not transport.is_closing():
            # Bytes a non-reading client never took must not pin the socket forever.
            asyncio.get_running_loop().call_later(ABORT_AFTER_S, transport.abort)


def add_routes(app: web.Application) -> None:
    """Mount `/ws/{namespace}`."""
    app.router.add_get("/ws/{namespace}", handle_ws)
