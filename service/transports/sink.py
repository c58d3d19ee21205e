"""`WireSink`: the WebSocket fast path's writer, shared by both transports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from service.metrics import BatchedCounter
from service.transports.wire import TransportFlow


class WireSink:
    """Writes a session's frames straight to its transport, coalesced into one write.

    Bypasses aiohttp's per-frame `send_frame` (an await, a header build and a system call
    per frame per socket). aiohttp still owns the socket's control frames (pong, ping,
    close); both write whole frames synchronously, so they never interleave. Nothing is
    written once aiohttp started the closing handshake. Returns the transport's buffered
    bytes, which the session counts against its budget (slow consumer = 4008). `flow` is the
    transport's flow control, for a conflating session to wait on.

    `wire` turns a buffered frame into its WebSocket bytes: `WireFramer.wire` for native
    frames, `socketio_frames.ws_wire` for Socket.IO packets on the Socket.IO fast path.
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
