"""`WebSocket`: a client's socket after the upgrade, as a bare asyncio protocol.

aiohttp answers the HTTP request; once the 101 is written (`upgrade.take_over`) the transport
is handed to this protocol and aiohttp lets the request go. What an idle socket then costs is
this object, its `FrameReader` and its place in the `HeartbeatWheel`: no task, no timer, no
request, no reader queue (docs/performance.md, S1).

It is only protocol: frames in (`FrameReader`), control frames out (pong, ping, close), the
closing handshake, the heartbeat, flow control. Client messages go to its `SocketHandler` in
order, one at a time, from a task that exists only while there are messages to handle;
outbound data frames are written to the transport by the session's sink, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

from service.errors import CloseCode
from service.transports.heartbeat import HeartbeatWheel
from service.transports.wire import close_frame, control_frame
from service.transports.ws_reader import OP_PING, OP_PONG, FrameError, FrameReader

ABNORMAL = 1006  # the close code recorded for a peer that stopped answering (never sent)
INBOX_HIGH = 64  # client messages waiting to be handled before the socket stops reading

_OPEN, _CLOSING, _CLOSED = 0, 1, 2  # closing: our close frame is out, the peer's not in yet


class SocketHandler(Protocol):
    """What a `WebSocket` hands the client's messages and its end to."""

    def on_text(self, text: str) -> Awaitable[None]:
        """Handle one text message; the next waits until this one is done."""

    def on_binary(self, data: bytes) -> None:
        """A binary message (the gateway takes none: it answers with an error)."""

    def on_ended(self, code: int, reason: str) -> None:
        """The connection is gone: `code` and `reason` say why (1000 when the client left)."""


class WebSocket(asyncio.Protocol):
    """One client's WebSocket connection after the upgrade (RFC 6455, server side).

    `close_timeout_s`: how long the closing handshake may take; `abort_after_s`: how long a
    closed socket may keep unsent bytes before it is dropped.
    """

    __slots__ = (
        "_abort_after_s",
        "_close_timeout_s",
        "_closed_waiter",
        "_drain_waiter",
        "_end",
        "_handler",
        "_inbox",
        "_ping_at",
        "_reader",
        "_runner",
        "_seen",
        "_state",
        "_transport",
        "_wheel",
        "writing_paused",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        handler: SocketHandler,
        wheel: HeartbeatWheel,
        *,
        max_message_bytes: int,
        close_timeout_s: float,
        abort_after_s: float,
    ) -> None:
        self._transport = transport
        self._handler = handler
        self._wheel = wheel
        self._reader = FrameReader(max_message_bytes)
        self._close_timeout_s = close_timeout_s
        self._abort_after_s = abort_after_s
        self._state = _OPEN
        self._end: tuple[int, str] = (CloseCode.NORMAL, "client closed")
        self._seen = wheel.now()  # when the peer was last heard from (loop time)
        self._ping_at: float | None = None  # when the unanswered ping left
        self._inbox: deque[str | bytes] | None = None  # messages waiting for `_runner`
        self._runner: asyncio.Task[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None  # see wire.TransportFlow
        self.writing_paused = False
        wheel.add(self, self._seen + wheel.interval_s)

    def start(self, data: bytes, first: Coroutine[Any, Any, None] | None = None) -> None:
        """Take over the transport: `data` is what the client sent after its handshake,
        `first` runs before any client message is handled (the resume of a replay)."""
        self._transport.set_protocol(self)
        if first is not None:
            self._inbox = deque()
            self._runner = asyncio.get_running_loop().create_task(self._run(first))
        if data:
            self.data_received(data)
        if not self._transport.is_reading() and self._state != _CLOSED:
            self._transport.resume_reading()

    @property
    def closed(self) -> bool:
        """True once the closing handshake started: nothing more is written but control."""
        return self._state != _OPEN or self._transport.is_closing()

    @property
    def transport(self) -> asyncio.Transport:
        """The socket's transport."""
        return self._transport

    def alive(self) -> None:
        """The peer proved alive otherwise than by a frame (it took buffered bytes)."""
        self._seen = self._wheel.now()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Bytes from the client: frames to parse."""
        if self._state == _CLOSED:
            return
        self._seen = self._wheel.now()
        try:
            self._reader.feed(data, self)
        except FrameError as exc:
            self._fail(exc.code, exc.reason)

    def eof_received(self) -> bool | None:
        """The client half-closed: the connection ends (asyncio closes the transport)."""
        return None

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark."""
        self.writing_paused = True

    def resume_writing(self) -> None:
        """The transport's buffer fell below its low-water mark."""
        self.writing_paused = False
        self._wake_drain()

    def connection_lost(self, exc: BaseException | None) -> None:
        """The socket is closed: the handler hears of it once its current message is done."""
        self._state = _CLOSED
        self._wheel.discard(self)
        self.writing_paused = False
        self._wake_drain()
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        runner = self._runner
        if runner is not None and not runner.done():
            if self._inbox is not None:
                self._inbox.clear()
            runner.add_done_callback(lambda _: self._handler.on_ended(*self._end))
        else:
            self._handler.on_ended(*self._end)

    # -- FrameSink: what the reader found --------------------------------------------------

    def on_text(self, text: str) -> None:
        """A client message: handled after the ones before it."""
        self._enqueue(text)

    def on_binary(self, data: bytes) -> None:
        """A binary message: to the handler, in order with the text ones."""
        self._enqueue(data)

    def on_ping(self, payload: bytes) -> None:
        """Answered at once with the same payload (RFC 6455 5.5.3)."""
        if self._state != _CLOSED:
            self._transport.write(control_frame(OP_PONG, payload))

    def on_pong(self, payload: bytes) -> None:
        """A pong: the peer is alive (`data_received` noted it already)."""

    def on_close(self, code: int, reason: str) -> None:
        """The peer's close frame: answer it (if it started), then close the TCP connection."""
        if self._state == _OPEN:
            # The peer started the closing handshake: echo its code (RFC 6455 5.5.1).
            self._transport.write(close_frame(code) if code != 1005 else close_frame(1000))
        self._state = _CLOSED
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        self._shut()

    # -- closing -------------------------------------------------------------------------------

    async def close(self, code: int, reason: str) -> None:
        """The closing handshake from this side: the close frame, then the peer's answer
        (bounded by `close_timeout_s`), then the TCP close."""
        if self._state == _OPEN:
            self._state = _CLOSING
            self._transport.write(close_frame(code, reason))
            waiter = self._closed_waiter = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._close_timeout_s):
                    await asyncio.shield(waiter)
        self._shut()

    def abort(self) -> None:
        """Drop the connection at once (process stopping)."""
        self._transport.abort()

    def heartbeat(self, now: float) -> float | None:
        """The wheel's visit: ping a silent peer, close one that did not answer in time."""
        if self._state == _CLOSED:
            return None
        wheel = self._wheel
        ping_at = self._ping_at
        if ping_at is not None:
            if self._seen >= ping_at:
                self._ping_at = ping_at = None  # answered (or the peer spoke, or drained)
            elif now - ping_at >= wheel.timeout_s:
                self._end = (ABNORMAL, "no pong within the heartbeat timeout")
                self._state = _CLOSED
                self._transport.abort()
                return None
            else:
                return ping_at + wheel.timeout_s
        if now - self._seen >= wheel.interval_s:
            self._ping_at = now
            self._transport.write(control_frame(OP_PING))
            return now + wheel.timeout_s
        return self._seen + wheel.interval_s

    def _fail(self, code: int, reason: str) -> None:
        """The client broke the protocol: close frame with `code`, then the TCP close."""
        if self._state == _OPEN:
            self._transport.write(close_frame(code, reason))
        self._end = (code, reason)
        self._state = _CLOSED
        self._shut()

    def _shut(self) -> None:
        transport = self._transport
        if transport.is_closing():
            return
        transport.close()  # flushes what is buffered first
        if transport.get_write_buffer_size():
            # Bytes a non-reading client never took must not pin the socket forever.
            asyncio.get_running_loop().call_later(self._abort_after_s, transport.abort)

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- client messages, in order -----------------------------------------------------------

    def _enqueue(self, message: str | bytes) -> None:
        if self._state != _OPEN:
            return  # after our close frame, only the peer's close matters
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(message)
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(None))
        elif len(inbox) > INBOX_HIGH and self._transport.is_reading():
            self._transport.pause_reading()  # the client waits in TCP, not in our memory

    async def _run(self, first: Coroutine[Any, Any, None] | None) -> None:
        try:
            if first is not None:
                await first
            inbox = self._inbox
            handler = self._handler
            while inbox and self._state == _OPEN:
                message = inbox.popleft()
                if isinstance(message, str):
                    await handler.on_text(message)
                else:
                    handler.on_binary(message)
                reading = self._transport.is_reading()
                if not reading and self._state == _OPEN and len(inbox) <= INBOX_HIGH // 2:
                    self._transport.resume_reading()
        finally:
            self._runner = None
            self._inbox = None
