"""`WireSink`: the WebSocket fast path's writer, shared by both transports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from service.metrics import BatchedCounter
from service.transports.wire import TransportFlow


class Closable(Protocol):
    """The WebSocket a sink writes for: nothing is written once its close started."""

    @property
    def closed(self) -> bool:
        """True once the closing handshake started."""


class WireSink:
    """Writes a session's frames straight to its transport, coalesced into one write.

    Bypasses a per-frame send (an await, a header build and a system call per frame per
    socket). The socket's protocol (`ws_socket.WebSocket`, or aiohttp's for Socket.IO) still
    owns its control frames (pong, ping, close); both write whole frames synchronously, so
    they never interleave. Nothing is written once the closing handshake started. Returns
    the transport's buffered bytes, which the session counts against its budget (slow
    consumer = 4008). `flow` is the transport's flow control, for a conflating session to
    wait on; `alive` is what a drain tells the socket's heartbeat (see TransportFlow).

    `wire` turns a buffered frame into its WebSocket bytes: `WireFramer.wire` for native
    frames, `socketio_frames.ws_wire` for Socket.IO packets on the Socket.IO fast path.
    """

    __slots__ = ("_counter", "_transport", "_wire", "_ws", "flow")

    def __init__(
        self,
        ws: Closable,
        transport: asyncio.Transport | Any,
        counter: BatchedCounter,
        wire: Callable[[bytes], bytes],
        alive: Callable[[], None] | None = None,
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._counter = counter
        self._wire = wire
        self.flow = TransportFlow(transport, alive=alive)

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
