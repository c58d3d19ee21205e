"""The native WebSocket transport: `GET /ws/{namespace}`.

Every refusal happens as HTTP before the upgrade (404, 401, 403, 429, 503). After the upgrade,
the handler is the connection's only task: it reads and decodes client frames, while outbound
frames go from the session to the socket's transport through `WireSink`, flushed by the node's
Outbox once per loop iteration; the hub never awaits a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from service import codec
from service.auth import bearer_token
from service.codec import AckedProtocolError
from service.errors import AuthError, CloseCode, ErrorCode, ProtocolError, Refused
from service.metrics import BatchedCounter
from service.model import Namespace, Principal
from service.node import Node
from service.ratelimit import RateLimiter, Verdict
from service.recovery import parse_since
from service.session import Session
from service.tasks import wait_ended
from service.transports.context import GATEWAY, Gateway, error_response
from service.transports.wire import TransportFlow

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 5.0  # how long a closing handshake may take before the socket is aborted
ABORT_AFTER_S = 5.0  # how long unsent bytes may keep a closed socket open


def check_origin(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """A request without Origin is not a browser; a browser's Origin must be listed."""
    if origin is None:
        return True
    return "*" in allowed or origin.rstrip("/").lower() in allowed


def authenticate(gateway: Gateway, request: web.Request, namespace: Namespace) -> Principal:
    """The principal of a handshake; raises Refused(401) for a missing or invalid token."""
    token = bearer_token(request.headers.get("Authorization")) or request.query.get("access_token")
    return principal_for_token(gateway, token, namespace)


def principal_for_token(gateway: Gateway, token: str | None, namespace: Namespace) -> Principal:
    """The principal a handshake token names (any transport); Refused(401) when it names none."""
    if not token:
        if namespace in gateway.config.public_namespaces:
            return Principal(sub=None)
        raise Refused(401, "unauthorized", "a token is required")
    if not gateway.auth.configured:
        raise Refused(401, "unauthorized", "this gateway accepts no tokens")
    try:
        return gateway.auth.verify(token)
    except AuthError as exc:
        raise Refused(401, exc.code, exc.reason) from None


async def handle_ws(request: web.Request) -> web.StreamResponse:
    """Handshake checks, then the connection's reader loop."""
    gateway = request.app[GATEWAY]
    name = request.match_info["namespace"]
    namespace = Namespace(name) if name in Namespace.__members__.values() else None
    if namespace is None or namespace not in gateway.config.namespaces:
        return error_response(404, "not_found", f"unknown namespace {name!r}")
    ws = web.WebSocketResponse(
        heartbeat=gateway.config.heartbeat_s,
        # aiohttp refuses a frame whose size reaches max_msg_size; the contract accepts
        # exactly GATEWAY_MAX_MESSAGE_BYTES and closes with 1009 one byte above.
        max_msg_size=gateway.config.max_message_bytes + 1,
        compress=False,  # permessage-deflate costs memory per socket and CPU per frame
        timeout=CLOSE_TIMEOUT_S,
    )
    session: Session | None = None
    since: int | None = None
    try:
        if not check_origin(request.headers.get("Origin"), gateway.config.allowed_origins):
            raise Refused(403, "forbidden", "origin not allowed")
        principal = authenticate(gateway, request, namespace)
        gateway.node.check_admission(principal, namespace)
        if not ws.can_prepare(request).ok:
            raise Refused(400, "bad_request", "expected a WebSocket upgrade")
        if namespace is Namespace.NOTIFICATIONS and "since" in request.query:
            since = resume_offset(request.query["since"])
        session = gateway.node.new_session(principal, namespace, "ws")
        await gateway.node.join(session)
    except Refused as exc:
        gateway.metrics.refusals.labels(name, "ws", str(exc.status)).inc()
        return error_response(exc.status, exc.code, exc.message)
    try:
        await ws.prepare(request)
    except BaseException:
        gateway.node.leave(session)
        raise
    with structlog.contextvars.bound_contextvars(
        conn_id=session.id, user_id=session.user_id, namespace=str(namespace)
    ):
        await _serve(gateway, request, ws, session, since)
    return ws


def resume_offset(value: object) -> int:
    """A handshake's `since` (recovery); Refused(400) when it is not an offset."""
    try:
        return parse_since(value)
    except ProtocolError as exc:
        raise Refused(400, str(exc.code), exc.message) from None


async def _serve(
    gateway: Gateway,
    request: web.Request,
    ws: web.WebSocketResponse,
    session: Session,
    since: int | None = None,
) -> None:
    node = gateway.node
    loop = asyncio.get_running_loop()
    closing: list[asyncio.Task[None]] = []

    def on_close() -> None:
        # The session asked to close (slow consumer, drain, expiry, rate limit...): send the
        # close frame now, while this handler keeps reading until the peer answers it.
        closing.append(loop.create_task(_close(request, ws, session)))

    # No writer task: the node's Outbox hands this socket's frames to the sink once per
    # loop iteration (see WireSink); this handler task is the connection's only task.
    transport = request.transport
    assert transport is not None  # prepared just now
    frames_out = frames_out_counter(gateway, session.namespace, "ws")
    sink = WireSink(ws, transport, frames_out, gateway.ws_framer.wire)
    session.attach_sink(sink, on_close, flow=sink.flow)
    log.info("connected", transport="ws")
    config = gateway.config
    limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)
    try:
        if since is not None:
            await node.resume(session, since)
        while not session.closed:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                gateway.metrics.frames_in.labels(session.namespace, "ws").inc()
                await _on_text(node, session, limiter, msg.data)
            elif msg.type is WSMsgType.BINARY:
                gateway.metrics.frames_in.labels(session.namespace, "ws").inc()
                _reply_error(node, session, ErrorCode.BAD_REQUEST, "binary frames are not accepted")
            else:  # CLOSE / CLOSING / CLOSED / ERROR: aiohttp has answered already
                if msg.type is WSMsgType.ERROR:
                    code = getattr(msg.data, "code", None) or ws.close_code
                    session.close(int(code or CloseCode.INTERNAL), str(msg.data))
                break
    finally:
        session.close(CloseCode.NORMAL, "client closed")
        try:
            for task in closing:
                await wait_ended(task)
        finally:  # a cancelled handler (peer gone) still leaves the node
            code = int(session.close_code or CloseCode.NORMAL)
            node.leave(session, code)
            log.info("disconnected", code=code, reason=session.close_reason)


async def _on_text(node: Node, session: Session, limiter: RateLimiter, text: str) -> None:
    verdict = limiter.check()
    if verdict is Verdict.DISCONNECT:
        session.close(CloseCode.RATE_LIMITED, "rate limit exceeded repeatedly")
        return
    ack: int | None = None
    try:
        message = codec.decode_client_frame(text)
        ack = message.ack
        if verdict is Verdict.LIMITED:
            raise ProtocolError(ErrorCode.RATE_LIMITED, "too many messages; slow down")
        result = await node.handle(session, message)
    except AckedProtocolError as exc:
        _reply_error(node, session, exc.code, exc.message, exc.ack)
        return
    except ProtocolError as exc:
        _reply_error(node, session, exc.code, exc.message, ack)
        return
    except Exception:
        log.exception("handler_failed")
        _reply_error(node, session, ErrorCode.INTERNAL, "internal error", ack)
        return
    if ack is not None:
        session.push(codec.encode_ack(ack, result))


def _reply_error(
    node: Node, session: Session, code: ErrorCode, message: str, ack: int | None = None
) -> None:
    node.metrics.client_errors.labels(str(code)).inc()
    session.push(codec.encode_error(code, message, ack))


class WireSink:
    """Writes a session's frames straight to its transport, coalesced into one write.

    Bypasses aiohttp's per-frame `send_frame` (an await, a header build and a system call
    per frame per socket). aiohttp still owns the socket's control frames (pong, ping,
    close); both write whole frames synchronously, so they never interleave. Nothing is
    written once aiohttp started the closing handshake. Returns the transport's buffered
    bytes, which the session counts against its budget (slow consumer = 4008). `flow` is the
    transport's flow control, for a conflating session to wait on.

    `wire` turns a buffered frame into its WebSocket bytes: `WireFramer.wire` for native
    frames, `socketio.ws_wire` for Socket.IO packets on the Socket.IO fast path.
    """

    __slots__ = ("_counter", "_transport", "_wire", "_ws", "flow")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | Any,
        counter: BatchedCounter,
        wire: Callable[[bytes], bytes],
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._counter = counter
        self._wire = wire
        # aiohttp's heartbeat reset (private, checked by tests/integration/test_conflation.py)
        # on every drain: see TransportFlow.
        self.flow = TransportFlow(transport, alive=getattr(ws, "_reset_heartbeat", None))

    def __call__(self, frames: list[bytes]) -> int:
        transport = self._transport
        if self._ws.closed or transport.is_closing():
            return 0
        wire = self._wire
        if len(frames) == 1:
            transport.write(wire(frames[0]))
        else:
            transport.write(b"".join([wire(frame) for frame in frames]))
        self._counter.add(len(frames))
        return int(transport.get_write_buffer_size())


def frames_out_counter(gateway: Gateway, namespace: Namespace, transport: str) -> BatchedCounter:
    """The app's frames_out accumulator for one namespace and transport (made on first use)."""
    counters = gateway.frames_out_counters
    counter = counters.get((namespace, transport))
    if counter is None:
        counter = BatchedCounter(gateway.metrics.frames_out.labels(namespace, transport))
        counters[(namespace, transport)] = counter
    return counter


async def _close(request: web.Request, ws: web.WebSocketResponse, session: Session) -> None:
    if not ws.closed:
        code = int(session.close_code or CloseCode.NORMAL)
        reason = session.close_reason.encode()[:120]
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S + 1):
                await ws.close(code=code, message=reason)
    transport = request.transport
    if transport is not None and not transport.is_closing():
        # Bytes a non-reading client never took must not pin the socket forever.
        asyncio.get_running_loop().call_later(ABORT_AFTER_S, transport.abort)


def add_routes(app: web.Application) -> None:
    """Mount `/ws/{namespace}`."""
    app.router.add_get("/ws/{namespace}", handle_ws)
