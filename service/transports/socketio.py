"""Socket.IO v4 on `/socket.io/`: clients of the original socket.io gateway connect unchanged.

python-socketio's `AsyncServer` speaks the protocol on the same app and port; each namespace
connection is a `Session` in the same hub, with the native admission, rate limit, recovery and
fan-out. Events carry the publisher's `data` first and the metadata second, as the original
gateway's handlers emitted them, each packet built once per event and namespace. The backlog
stays in the session's bounded buffer, and once on a WebSocket the session writes straight to
the transport as native sockets do. Every private corner of python-socketio/python-engineio it
uses lives in `socketio_internals`, each checked by a test. What clients see:
docs/migration.md; contract section 5.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from aiohttp import web
from engineio import packet as eio_packet
from engineio.exceptions import EngineIOError
from socketio.exceptions import ConnectionRefusedError as SocketIORefused

from service import codec
from service.auth import bearer_token
from service.errors import BackboneUnavailable, CloseCode, ErrorCode, ProtocolError, Refused
from service.model import ClientMessage, Namespace
from service.ratelimit import RateLimiter, Verdict
from service.session import Session
from service.tasks import cancel_and_wait
from service.transports import socketio_internals as internals
from service.transports.context import GATEWAY, Gateway, error_response
from service.transports.socketio_internals import SwitchPacket as _SwitchPacket
from service.transports.socketio_internals import Wire as _Wire
from service.transports.wire import text_frame
from service.transports.ws import (
    WireSink,
    check_origin,
    frames_out_counter,
    principal_for_token,
    resume_offset,
)

log = structlog.get_logger(__name__)

TRANSPORT = "socketio"
PATH = "/socket.io/"
CLOSE_TIMEOUT_S = 5.0  # how long a WebSocket closing handshake may take
ABORT_AFTER_S = 5.0  # how long a closed client's requests may stay in flight before the abort
CONNECT_TIMEOUT_S = 45.0  # an Engine.IO session that joined no namespace by then is closed
# Codes that end one namespace connection; every other code ends the Engine.IO connection.
NAMESPACE_CLOSES = frozenset(
    {CloseCode.NORMAL, CloseCode.POLICY, CloseCode.TOKEN_EXPIRED, CloseCode.RATE_LIMITED}
)


class SocketIOFrame(bytes):
    """A Socket.IO packet as the session buffers it, with the Engine.IO packet to send.

    The bytes are the Socket.IO packet (what the session counts against its budget); `packet`
    is one `engineio.packet.Packet` shared by every socket the frame goes to, which encodes
    itself once and caches the result.
    """

    packet: Any
    wire: bytes  # its WebSocket frame, once the fast path framed it (see ws_wire)

    @classmethod
    def of(cls, text: bytes) -> SocketIOFrame:
        """Wrap a Socket.IO packet's UTF-8 text."""
        frame = cls(text)
        frame.packet = eio_packet.Packet(eio_packet.MESSAGE, data=text.decode())
        return frame


class PacketEncoder:
    """Native frame → Socket.IO frame for one namespace; the session's `encoder`.

    It remembers the last frame it saw: the fan-out pushes the same frame object to every
    target, so each event is encoded once for all Socket.IO sessions of the namespace.
    Frames that are already Socket.IO frames (acks) pass through.
    """

    __slots__ = ("_last_frame", "_last_packet", "_namespace", "encoded")

    def __init__(self, namespace: Namespace) -> None:
        self._namespace = str(namespace)
        self._last_frame: bytes | None = None
        self._last_packet = SocketIOFrame()
        self.encoded = 0  # how many frames were encoded (for tests and benchmarks)

    def __call__(self, frame: bytes) -> bytes:
        if frame is self._last_frame:
            return self._last_packet
        if isinstance(frame, SocketIOFrame):
            return frame
        packet = SocketIOFrame.of(codec.socketio_event_packet(self._namespace, frame))
        self._last_frame, self._last_packet = frame, packet
        self.encoded += 1
        return packet


class _InFlight:
    """The TCP transports of the HTTP requests each Engine.IO session has in flight.

    A client that stops reading leaves a request handler waiting on its socket forever (a
    long-poll response or a WebSocket send the peer never drains); aborting the transport
    ends it.
    """

    def __init__(self) -> None:
        self._sid_of: dict[asyncio.BaseTransport, str | None] = {}
        self._by_sid: dict[str, set[asyncio.BaseTransport]] = {}

    def add(self, transport: asyncio.BaseTransport, sid: str | None) -> None:
        """A request arrived on `transport` (for Engine.IO session `sid`, when it names one)."""
        self._sid_of[transport] = sid
        if sid is not None:
            self._by_sid.setdefault(sid, set()).add(transport)

    def assign(self, transport: asyncio.BaseTransport, sid: str) -> None:
        """The request in flight on `transport` turned out to be session `sid`'s WebSocket."""
        if transport in self._sid_of and self._sid_of[transport] is None:
            self.add(transport, sid)

    def discard(self, transport: asyncio.BaseTransport) -> None:
        """The request on `transport` is done."""
        sid = self._sid_of.pop(transport, None)
        transports = self._by_sid.get(sid) if sid is not None else None
        if transports is not None:
            transports.discard(transport)
            if not transports:
                del self._by_sid[cast(str, sid)]

    def abort(self, sid: str) -> int:
        """Abort every request of `sid` still in flight; returns how many."""
        transports = self._by_sid.pop(sid, set())
        for transport in transports:
            self._sid_of.pop(transport, None)
            if not transport.is_closing():
                cast(asyncio.Transport, transport).abort()
        return len(transports)

    def __len__(self) -> int:
        return len(self._sid_of)


@dataclass(slots=True, eq=False)
class _Conn:
    """One Socket.IO namespace connection and its session."""

    sid: str
    eio_sid: str
    session: Session
    limiter: RateLimiter
    since: int | None = None  # a resume asked for on CONNECT (auth or query `since`)
    writer: asyncio.Task[None] | None = None
    finished: bool = False
    log_context: dict[str, Any] = field(default_factory=dict)

    @property
    def sio_namespace(self) -> str:
        return f"/{self.session.namespace}"


def ws_wire(frame: bytes) -> bytes:
    """The WebSocket bytes of a SocketIOFrame, framed once and kept on the shared frame."""
    wire: bytes | None = getattr(frame, "wire", None)
    if wire is None:
        wire = text_frame(b"4" + frame)
        cast(SocketIOFrame, frame).wire = wire
    return wire


class SocketIOTransport:
    """The Socket.IO endpoint of one gateway app; see the module docstring."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._node = gateway.node
        self._config = gateway.config
        self._metrics = gateway.metrics
        allowed = self._config.allowed_origins
        heartbeat_s = self._config.heartbeat_s
        self.sio = internals.Server(
            self._after_connect,
            self._on_engine_open,
            self._on_violation,
            async_mode="aiohttp",
            namespaces="*",  # unknown namespaces get a connect_error with code not_found
            async_handlers=False,  # one event at a time per client, as on a native socket
            cors_allowed_origins=lambda origin, environ=None: check_origin(origin, allowed),
            cors_credentials=True,
            ping_interval=heartbeat_s,
            ping_timeout=heartbeat_s / 2,
            max_http_buffer_size=self._config.max_message_bytes,
            http_compression=False,  # compressing costs CPU per client per response
            logger=logging.getLogger("socketio.server"),
            engineio_logger=logging.getLogger("engineio.server"),
        )
        self._wires: dict[str, _Wire] = {}  # Engine.IO sid → its running WebSocket
        internals.install_websocket(
            self.sio,
            functools.partial(
                internals.WebSocket, registry=self._wires, close_timeout_s=CLOSE_TIMEOUT_S
            ),
        )
        self.sio.on("connect", self._on_connect, namespace="*")
        self.sio.on("disconnect", self._on_disconnect, namespace="*")
        self.sio.on("*", self._on_event, namespace="*")
        self.encoders = {ns: PacketEncoder(ns) for ns in Namespace}
        self._conns: dict[str, _Conn] = {}
        self._starting: dict[tuple[str, str], _Conn] = {}
        self._engine_close: dict[str, tuple[int, str]] = {}
        self._inflight = _InFlight()
        self._tasks: set[asyncio.Task[None]] = set()
        self.abort_after_s = ABORT_AFTER_S
        self.connect_timeout_s = CONNECT_TIMEOUT_S
        self._joined: dict[str, bool] = {}  # Engine.IO sessions younger than the timeout

    def __len__(self) -> int:
        """Open Socket.IO namespace connections."""
        return len(self._conns)

    # -- HTTP ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every Engine.IO request: the origin check, then python-socketio."""
        if not check_origin(request.headers.get("Origin"), self._config.allowed_origins):
            self._metrics.refusals.labels("", TRANSPORT, "403").inc()
            return error_response(403, "forbidden", "origin not allowed")
        transport = request.transport
        if transport is not None:
            self._inflight.add(transport, request.query.get("sid"))
        try:
            return cast(web.StreamResponse, await self.sio.handle_request(request))
        finally:
            if transport is not None:
                self._inflight.discard(transport)

    # -- connect -------------------------------------------------------------------------

    def _on_engine_open(self, eio_sid: str) -> None:
        """A new Engine.IO session: it must join a namespace within the connect timeout.

        The process limit counts sessions (namespace connections), so without this a client
        could hold any number of bare Engine.IO sessions (socket.io's own server does the
        same with its `connectTimeout`).
        """
        self._joined[eio_sid] = False
        asyncio.get_running_loop().call_later(self.connect_timeout_s, self._check_joined, eio_sid)

    def _check_joined(self, eio_sid: str) -> None:
        if self._joined.pop(eio_sid, True):
            return
        task = asyncio.get_running_loop().create_task(
            self.close_engine(eio_sid, CloseCode.POLICY, "no namespace joined in time")
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_violation(self, eio_sid: str, reason: str) -> None:
        """A client broke the Socket.IO protocol: close its Engine.IO connection at once."""
        self._metrics.client_errors.labels(str(ErrorCode.BAD_REQUEST)).inc()
        log.info("protocol_violation", transport=TRANSPORT, reason=reason[:200])
        await self.close_engine(eio_sid, CloseCode.POLICY, "Socket.IO protocol violation")

    async def _on_connect(
        self, sio_namespace: str, sid: str, environ: dict[str, Any], auth: Any = None
    ) -> bool:
        name = sio_namespace.lstrip("/")
        try:
            session, since = await self._admit(name, environ, auth)
        except Exception as exc:
            if not isinstance(exc, Refused):
                log.exception("connect_failed", transport=TRANSPORT, namespace=name)
                exc = Refused(500, "internal", "internal error")
            self._metrics.refusals.labels(name, TRANSPORT, str(exc.status)).inc()
            log.info("refused", transport=TRANSPORT, namespace=name, status=exc.status)
            raise SocketIORefused(exc.message, {"code": exc.code, "status": exc.status}) from None
        eio_sid = internals.eio_sid_of(self.sio, sid, sio_namespace)
        conn = _Conn(
            sid=sid,
            eio_sid=eio_sid,
            session=session,
            limiter=RateLimiter(self._config.rate_limit_per_s, self._config.rate_limit_burst),
            since=since,
            log_context={
                "conn_id": session.id,
                "user_id": session.user_id,
                "namespace": name,
                "transport": TRANSPORT,
            },
        )
        self._starting[(eio_sid, sio_namespace)] = conn
        request = environ.get("aiohttp.request")
        if (
            request is not None
            and request.transport is not None
            and request.query.get("transport") == "websocket"
            and "sid" not in request.query
        ):
            # A WebSocket-only client: its handshake request is its whole connection.
            self._inflight.assign(request.transport, eio_sid)
        return True

    async def _admit(
        self, name: str, environ: dict[str, Any], auth: Any
    ) -> tuple[Session, int | None]:
        """The joined session of a CONNECT and the offset it resumes from, or Refused."""
        if name not in Namespace.__members__.values() or name not in self._config.namespaces:
            raise Refused(404, "not_found", f"unknown namespace '/{name}'")
        namespace = Namespace(name)
        request = environ.get("aiohttp.request")
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
        if not token and request is not None:
            token = request.query.get("access_token")
        principal = principal_for_token(self._gateway, token, namespace)
        since = _resume_offset(namespace, auth, request)
        session = self._node.new_session(
            principal, namespace, TRANSPORT, encoder=self.encoders[namespace]
        )
        try:
            await self._node.join(session)
        except BackboneUnavailable as exc:
            raise Refused(503, "unavailable", str(exc)) from None
        return session, since

    async def _after_connect(self, eio_sid: str, sio_namespace: str) -> None:
        """Start the writer of a connection python-socketio has just accepted."""
        conn = self._starting.pop((eio_sid, sio_namespace), None)
        if conn is None:
            return  # refused
        with structlog.contextvars.bound_contextvars(**conn.log_context):
            socket = internals.open_socket(self.sio, eio_sid)
            connected = internals.namespace_connected(self.sio, conn.sid, sio_namespace)
            if socket is None or not connected:
                # The client left while the connection was being admitted: python-socketio
                # saw no namespace to disconnect, so this one is ours to undo.
                self._node.leave(conn.session)
                await internals.drop_namespace(self.sio, conn.sid, sio_namespace)
                return
            self._conns[conn.sid] = conn
            if eio_sid in self._joined:
                self._joined[eio_sid] = True
            conn.writer = asyncio.get_running_loop().create_task(
                self._run(conn), name=f"socketio-writer-{conn.session.id}"
            )
            self._tasks.add(conn.writer)
            conn.writer.add_done_callback(self._tasks.discard)
            log.info("connected", engine=socket_transport(socket))
            if conn.since is not None:
                # A task, so the replay does not hold up this client's other namespaces.
                resume = asyncio.get_running_loop().create_task(self._resume(conn, conn.since))
                self._tasks.add(resume)
                resume.add_done_callback(self._tasks.discard)

    async def _resume(self, conn: _Conn, since: int) -> None:
        """Serve a resume asked for on CONNECT: the replay, then a `resumed` event."""
        with structlog.contextvars.bound_contextvars(**conn.log_context):
            try:
                await self._node.resume(conn.session, since)
            except ProtocolError as exc:  # the client emitted `resume` first: that one stands
                conn.session.push(codec.encode_error(exc.code, exc.message))
            except Exception:
                log.exception("resume_failed", since=since)

    # -- client events -------------------------------------------------------------------

    async def _on_event(self, event: Any, sio_namespace: str, sid: str, *args: Any) -> Any:
        conn = self._conns.get(sid)
        if conn is None:
            return self.sio.not_handled
        session = conn.session
        if session.closed:  # closing: like a native socket, read nothing more
            return self.sio.not_handled
        with structlog.contextvars.bound_contextvars(**conn.log_context):
            self._metrics.frames_in.labels(session.namespace, TRANSPORT).inc()
            verdict = conn.limiter.check()
            if verdict is Verdict.DISCONNECT:
                session.close(CloseCode.RATE_LIMITED, "rate limit exceeded repeatedly")
                return self.sio.not_handled
            data = args[0] if args else None
            try:
                if not isinstance(event, str) or not event or len(event) > codec.MAX_EVENT_NAME:
                    raise ProtocolError(ErrorCode.BAD_REQUEST, "the event name must be a string")
                if verdict is Verdict.LIMITED:
                    raise ProtocolError(ErrorCode.RATE_LIMITED, "too many messages; slow down")
                if _contains_binary(data):
                    raise ProtocolError(ErrorCode.BAD_REQUEST, "binary data is not accepted")
                result = await self._node.handle(session, ClientMessage(event, data))
            except ProtocolError as exc:
                self._reply_error(conn, exc.code, exc.message)
            except Exception:
                log.exception("handler_failed", event=str(event)[: codec.MAX_EVENT_NAME])
                self._reply_error(conn, ErrorCode.INTERNAL, "internal error")
            else:
                ack = internals.current_ack_id()
                if ack is not None:
                    self._push_ack(conn, ack, result)
        # Acks go through the session's buffer (above), never straight from python-socketio.
        return self.sio.not_handled

    def _reply_error(self, conn: _Conn, code: ErrorCode, message: str) -> None:
        self._metrics.client_errors.labels(str(code)).inc()
        ack = internals.current_ack_id()
        if ack is None:
            conn.session.push(codec.encode_error(code, message))
        else:
            self._push_ack(conn, ack, {"error": {"code": str(code), "message": message}})

    def _push_ack(self, conn: _Conn, ack: int, data: Any) -> None:
        packet = codec.socketio_ack_packet(str(conn.session.namespace), ack, data)
        conn.session.push(SocketIOFrame.of(packet))

    # -- delivery ------------------------------------------------------------------------

    async def _run(self, conn: _Conn) -> None:
        """The connection's only writer: drain the session, then close the client."""
        with structlog.contextvars.bound_contextvars(**conn.log_context):
            pump = asyncio.get_running_loop().create_task(self._pump(conn))
            try:
                await conn.session.wait_closed()
            finally:
                # A pump waiting on a client that stopped reading is cancelled here: the
                # session dropped its frames, and the client is closed on its own.
                await cancel_and_wait(pump)
            if not conn.finished:
                await self._close(conn)
            self._finish(conn, "writer ended")

    async def _pump(self, conn: _Conn) -> None:
        session = conn.session
        frames_out = self._metrics.frames_out.labels(session.namespace, TRANSPORT)
        try:
            while True:
                socket = internals.open_socket(self.sio, conn.eio_sid)
                if socket is None:
                    break
                # Engine.IO's queue has no bound: hand it the next batch only once its
                # transport took the previous one (see the module docstring).
                await internals.taken(socket)
                if self._switch_to_wire(conn, socket):
                    return  # the session's sink writes from now on; this task is done
                batch = await session.next_batch()
                if batch is None:
                    return
                for frame in batch:
                    await internals.send(socket, cast(SocketIOFrame, frame).packet)
                frames_out.inc(len(batch))
        except EngineIOError:  # the socket closed under us
            pass
        session.close(CloseCode.NORMAL, "transport closed")

    def _switch_to_wire(self, conn: _Conn, socket: Any) -> bool:
        """Once the connection runs on a WebSocket, move the session to the fast path.

        Queues a `_SwitchPacket`: when Engine.IO's writer reaches it, the session gets a
        `WireSink` (frames pushed in between wait in the session's buffer, under its
        budget). True when the switch is under way.
        """
        wire = self._wires.get(conn.eio_sid)
        if wire is None or not internals.on_websocket(socket) or wire.ws.closed:
            return False
        session = conn.session
        counter = frames_out_counter(self._gateway, session.namespace, TRANSPORT)
        sink = WireSink(wire.ws, wire.transport, counter, ws_wire)

        def switch() -> None:
            if not session.closed and not wire.ws.closed and not wire.transport.is_closing():
                session.attach_sink(sink, flow=sink.flow)

        internals.enqueue(socket, _SwitchPacket(switch))
        return True

    async def _close(self, conn: _Conn) -> None:
        """Close the client the way the session's close code asks for."""
        code = int(conn.session.close_code or CloseCode.NORMAL)
        if code in NAMESPACE_CLOSES:
            await self.sio.disconnect(conn.sid, namespace=conn.sio_namespace)
        else:
            await self.close_engine(conn.eio_sid, code, conn.session.close_reason)

    async def close_engine(self, eio_sid: str, code: int, reason: str) -> None:
        """Close an Engine.IO connection and every namespace on it with `code`."""
        socket = internals.open_socket(self.sio, eio_sid)
        if socket is None:
            return
        self._engine_close[eio_sid] = (code, reason)
        try:
            # Runs the disconnect handlers of every namespace and queues a CLOSE packet.
            await internals.close(socket, self.sio.reason.SERVER_DISCONNECT)
        finally:
            self._engine_close.pop(eio_sid, None)
        if internals.on_websocket(socket):
            # Engine.IO's WebSocket writer stops at None (after the CLOSE packet) and closes
            # the WebSocket; socket.io-client ignores CLOSE packets on a WebSocket.
            internals.enqueue(socket, None)
        asyncio.get_running_loop().call_later(self.abort_after_s, self._inflight.abort, eio_sid)

    # -- disconnect ----------------------------------------------------------------------

    async def _on_disconnect(self, sio_namespace: str, sid: str, reason: Any = None) -> None:
        conn = self._conns.get(sid)
        if conn is not None:
            self._finish(conn, str(reason or "client disconnect"))

    def _finish(self, conn: _Conn, reason: str) -> None:
        """Unregister a connection (idempotent): the session leaves the hub."""
        if conn.finished:
            return
        conn.finished = True
        self._conns.pop(conn.sid, None)
        session = conn.session
        if not session.closed:
            code, why = self._engine_close.get(conn.eio_sid, (CloseCode.NORMAL, reason))
            session.close(code, why)
        code = int(session.close_code or CloseCode.NORMAL)
        self._node.leave(session, code)
        with structlog.contextvars.bound_contextvars(**conn.log_context):
            log.info("disconnected", code=code, reason=session.close_reason)

    # -- lifecycle -----------------------------------------------------------------------

    async def close_all(self) -> None:
        """Close every Engine.IO connection with 1001 (sessions the drain has not closed)."""
        for eio_sid in internals.engine_sids(self.sio):
            await self.close_engine(eio_sid, CloseCode.GOING_AWAY, "server shutting down")

    async def shutdown(self) -> None:
        """Stop python-socketio's background task and whatever writers are left."""
        await self.sio.shutdown()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT_S)


def socket_transport(socket: Any) -> str:
    """`websocket` or `polling`: what an Engine.IO socket currently runs on."""
    return "websocket" if internals.on_websocket(socket) else "polling"


def _resume_offset(namespace: Namespace, auth: Any, request: web.Request | None) -> int | None:
    """The `since` of a CONNECT to /notifications (auth first, then the query), or None.

    Refused(400, bad_request) when it is not an offset; other namespaces ignore it.
    """
    if namespace is not Namespace.NOTIFICATIONS:
        return None
    value = auth.get("since") if isinstance(auth, dict) else None
    if value is None and request is not None:
        value = request.query.get("since")
    return None if value is None else resume_offset(value)


def _contains_binary(value: Any) -> bool:
    """Whether a decoded Socket.IO argument holds binary attachments (bytes)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes | bytearray):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


SOCKETIO = web.AppKey("socketio", SocketIOTransport)


async def _close_clients(app: web.Application) -> None:
    # After the node's drain: Engine.IO connections that never joined a namespace.
    await app[SOCKETIO].close_all()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[SOCKETIO].shutdown()


def add_routes(app: web.Application) -> None:
    """Mount `/socket.io/` (GET, POST and OPTIONS) on an app that has its GATEWAY."""
    transport = SocketIOTransport(app[GATEWAY])
    app[SOCKETIO] = transport
    for method in ("GET", "POST", "OPTIONS"):
        app.router.add_route(method, PATH, transport.handle)
    app.on_shutdown.append(_close_clients)
    app.cleanup_ctx.append(_lifecycle)
