"""Every use of python-socketio's and python-engineio's private API, in one place.

The Socket.IO transport (`service.transports.socketio`) needs a few things their public API
does not offer. Each is listed here and checked by `tests/unit/test_socketio_internals.py`,
which fails with a message naming the internal when an upgrade changes it; `setup.cfg`
allows only the minor versions those tests passed on. Review this module before widening it.

python-socketio (`socketio.AsyncServer`), subclassed by `Server`:
- `_handle_eio_connect(eio_sid, environ)`: a new Engine.IO session (for the connect timeout).
- `_handle_connect(eio_sid, namespace, data)`: the CONNECT answer is queued when it returns,
  so a session's writer starts only then.
- `_handle_event_internal(server, sid, eio_sid, data, namespace, id)`: replaced, so each event
  goes to the transport with its ack id (python-socketio's own dispatch and ack are unused).
- `_handle_eio_message(eio_sid, data)`, `_binary_packet` and `packet_class`: each packet is
  checked before python-socketio dispatches it (`protocol_violation`).
- `manager.sid_from_eio_sid`, `manager.eio_sid_from_sid`, `manager.is_connected` and
  `manager.disconnect(..., ignore_queue=True)`.

python-engineio:
- `AsyncServer._async["websocket"]`, the driver table entry of the WebSocket class, is
  replaced (on a copy) by `WebSocket`, a subclass of `async_drivers.aiohttp.WebSocket` that
  sets its own `_sock` (no permessage-deflate), learns the session id from its `handler` (the
  bound `AsyncSocket._websocket_handler`) and lets a `SwitchPacket` through its `send`.
- `AsyncSocket._websocket_handler`'s writer sends `pkt.encode()` of each queued packet, one
  at a time, through `send` (what `SwitchPacket` relies on).
- `AsyncServer.sockets` and, on an `AsyncSocket`: `queue` (an `asyncio.Queue` whose
  `join()` returns once the transport took everything), `upgraded`, `closing`, `closed`,
  `send(packet)` and `close(wait, abort, reason)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import socketio
from aiohttp import web
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as engineio_aiohttp
from socketio import packet as sio_packet

# Event names a client may not emit (socket.io-client fires its own listeners for them).
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)

# A client event: (sid, namespace, event, args, ack id); ack id None: no ack asked for.
OnEvent = Callable[[str, str, Any, list[Any], int | None], Awaitable[None]]


class Server(socketio.AsyncServer):  # type: ignore[misc]
    """AsyncServer with the hooks the public API lacks (see the module docstring)."""

    def __init__(
        self,
        after_connect: Callable[[str, str], Awaitable[None]],
        on_engine_open: Callable[[str], None],
        on_violation: Callable[[str, str], Awaitable[None]],
        *,
        on_event: OnEvent | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._after_connect = after_connect
        self._on_engine_open = on_engine_open
        self._on_violation = on_violation
        self._on_event = on_event

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        result = await super()._handle_eio_connect(eio_sid, environ)
        self._on_engine_open(eio_sid)
        return result

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if isinstance(data, str):
            violation = self._violation(eio_sid, data)
        elif eio_sid not in self._binary_packet:
            violation = "a binary message that is no expected attachment"
        else:
            violation = None
        if violation is not None:
            await self._on_violation(eio_sid, violation)
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except ValueError as exc:  # an attachment too many
            await self._on_violation(eio_sid, str(exc))

    def _violation(self, eio_sid: str, text: str) -> str | None:
        """Why a Socket.IO packet breaks the protocol, or None (socket.io's own server closes
        the connection for each of these; python-socketio would log and carry on)."""
        try:
            packet = self.packet_class(encoded_packet=text)
        except (ValueError, TypeError) as exc:
            return f"the packet does not parse: {exc}"
        kind, data = packet.packet_type, packet.data
        if kind == sio_packet.CONNECT:
            return None if data is None or isinstance(data, dict) else "CONNECT data: no object"
        if kind == sio_packet.DISCONNECT:
            return None  # for a namespace already left: python-socketio ignores it
        if kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
            if not isinstance(data, list) or not data:
                return "EVENT data: no array"
            if isinstance(data[0], str) and data[0] in RESERVED_EVENTS:
                return f"EVENT name {data[0]!r} is reserved"
        elif kind in (sio_packet.ACK, sio_packet.BINARY_ACK):
            if not isinstance(data, list):
                return "ACK data: no array"
        else:
            return f"unexpected packet type {kind}"
        if self.manager.sid_from_eio_sid(eio_sid, packet.namespace or "/") is None:
            return f"{sio_packet.packet_names[kind]} before CONNECT to {packet.namespace or '/'}"
        return None

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        try:
            await super()._handle_connect(eio_sid, namespace, data)
        finally:
            # The CONNECT (or CONNECT_ERROR) answer is queued now: events may follow it.
            await self._after_connect(eio_sid, namespace or "/")

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: int | None
    ) -> None:
        if self._on_event is None:  # python-socketio's own dispatch (handlers set with `on`)
            await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
            return
        # Called once the namespace connection is known to be connected; `data` is the
        # EVENT's array (checked by `_violation`): the event name, then its arguments.
        await self._on_event(sid, namespace, data[0], data[1:], id)


@dataclass(slots=True, frozen=True)
class Wire:
    """The aiohttp WebSocket of an Engine.IO session, and its TCP transport."""

    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport


class WebSocket(engineio_aiohttp.WebSocket):  # type: ignore[misc]
    """Engine.IO's aiohttp WebSocket, created like a native one: no permessage-deflate
    (a zlib context per socket costs memory, and every frame would be compressed once per
    socket instead of once per event) and a bounded closing handshake. While it runs, it is
    listed in `registry` under its Engine.IO session id, for the fast path."""

    def __init__(
        self, handler: Any, server: Any, *, registry: dict[str, Wire], close_timeout_s: float
    ) -> None:
        super().__init__(handler, server)
        self._registry = registry
        self._close_timeout_s = close_timeout_s

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(
            # aiohttp refuses a message whose size reaches max_msg_size; a packet of exactly
            # GATEWAY_MAX_MESSAGE_BYTES is accepted, as on native sockets.
            max_msg_size=self.server.max_http_buffer_size + 1,
            compress=False,
            timeout=self._close_timeout_s,
        )
        await self._sock.prepare(request)
        self.environ = environ
        # The handler is the bound `_websocket_handler` of the Engine.IO socket.
        sid: str | None = getattr(getattr(self.handler, "__self__", None), "sid", None)
        if sid is not None and request.transport is not None:
            self._registry[sid] = Wire(self._sock, request.transport)
        try:
            await self.handler(self)
        finally:
            if sid is not None and (wire := self._registry.get(sid)) and wire.ws is self._sock:
                self._registry.pop(sid)
        return self._sock

    async def send(self, message: Any) -> None:
        if isinstance(message, SwitchMarker):
            message.switch()  # the fast path's turn (see SwitchPacket): nothing to send
            return
        await super().send(message)


def install_websocket(sio: Server, factory: Callable[..., WebSocket]) -> None:
    """Make `sio`'s Engine.IO server create its WebSockets with `factory(handler, server)`.

    A copy: the driver table is a module global shared by every Engine.IO server.
    """
    sio.eio._async = {**sio.eio._async, "websocket": factory}


class SwitchMarker(str):
    """What a `SwitchPacket` encodes to: `WebSocket.send` runs `switch` instead of sending."""

    switch: Callable[[], None]


class SwitchPacket(eio_packet.Packet):  # type: ignore[misc]
    """A packet that is never sent: Engine.IO's WebSocket writer hands `WebSocket.send` its
    encoding, a `SwitchMarker`, and the WebSocket calls `switch` instead of sending it.

    The writer sends its packets one by one, each written to the transport before the next
    is encoded: when this one comes up, every packet queued before it is on the wire, so
    frames written straight to the transport from then on keep their order.
    """

    def __init__(self, switch: Callable[[], None]) -> None:
        super().__init__(eio_packet.NOOP)
        self._switch = switch

    def encode(self, b64: bool = False) -> Any:
        marker = SwitchMarker(super().encode(b64))
        marker.switch = self._switch
        return marker


# -- Engine.IO sockets ----------------------------------------------------------------------


def engine_sids(sio: Server) -> list[str]:
    """The ids of every Engine.IO session `sio` holds."""
    return list(sio.eio.sockets)


def open_socket(sio: Server, eio_sid: str) -> Any | None:
    """The Engine.IO socket of `eio_sid`, or None when it is gone, closing or closed."""
    socket = sio.eio.sockets.get(eio_sid)
    if socket is None or socket.closing or socket.closed:
        return None
    return socket


def on_websocket(socket: Any) -> bool:
    """Whether an Engine.IO socket runs on a WebSocket (from the start or after the upgrade)."""
    return bool(socket.upgraded)


async def taken(socket: Any) -> None:
    """Wait until the socket's transport took every packet queued so far."""
    await socket.queue.join()


def enqueue(socket: Any, packet: Any) -> None:
    """Queue a packet (None stops the WebSocket writer, which then closes the WebSocket)."""
    socket.queue.put_nowait(packet)


async def send(socket: Any, packet: Any) -> None:
    """Queue an Engine.IO packet on the socket (EngineIOError when it closed)."""
    await socket.send(packet)


async def close(socket: Any, reason: Any) -> None:
    """Close the socket: disconnect handlers of every namespace, then a CLOSE packet."""
    await socket.close(wait=False, abort=False, reason=reason)


def eio_sid_of(sio: Server, sid: str, namespace: str) -> str:
    """The Engine.IO session id of a namespace connection."""
    return cast(str, sio.manager.eio_sid_from_sid(sid, namespace))


def namespace_connected(sio: Server, sid: str, namespace: str) -> bool:
    """Whether the namespace connection is (still) connected."""
    return bool(sio.manager.is_connected(sid, namespace))


async def drop_namespace(sio: Server, sid: str, namespace: str) -> None:
    """Forget a namespace connection without telling the client (it is gone already)."""
    await sio.manager.disconnect(sid, namespace, ignore_queue=True)
