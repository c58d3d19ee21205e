"""Socket.IO v4 on `/socket.io/`: clients of the original socket.io gateway connect unchanged.

python-socketio's `AsyncServer` speaks the protocol on the same app and port; each namespace
connection is a `ClientConnection` (`connection.py`: admission, rate limit, recovery, replies,
close) with its `Session` in the same hub as native sockets. This module is the protocol
around it: the Engine.IO handshake and connect timeout, CONNECT and its refusal, delivery
through Engine.IO (then straight to the WebSocket, as native sockets do) and Engine.IO
closes. Packets are built in `socketio_frames`, once per event and namespace. Every private
corner of python-socketio/python-engineio it uses lives in `socketio_internals`, each checked
by a test. What clients see: docs/migration.md; contract section 5.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiohttp import web
from engineio.exceptions import EngineIOError
from socketio.exceptions import ConnectionRefusedError as SocketIORefused

from service.errors import CloseCode, ErrorCode, Refused
from service.model import Namespace
from service.tasks import cancel_and_wait
from service.transports import connection
from service.transports import socketio_internals as internals
from service.transports.connection import (
    ABORT_AFTER_S,
    CLOSE_TIMEOUT_S,
    ClientConnection,
    count_refusal,
)
from service.transports.context import GATEWAY, Gateway, error_response
from service.transports.handshake import Handshake, check_origin, find_namespace
from service.transports.inflight import InFlight
from service.transports.sink import WireSink
from service.transports.socketio_frames import (
    DIALECT,
    TRANSPORT,
    PacketEncoder,
    SocketIOFrame,
    decode_event,
    ws_wire,
)
from service.transports.socketio_internals import SwitchPacket as _SwitchPacket
from service.transports.socketio_internals import Wire as _Wire

log = structlog.get_logger(__name__)

PATH = "/socket.io/"
CONNECT_TIMEOUT_S = 45.0  # an Engine.IO session that joined no namespace by then is closed
# Codes that end one namespace connection; every other code ends the Engine.IO connection.
NAMESPACE_CLOSES = frozenset(
    {CloseCode.NORMAL, CloseCode.POLICY, CloseCode.TOKEN_EXPIRED, CloseCode.RATE_LIMITED}
)


@dataclass(slots=True, eq=False)
class _Conn:
    """One Socket.IO namespace connection: its ids and the connection layer's client."""

    sid: str
    eio_sid: str
    client: ClientConnection


class SocketIOTransport:
    """The Socket.IO endpoint of one gateway app; see the module docstring."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._config = gateway.config
        self._metrics = gateway.metrics
        allowed = self._config.allowed_origins
        heartbeat_s = self._config.heartbeat_s
        self.sio = internals.Server(
            self._after_connect,
            self._on_engine_open,
            self._on_violation,
            on_event=self._on_event,
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
        self.encoders = {ns: PacketEncoder(ns) for ns in Namespace}
        self._conns: dict[str, _Conn] = {}
        self._starting: dict[tuple[str, str], _Conn] = {}
        self._engine_close: dict[str, tuple[int, str]] = {}
        self._inflight = InFlight()
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
            refusal = Refused(403, "forbidden", "origin not allowed")
            count_refusal(self._gateway, "", TRANSPORT, refusal)
            return error_response(refusal.status, refusal.code, refusal.message)
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
        self._start(self.close_engine(eio_sid, CloseCode.POLICY, "no namespace joined in time"))

    async def _on_violation(self, eio_sid: str, reason: str) -> None:
        """A client broke the Socket.IO protocol: close its Engine.IO connection at once."""
        self._metrics.client_errors.labels(str(ErrorCode.BAD_REQUEST)).inc()
        log.info("protocol_violation", transport=TRANSPORT, reason=reason[:200])
        await self.close_engine(eio_sid, CloseCode.POLICY, "Socket.IO protocol violation")

    async def _on_connect(
        self, sio_namespace: str, sid: str, environ: dict[str, Any], auth: Any = None
    ) -> bool:
        name = sio_namespace.lstrip("/")
        eio_sid = internals.eio_sid_of(self.sio, sid, sio_namespace)
        close = functools.partial(self._close_client, sid, eio_sid, sio_namespace)
        try:
            client = await self._admit(name, environ, auth, close)
        except Exception as exc:
            if not isinstance(exc, Refused):
                log.exception("connect_failed", transport=TRANSPORT, namespace=name)
                exc = Refused(500, "internal", "internal error")
            count_refusal(self._gateway, name, TRANSPORT, exc)
            log.info("refused", transport=TRANSPORT, namespace=name, status=exc.status)
            raise SocketIORefused(exc.message, {"code": exc.code, "status": exc.status}) from None
        self._starting[(eio_sid, sio_namespace)] = _Conn(sid, eio_sid, client)
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
        self, name: str, environ: dict[str, Any], auth: Any, close: connection.CloseClient
    ) -> ClientConnection:
        """The joined connection of a CONNECT (`auth`: its data), or Refused."""
        namespace = find_namespace(self._config, name)
        if namespace is None:
            raise Refused(404, "not_found", f"unknown namespace '/{name}'")
        request = environ.get("aiohttp.request")
        handshake = Handshake(
            namespace,
            environ.get("HTTP_AUTHORIZATION"),
            request.query if request is not None else {},
            auth,
        )
        principal = connection.admit(self._gateway, handshake)
        return await connection.join(
            self._gateway, handshake, principal, DIALECT, close, encoder=self.encoders[namespace]
        )

    async def _after_connect(self, eio_sid: str, sio_namespace: str) -> None:
        """Start the writer of a connection python-socketio has just accepted."""
        conn = self._starting.pop((eio_sid, sio_namespace), None)
        if conn is None:
            return  # refused
        client = conn.client
        with client.bound():
            socket = internals.open_socket(self.sio, eio_sid)
            connected = internals.namespace_connected(self.sio, conn.sid, sio_namespace)
            if socket is None or not connected:
                # The client left while the connection was being admitted: python-socketio
                # saw no namespace to disconnect, so this one is ours to undo.
                client.abandon()
                await internals.drop_namespace(self.sio, conn.sid, sio_namespace)
                return
            self._conns[conn.sid] = conn
            if eio_sid in self._joined:
                self._joined[eio_sid] = True
            # Tasks made here keep the connection's log context.
            self._start(self._run(conn), f"socketio-writer-{client.session.id}")
            log.info("connected", engine=socket_transport(socket))
            if client.since is not None:
                # A task, so the replay does not hold up this client's other namespaces.
                self._start(client.resume())

    def _start(
        self, coro: Coroutine[Any, Any, None], name: str | None = None
    ) -> asyncio.Task[None]:
        """Run `coro` in a task that `shutdown` ends if it is still running."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- client events -------------------------------------------------------------------

    async def _on_event(
        self, sid: str, sio_namespace: str, event: Any, args: list[Any], ack: int | None
    ) -> None:
        conn = self._conns.get(sid)
        if conn is None:
            return
        client = conn.client
        if client.session.closed:  # closing: like a native socket, read nothing more
            return
        # Acks and errors go through the session's buffer, never straight from python-socketio.
        with client.bound():
            await client.receive(functools.partial(decode_event, event, args), ack)

    # -- delivery ------------------------------------------------------------------------

    async def _run(self, conn: _Conn) -> None:
        """The connection's only writer: drain the session, then close the client."""
        client = conn.client
        pump = asyncio.get_running_loop().create_task(self._pump(conn))
        try:
            await client.session.wait_closed()
        finally:
            # A pump waiting on a client that stopped reading is cancelled here: the
            # session dropped its frames, and the client is closed on its own.
            await cancel_and_wait(pump)
        if not client.finished:
            await client.close()
        self._finish(conn, "writer ended")

    async def _pump(self, conn: _Conn) -> None:
        session = conn.client.session
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
        session = conn.client.session
        counter = self._gateway.frames_out(session.namespace, TRANSPORT)
        # aiohttp's heartbeat reset (private, checked by tests/integration/test_conflation.py)
        # on every drain: see TransportFlow.
        alive = getattr(wire.ws, "_reset_heartbeat", None)
        sink = WireSink(wire.ws, wire.transport, counter, ws_wire, alive=alive)

        def switch() -> None:
            if not session.closed and not wire.ws.closed and not wire.transport.is_closing():
                session.attach_sink(sink, flow=sink.flow)

        internals.enqueue(socket, _SwitchPacket(switch))
        return True

    async def _close_client(
        self, sid: str, eio_sid: str, sio_namespace: str, code: int, reason: str
    ) -> None:
        """Close a namespace connection the way its close code asks for (its `CloseClient`)."""
        if code in NAMESPACE_CLOSES:
            await self.sio.disconnect(sid, namespace=sio_namespace)
        else:
            await self.close_engine(eio_sid, code, reason)

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
        if conn.client.finished:
            return
        self._conns.pop(conn.sid, None)
        code, why = self._engine_close.get(conn.eio_sid, (CloseCode.NORMAL, reason))
        conn.client.finish(code, why)

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
