"""Server WebSocket frames built by hand for the fast path (RFC 6455 5.2)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any


def text_frame(payload: bytes) -> bytes:
    """The wire bytes of one unmasked, uncompressed, final TEXT frame (RFC 6455 5.2).

    Server frames carry no mask, so the same bytes serve every socket: this is exactly what
    aiohttp's WebSocketWriter writes for `send_frame(payload, TEXT)` with compression off
    (tests/unit/test_wire.py checks it byte for byte).
    """
    length = len(payload)
    if length < 126:
        return _LEN1(0x81, length) + payload
    if length < 65536:
        return _LEN2(0x81, 126, length) + payload
    return _LEN3(0x81, 127, length) + payload


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """The wire bytes of one server control frame (ping 0x9, pong 0xA): at most 125 bytes."""
    payload = payload[:125]
    return _LEN1(0x80 | opcode, len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """The wire bytes of a server close frame: `code`, then `reason` cut to fit 125 bytes."""
    cut = reason.encode()[:123].decode("utf-8", "ignore")  # never half a character
    body = _CODE(code) + cut.encode()
    return _LEN1(0x88, len(body)) + body


_LEN1 = struct.Struct("!BB").pack
_CODE = struct.Struct("!H").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack
WIRE_MEMO_MAX = 64  # recent frames; one fan-out frames each event once for every socket
WIRE_MEMO_FRAME_MAX = 16384  # larger frames are framed per socket, not pinned here


class WireFramer:
    """`text_frame` with a small memo, one per app: a fan-out frames its event once."""

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: dict[bytes, bytes] = {}

    def wire(self, payload: bytes) -> bytes:
        """The wire bytes of `payload` as one TEXT frame (memoised for recent small frames)."""
        framed = self._memo.get(payload)
        if framed is None:
            framed = text_frame(payload)
            if len(payload) <= WIRE_MEMO_FRAME_MAX:
                if len(self._memo) >= WIRE_MEMO_MAX:
                    self._memo.clear()
                self._memo[payload] = framed
        return framed


DRAIN_POLL_S = 0.01  # how often to look at a transport whose protocol has no drain waiter


class TransportFlow:
    """The write flow control of one asyncio transport (`service.session.Flow`).

    asyncio pauses a protocol's writing when the transport's buffer passes its high-water
    mark and resumes it below the low-water mark. aiohttp's protocol records that
    (`writing_paused`) and, on resume (or connection loss), resolves its drain waiter, the
    future `drain()` awaits; `when_drained` hangs a callback on that same future (made if
    none is pending, shared with aiohttp's own writes if one is), so a blocked socket costs
    no task and no timer. A protocol without one (not aiohttp's) is polled instead.
    tests/unit/test_session_conflation.py checks this against the installed aiohttp.

    `alive` runs each time the buffer drained: the peer is taking bytes, which proves it
    alive as well as a pong would. The native transport passes aiohttp's heartbeat reset:
    a ping waits behind whatever is buffered, so a reader that is slow but reading would
    otherwise miss the pong deadline; one that stopped reading never drains, and the
    heartbeat closes it as before.
    """

    __slots__ = ("_alive", "_protocol", "_transport")

    def __init__(
        self, transport: asyncio.Transport | Any, alive: Callable[[], None] | None = None
    ) -> None:
        self._transport = transport
        self._protocol = transport.get_protocol()
        self._alive = alive

    def paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark."""
        return bool(getattr(self._protocol, "writing_paused", False))

    def cap(self, high_water: int) -> None:
        """Keep at most about `high_water` bytes below the session, so the rest waits in it.

        Lowers the transport's high-water mark (never raises it), and fixes the kernel's send
        buffer at the resulting mark: left to autotuning it grows to megabytes for a slow reader,
        and everything in it is stale by the time the reader gets there (and so is a ping).
        Linux doubles the value for its bookkeeping; a fixed buffer still carries `high_water`
        per round trip, far more than a dashboard needs.
        """
        _low, high = self._transport.get_write_buffer_limits()
        if high_water < high:
            self._transport.set_write_buffer_limits(high=high_water)
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not every socket type takes it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, min(high, high_water))

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, soon after writing resumes or the connection is lost."""
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        if not self.paused() or self._transport.is_closing():
            loop.call_soon(callback)
            return
        if not hasattr(protocol, "_drain_waiter"):
            loop.call_later(DRAIN_POLL_S, self.when_drained, callback)
            return
        waiter = protocol._drain_waiter
        if waiter is None or waiter.done():  # a cancelled drain() leaves a done waiter
            waiter = protocol._drain_waiter = loop.create_future()

        def done(future: asyncio.Future[None]) -> None:
            if not future.cancelled():
                lost = future.exception()  # retrieved here; the session sees the close
                if lost is None and self._alive is not None and not self.paused():
                    self._alive()
            callback()

        waiter.add_done_callback(done)
