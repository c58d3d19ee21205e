"""One client connection on any transport, with its byte-bounded outbound buffer.

Producers (the hub's fan-out, the node's answers) call `push()` synchronously; it never
awaits socket I/O. One writer task per connection, owned by the transport, drains the buffer
with `next_batch()` and writes the frames. When the bytes waiting in the buffer would exceed
`send_queue_bytes`, the session is closed at once with 4008 (slow consumer) and its queued
frames are dropped: one slow client never holds memory or time that others need.

While a notifications client resumes (recovery, contract §3), `hold()` diverts `push()` into
a side list that counts against the same byte budget; `release()` hands those frames back so
the recovery can merge them after the replay, in offset order, without duplicates.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque

from service.errors import CloseCode
from service.model import Namespace, Principal


class Session:
    """A connected client. Dashboard subscription fields are owned by the hub."""

    __slots__ = (
        "_closed",
        "_frames",
        "_held",
        "_held_bytes",
        "_limit",
        "_pending_bytes",
        "_wake",
        "close_code",
        "close_reason",
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
    ) -> None:
        self.id = session_id or uuid.uuid4().hex
        self.principal = principal
        self.namespace = namespace
        self.transport = transport
        self._limit = send_queue_bytes
        self._frames: deque[bytes] = deque()
        self._pending_bytes = 0
        self._held: list[bytes] | None = None
        self._held_bytes = 0
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
        """Bytes queued or held, and not yet taken by the writer."""
        return self._pending_bytes + self._held_bytes

    @property
    def held(self) -> bool:
        """True while `push()` is diverted into the held list."""
        return self._held is not None

    def push(self, frame: bytes) -> bool:
        """Queue one frame. False when closed, or when it overflowed (and closed) the session.

        While held, the frame goes to the held list instead, under the same byte budget.
        """
        if self.close_code is not None:
            return False
        size = len(frame)
        if self._pending_bytes + self._held_bytes + size > self._limit:
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: outbound buffer overflow")
            return False
        if self._held is not None:
            self._held.append(frame)
            self._held_bytes += size
            return True
        self._frames.append(frame)
        self._pending_bytes += size
        self._wake.set()
        return True

    def hold(self) -> None:
        """Divert `push()` into a held list until `release()` (idempotent)."""
        if self._held is None:
            self._held = []

    def release(self) -> list[bytes]:
        """Stop holding; returns the held frames, oldest first, for the caller to push."""
        held, self._held = self._held or [], None
        self._held_bytes = 0
        return held

    def close(self, code: int, reason: str) -> None:
        """Ask the transport to close with `code`; the first request wins. Drops queued frames."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self._frames.clear()
        if self._held is not None:
            self._held = []
        self._pending_bytes = self._held_bytes = 0
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
