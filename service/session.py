"""One client connection on any transport, with its byte-bounded outbound buffer.

Producers (the hub's fan-out, the node's answers) call `push()` synchronously; it never
awaits socket I/O. One writer task per connection, owned by the transport, drains the buffer
with `next_batch()` and writes the frames. When the bytes waiting in the buffer would exceed
`send_queue_bytes`, the session is closed at once with 4008 (slow consumer) and its queued
frames are dropped: one slow client never holds memory or time that others need.

A transport whose wire format is not the native JSON frame gives the session an `encoder`
(bytes → bytes) that `push()` applies before counting the bytes. The hub pushes the same
frame object to every target, so an encoder that remembers its last input encodes each event
once per transport, not once per socket (see `service.transports.socketio`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable

from service.errors import CloseCode
from service.model import Namespace, Principal

FrameEncoder = Callable[[bytes], bytes]


class Session:
    """A connected client. Dashboard subscription fields are owned by the hub."""

    __slots__ = (
        "_closed",
        "_frames",
        "_limit",
        "_pending_bytes",
        "_wake",
        "close_code",
        "close_reason",
        "encoder",
        "explicit",
        "id",
        "namespace",
        "principal",
        "sub_all",
        "topics",
        "transport",
    )

    def __init__(
        self,
        *,
        principal: Principal,
        namespace: Namespace,
        send_queue_bytes: int,
        transport: str = "ws",
        session_id: str | None = None,
        encoder: FrameEncoder | None = None,
    ) -> None:
        self.id = session_id or uuid.uuid4().hex
        self.principal = principal
        self.namespace = namespace
        self.transport = transport
        self.encoder = encoder
        self._limit = send_queue_bytes
        self._frames: deque[bytes] = deque()
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        # Dashboard subscriptions: `explicit` turns True at the first subscribe/unsubscribe;
        # `sub_all` means every topic (no `topics` claim); `topics` the named ones.
        self.explicit = False
        self.sub_all = False
        self.topics: set[str] = set()

    @property
    def user_id(self) -> str | None:
        """The token's `sub`, None for an anonymous client."""
        return self.principal.sub

    @property
    def closed(self) -> bool:
        """True once a close was requested; no frame is queued after that."""
        return self.close_code is not None

    @property
    def pending_bytes(self) -> int:
        """Bytes queued and not yet taken by the writer."""
        return self._pending_bytes

    def push(self, frame: bytes) -> bool:
        """Queue one frame. False when closed, or when it overflowed (and closed) the session."""
        if self.close_code is not None:
            return False
        if self.encoder is not None:
            frame = self.encoder(frame)
        size = len(frame)
        if self._pending_bytes + size > self._limit:
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: outbound buffer overflow")
            return False
        self._frames.append(frame)
        self._pending_bytes += size
        self._wake.set()
        return True

    def close(self, code: int, reason: str) -> None:
        """Ask the transport to close with `code`; the first request wins. Drops queued frames."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self._frames.clear()
        self._pending_bytes = 0
        self._wake.set()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Return once a close was requested."""
        await self._closed.wait()

    async def next_batch(self) -> list[bytes] | None:
        """Wait for frames and take all of them; None once the session is closed."""
        while not self._frames:
            if self.close_code is not None:
                return None
            self._wake.clear()
            await self._wake.wait()
        if self.close_code is not None:
            return None
        batch = list(self._frames)
        self._frames.clear()
        self._pending_bytes = 0
        return batch

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.namespace} user={self.user_id!r}>"
