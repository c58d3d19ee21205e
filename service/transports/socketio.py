"""Socket.IO v4 on `/socket.io/`: clients of the original socket.io gateway connect unchanged.

python-socketio's `AsyncServer` (Engine.IO 4: long-polling, then the WebSocket upgrade) speaks
the protocol on the same aiohttp app and port. Everything else is the native gateway's: each
Socket.IO namespace connection is a `Session` in the same hub, fed by the same fan-out.

- CONNECT: the token comes from the CONNECT packet's `auth: {"token": ...}`, else the
  `Authorization` header, else the `access_token` query; then the same principal and admission
  as native sockets (`node.join`, with its per-user cap, process limit and draining). A refusal
  is a `connect_error` whose `data` is `{"code": ..., "status": ...}` with the contract's code
  and the HTTP status a native socket would get. A browser `Origin` that is not allowed gets
  403 over HTTP before Engine.IO sees the request, as on `/ws/`.
- Recovery: a CONNECT to /notifications may carry `since` (in `auth`, else the query), as a
  native socket's `since` query: the session is held, replayed, then goes live; a bad value
  is refused like a bad query (400 bad_request). The `resume` event works as well.
- Events go to `node.handle` through the same rate limiter. An ack callback gets the result,
  or `{"error": {"code", "message"}}`; without an ack, an error comes as an `error` event.
  Acks travel through the session's buffer like every other frame, so they keep their order
  (the frames `dashboard_refresh` sends come before its ack).
- Delivery: the hub pushes the native frame; the session's `PacketEncoder` turns it into one
  Socket.IO EVENT packet (`2/<ns>,["<event>",<frame>]`: the one argument is the native frame
  object, embedded without re-serialising) and one Engine.IO packet, which caches its own
  wire text. The fan-out hands the same frame to every target, so this happens once per event
  per namespace, not once per socket.
- Backpressure: Engine.IO keeps an unbounded `asyncio.Queue` per client, which its transports
  empty only as fast as the client reads (a polling client that stops asking, or a WebSocket
  whose `send` waits for the peer to drain its TCP window). While a connection polls, the
  session's writer task hands Engine.IO the next batch only once it took the previous one
  (`queue.join()`), so the backlog stays in the session's byte-bounded buffer, where overflow
  closes with 4008 as for native sockets. At most one batch waits in Engine.IO's queue and
  one in its writer.
- Fast path: once the connection runs on a WebSocket (from the start, or after the upgrade),
  the writer task queues a marker behind Engine.IO's packets and ends; when Engine.IO's
  writer reaches the marker, the session gets a sink (the native `WireSink`, with `ws_wire`)
  that writes its frames straight to the TCP transport, as native sockets do: each event
  framed once for every socket, one write per socket per loop iteration, and the transport's
  buffered bytes counted against the budget. Engine.IO keeps sending its own packets
  (pings, CONNECT and DISCONNECT answers), whole frames at a time.
- Closes: Socket.IO has no close codes. 1000, 4001 and 4029 disconnect the namespace (the
  client sees `io server disconnect` and does not reconnect by itself, as it should not with
  an expired token or after flooding). 4008, 1001 and 1011 close the whole Engine.IO
  connection (`transport close`: the client reconnects, through the ingress, elsewhere when
  draining). The TCP connections of requests still in flight are aborted after
  `ABORT_AFTER_S`, so a client that stopped reading cannot pin a handler forever.

Across replicas and worker processes, long-polling needs every request of one Engine.IO
session to reach the same process: the ingress keeps clients on one pod with cookie affinity
(docs/migration.md); WebSocket-only clients need nothing.

Private corners of python-socketio are used, each covered by tests: the server subclass
hooks `_handle_connect` (to start a session's writer only after the CONNECT answer is queued)
and `_handle_event_internal` (to learn the ack id); Engine.IO's aiohttp WebSocket class is
replaced so the WebSocket is created without permessage-deflate, like native sockets, and so
the fast path can find it (by the Engine.IO socket its handler is bound to) and take over at
the marker (which its `send` recognises).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import socketio
import structlog
from aiohttp import web
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as engineio_aiohttp
from engineio.exceptions import EngineIOError
from socketio.exceptions import ConnectionRefusedError as SocketIORefused

from service import codec
from service.auth import bearer_token
from service.errors import BackboneUnavailable, CloseCode, ErrorCode, ProtocolError, Refused
from service.model import ClientMessage, Namespace
from service.ratelimit import RateLimiter, Verdict
from service.session import Session
from service.transports.context import GATEWAY, Gateway, error_response
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

# The ack id of the client event being handled (None: the client asked for no ack).
_ACK_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar("socketio_ack", default=None)


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


class _WebSocket(engineio_aiohttp.WebSocket):  # type: ignore[misc]
    """Engine.IO's aiohttp WebSocket, created like a native one: no permessage-deflate
    (a zlib context per socket costs memory, and every frame would be compressed once per
    socket instead of once per event) and a bounded closing handshake. While it runs, it is
    listed in `registry` under its Engine.IO session id, for the fast path."""

    def __init__(self, handler: Any, server: Any, *, registry: dict[str, _Wire]) -> None:
        super().__init__(handler, server)
        self._registry = registry

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(
            # aiohttp refuses a message whose size reaches max_msg_size; a packet of exactly
            # GATEWAY_MAX_MESSAGE_BYTES is accepted, as on native sockets.
            max_msg_size=self.server.max_http_buffer_size + 1,
            compress=False,
            timeout=CLOSE_TIMEOUT_S,
        )
        await self._sock.prepare(request)
        self.environ = environ
        # The handler is the bound `_websocket_handler` of the Engine.IO socket.
        sid: str | None = getattr(getattr(self.handler, "__self__", None), "sid", None)
        if sid is not None and request.transport is not None:
            self._registry[sid] = _Wire(self._sock, request.transport)
        try:
            await self.handler(self)
        finally:
            if sid is not None and (wire := self._registry.get(sid)) and wire.ws is self._sock:
                self._registry.pop(sid)
        return self._sock

    async def send(self, message: Any) -> None:
        if isinstance(message, _SwitchMarker):
            message.switch()  # the fast path's turn (see _SwitchPacket): nothing to send
            return
        await super().send(message)


@dataclass(slots=True, frozen=True)
class _Wire:
    """The aiohttp WebSocket of an Engine.IO session, and its TCP transport."""

    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport


class _SwitchMarker(str):
    """What a `_SwitchPacket` encodes to: `_WebSocket.send` runs `switch` instead of sending."""

    switch: Callable[[], None]


class _SwitchPacket(eio_packet.Packet):  # type: ignore[misc]
    """A packet that is never sent: Engine.IO's WebSocket writer hands `_WebSocket.send` its
    encoding, a `_SwitchMarker`, and the WebSocket calls `switch` instead of sending it.

    The writer sends its packets one by one, each written to the transport before the next
    is encoded: when this one comes up, every packet queued before it is on the wire, so
    frames written straight to the transport from then on keep their order.
    """

    def __init__(self, switch: Callable[[], None]) -> None:
        super().__init__(eio_packet.NOOP)
        self._switch = switch

    def encode(self, b64: bool = False) -> Any:
        marker = _SwitchMarker(super().encode(b64))
        marker.switch = self._switch
        return marker


def ws_wire(frame: bytes) -> bytes:
    """The WebSocket bytes of a SocketIOFrame, framed once and kept on the shared frame."""
    wire: bytes | None = getattr(frame, "wire", None)
    if wire is None:
        wire = text_frame(b"4" + frame)
        cast(SocketIOFrame, frame).wire = wire
    return wire


class _Server(socketio.AsyncServer):  # type: ignore[misc]
    """AsyncServer with the hooks the public API lacks (see the module docstring)."""

    def __init__(
        self,
        after_connect: Callable[[str, str], Awaitable[None]],
        on_engine_open: Callable[[str], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._after_connect = after_connect
        self._on_engine_open = on_engine_open

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        result = await super()._handle_eio_connect(eio_sid, environ)
        self._on_engine_open(eio_sid)
        return result

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        try:
            await super()._handle_connect(eio_sid, namespace, data)
        finally:
            # The CONNECT (or CONNECT_ERROR) answer is queued now: events may follow it.
            await self._after_connect(eio_sid, namespace or "/")

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: int | None
    ) -> None:
        token = _ACK_ID.set(id)
        try:
            await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            _ACK_ID.reset(token)


class SocketIOTransport:
    """The Socket.IO endpoint of one gateway app; see the module docstring."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._node = gateway.node
        self._config = gateway.config
        self._metrics = gateway.metrics
        allowed = self._config.allowed_origins
        heartbeat_s = self._config.heartbeat_s
        self.sio = _Server(
            self._after_connect,
            self._on_engine_open,
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
        # A copy: the driver table is a module global shared by every Engine.IO server.
        self._wires: dict[str, _Wire] = {}  # Engine.IO sid → its running WebSocket
        websocket = functools.partial(_WebSocket, registry=self._wires)
        self.sio.eio._async = {**self.sio.eio._async, "websocket": websocket}
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
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, sio_namespace)
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
            socket = self.sio.eio.sockets.get(eio_sid)
            connected = self.sio.manager.is_connected(conn.sid, sio_namespace)
            if socket is None or socket.closing or socket.closed or not connected:
                # The client left while the connection was being admitted: python-socketio
                # saw no namespace to disconnect, so this one is ours to undo.
                self._node.leave(conn.session)
                await self.sio.manager.disconnect(conn.sid, sio_namespace, ignore_queue=True)
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
                ack = _ACK_ID.get()
                if ack is not None:
                    self._push_ack(conn, ack, result)
        # Acks go through the session's buffer (above), never straight from python-socketio.
        return self.sio.not_handled

    def _reply_error(self, conn: _Conn, code: ErrorCode, message: str) -> None:
        self._metrics.client_errors.labels(str(code)).inc()
        ack = _ACK_ID.get()
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
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            if not conn.finished:
                await self._close(conn)
            self._finish(conn, "writer ended")

    async def _pump(self, conn: _Conn) -> None:
        session = conn.session
        frames_out = self._metrics.frames_out.labels(session.namespace, TRANSPORT)
        try:
            while True:
                socket = self.sio.eio.sockets.get(conn.eio_sid)
                if socket is None or socket.closing or socket.closed:
                    break
                # Engine.IO's queue has no bound: hand it the next batch only once its
                # transport took the previous one (see the module docstring).
                await socket.queue.join()
                if self._switch_to_wire(conn, socket):
                    return  # the session's sink writes from now on; this task is done
                batch = await session.next_batch()
                if batch is None:
                    return
                for frame in batch:
                    await socket.send(cast(SocketIOFrame, frame).packet)
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
        if wire is None or not socket.upgraded or wire.ws.closed:
            return False
        session = conn.session
        counter = frames_out_counter(self._gateway, session.namespace, TRANSPORT)
        sink = WireSink(wire.ws, wire.transport, counter, ws_wire)

        def switch() -> None:
            if not session.closed and not wire.ws.closed and not wire.transport.is_closing():
                session.attach_sink(sink, flow=sink.flow)

        socket.queue.put_nowait(_SwitchPacket(switch))
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
        socket = self.sio.eio.sockets.get(eio_sid)
        if socket is None or socket.closing or socket.closed:
            return
        self._engine_close[eio_sid] = (code, reason)
        try:
            # Runs the disconnect handlers of every namespace and queues a CLOSE packet.
            await socket.close(wait=False, abort=False, reason=self.sio.reason.SERVER_DISCONNECT)
        finally:
            self._engine_close.pop(eio_sid, None)
        if socket.upgraded:
            # Engine.IO's WebSocket writer stops at None (after the CLOSE packet) and closes
            # the WebSocket; socket.io-client ignores CLOSE packets on a WebSocket.
            socket.queue.put_nowait(None)
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
        for eio_sid in list(self.sio.eio.sockets):
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
    return "websocket" if socket.upgraded else "polling"


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
