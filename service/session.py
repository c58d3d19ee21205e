"""One client connection on any transport, with its byte-bounded outbound buffer.

Producers (the hub's fan-out, the node's answers) call `push()` synchronously; it never
awaits socket I/O. Frames leave the buffer in one of two ways, chosen by the transport:

- **Writer task** (the default): one task per connection awaits `next_batch()` and writes.
- **Sink** (`attach_sink`: native WebSockets, and Socket.IO once on a WebSocket): no task
  at all. The first push of a loop iteration marks the session dirty in its `Outbox`, and
  one callback per iteration, for every dirty session at once, hands the session's frames to
  its sink in a single call (one system call per socket per iteration, however many events
  reached it). The sink returns how many bytes are still waiting downstream (the transport's
  write buffer), and those bytes count against the same budget.

When the bytes waiting (queued here plus, with a sink, held in the transport) would exceed
`send_queue_bytes`, the session is closed at once with 4008 (slow consumer) and its queued
frames are dropped: one slow client never holds memory or time that others need.

A transport whose wire format is not the native JSON frame gives the session an `encoder`
(bytes → bytes) that `push()` applies before counting the bytes. The hub pushes the same
frame object to every target, so an encoder that remembers its last input encodes each event
once per transport, not once per socket (see `service.transports.socketio`).

While a notifications client resumes (recovery, contract §3), `hold()` diverts `push()` into
a side list that counts against the same byte budget; `release()` hands those frames back so
the recovery can merge them after the replay, in offset order, without duplicates.

**Conflation** (dashboard sessions with `conflate=True`, contract §3): frames wait in the
session, not in the transport. A sink session given a `Flow` stops handing frames to the sink
while the transport's writing is paused (its buffer is above the high-water mark) and resumes
when the transport drains; a writer-task session waits while its writer is busy with the
previous batch. While the session waits like this ("blocked"), a frame pushed with a `key`
(the topic of a `dashboard_update`) replaces, in place, the waiting frame with the same key,
so a slow reader gets the newest value of each topic and never an older one after a newer
one. Frames pushed while the session is not blocked are never replaced: a reader that keeps
up receives every frame. Unkeyed frames (acks, errors, notifications) never move.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Protocol

from service.errors import CloseCode
from service.model import Namespace, Principal

FrameEncoder = Callable[[bytes], bytes]
#: Writes a session's frames (in order) and returns the bytes still buffered downstream.
Sink = Callable[[list[bytes]], int]
SLOW_CONSUMER_REASON = "slow consumer: outbound buffer overflow"
#: A conflating session lets at most this much wait below it (in the transport's buffer, and
#: as much in the kernel's), and never more than 1/TRANSPORT_SHARE of its budget: what waits
#: there is stale by the time a slow reader gets to it, what waits here is conflated.
TRANSPORT_SHARE = 4
TRANSPORT_WATER = 16 * 1024


class Flow(Protocol):
    """A transport's write flow control, as a conflating sink session uses it."""

    def paused(self) -> bool:
        """True while the transport takes no more writes (above its high-water mark)."""
        ...

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, soon after the transport takes writes again (or is lost)."""
        ...

    def cap(self, high_water: int) -> None:
        """Pause writing above `high_water` buffered bytes, if the transport allows more."""
        ...


class Outbox:
    """Flushes every dirty sink session once per event-loop iteration (one callback in all).

    It also counts the frames conflation replaced, per transport, and reports them to
    `on_conflated` (a metric) at most once per loop iteration, not once per frame.
    """

    __slots__ = (
        "_conflated",
        "_conflated_scheduled",
        "_dirty",
        "_on_conflated",
        "_scheduled",
        "conflated_frames",
        "flushed_frames",
    )

    def __init__(self, on_conflated: Callable[[str, int], None] | None = None) -> None:
        self._dirty: list[Session] = []
        self._scheduled = False
        self.flushed_frames = 0  # frames handed to sinks so far (for tests and metrics)
        self.conflated_frames = 0  # frames replaced by a newer one of the same key, so far
        self._on_conflated = on_conflated
        self._conflated: dict[str, int] = {}
        self._conflated_scheduled = False

    def note_conflated(self, transport: str) -> None:
        """Count one frame replaced by conflation on `transport`."""
        self.conflated_frames += 1
        if self._on_conflated is None:
            return
        self._conflated[transport] = self._conflated.get(transport, 0) + 1
        if not self._conflated_scheduled:
            self._conflated_scheduled = True
            asyncio.get_running_loop().call_soon(self._report_conflated)

    def _report_conflated(self) -> None:
        self._conflated_scheduled = False
        counts, self._conflated = self._conflated, {}
        for transport, count in counts.items():
            self._on_conflated(transport, count)  # type: ignore[misc]  # set when scheduled

    def mark(self, session: Session) -> None:
        """Flush `session` at the end of this loop iteration's work."""
        self._dirty.append(session)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Hand every dirty session's frames to its sink."""
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        count = 0
        for session in dirty:
            try:
                count += session._flush()
            except Exception:  # one broken socket must not stall the others' frames
                session.close(CloseCode.INTERNAL, "write failed")
        self.flushed_frames += count


class Session:
    """A connected client. Dashboard subscription fields are owned by the hub."""

    __slots__ = (
        "_blocked",
        "_closed",
        "_conflate",
        "_dirty",
        "_downstream",
        "_flow",
        "_frames",
        "_held",
        "_held_bytes",
        "_keys",
        "_limit",
        "_on_close",
        "_outbox",
        "_pending_bytes",
        "_sink",
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
        outbox: Outbox | None = None,
        encoder: FrameEncoder | None = None,
        conflate: bool = False,
    ) -> None:
        self.id = session_id or uuid.uuid4().hex
        self.principal = principal
        self.namespace = namespace
        self.transport = transport
        self.encoder = encoder
        self._limit = send_queue_bytes
        self._frames: list[bytes] = []
        self._pending_bytes = 0
        self._downstream = 0  # bytes the sink reported still buffered at its last write
        self._outbox = outbox
        self._sink: Sink | None = None
        self._on_close: Callable[[], None] | None = None
        self._dirty = False
        # Created on first use: an idle sink session never needs them (memory per socket).
        self._wake: asyncio.Event | None = None
        self._closed: asyncio.Event | None = None
        self._held: list[bytes] | None = None
        self._held_bytes = 0
        # Conflation (see the module docstring): `_blocked` while frames wait on the
        # transport; `_keys` maps a key to the index in `_frames` of its waiting frame.
        self._conflate = conflate
        self._blocked = False
        self._keys: dict[str, int] | None = None
        self._flow: Flow | None = None
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
        """Bytes waiting: queued or held here, plus what the sink last reported buffered."""
        return self._pending_bytes + self._downstream + self._held_bytes

    def attach_sink(
        self,
        sink: Sink,
        on_close: Callable[[], None] | None = None,
        outbox: Outbox | None = None,
        flow: Flow | None = None,
    ) -> None:
        """Deliver through `sink` once per loop iteration instead of a writer task.

        `on_close` runs once when a close is requested (the transport then closes the
        socket with `close_code`). Frames queued before this call are flushed soon. A
        conflating session holds its frames while `flow` says the transport is paused.
        """
        if outbox is not None:
            self._outbox = outbox
        if self._outbox is None:
            raise ValueError("a sink session needs an Outbox")
        if self.close_code is not None:  # closed before the transport was ready (a drain)
            if on_close is not None:
                on_close()
            return
        self._sink = sink
        self._on_close = on_close
        self._flow = flow if self._conflate else None
        if self._flow is not None:
            self._flow.cap(min(self._limit // TRANSPORT_SHARE, TRANSPORT_WATER))
        self._blocked = False  # a writer task may have left it set
        self._keys = None
        if self._frames and not self._dirty and self.close_code is None:
            self._dirty = True
            self._outbox.mark(self)

    @property
    def held(self) -> bool:
        """True while `push()` is diverted into the held list."""
        return self._held is not None

    def push(self, frame: bytes, key: str | None = None) -> bool:
        """Queue one frame. False when closed, or when it overflowed (and closed) the session.

        While held, the frame goes to the held list instead, under the same byte budget.
        `key` (a dashboard topic) lets a conflating session replace a waiting frame of the
        same key with this one (see the module docstring).
        """
        if self.close_code is not None:
            return False
        if self._held is not None:
            # Held frames stay native (the recovery merges them by offset) and are encoded
            # when released and pushed again.
            size = len(frame)
            if self._pending_bytes + self._downstream + self._held_bytes + size > self._limit:
                self.close(CloseCode.SLOW_CONSUMER, SLOW_CONSUMER_REASON)
                return False
            self._held.append(frame)
            self._held_bytes += size
            return True
        if self.encoder is not None:
            frame = self.encoder(frame)
        if key is not None and self._blocked and self._conflate:
            return self._push_keyed(frame, key)
        pending = self._pending_bytes + len(frame)
        if pending + self._downstream + self._held_bytes > self._limit:
            self.close(CloseCode.SLOW_CONSUMER, SLOW_CONSUMER_REASON)
            return False
        self._frames.append(frame)
        self._pending_bytes = pending
        if self._sink is not None:
            if not self._dirty and not self._blocked:
                self._dirty = True
                self._outbox.mark(self)  # type: ignore[union-attr]  # set with the sink
        elif self._wake is not None:
            self._wake.set()
        return True

    def _push_keyed(self, frame: bytes, key: str) -> bool:
        """While blocked: replace the waiting frame of `key` in place, else queue and index."""
        keys = self._keys
        if keys is None:
            keys = self._keys = {}
        frames = self._frames
        index = keys.get(key)
        old = len(frames[index]) if index is not None else 0
        pending = self._pending_bytes - old + len(frame)
        if pending + self._downstream + self._held_bytes > self._limit:
            self.close(CloseCode.SLOW_CONSUMER, SLOW_CONSUMER_REASON)
            return False
        self._pending_bytes = pending
        if index is not None:
            frames[index] = frame
            if self._outbox is not None:
                self._outbox.note_conflated(self.transport)
        else:
            keys[key] = len(frames)
            frames.append(frame)
        return True

    def _flush(self) -> int:
        """Outbox callback: hand the queued frames to the sink; returns how many.

        With a `Flow`, frames stay here while the transport is paused (see `_block`).
        """
        self._dirty = False
        frames = self._frames
        if self.close_code is not None or not frames or self._sink is None:
            return 0
        flow = self._flow
        if flow is not None and flow.paused():
            self._block(flow)
            return 0
        self._frames = []
        self._keys = None
        self._pending_bytes = 0
        self._downstream = buffered = self._sink(frames)
        if buffered > self._limit:
            self.close(CloseCode.SLOW_CONSUMER, SLOW_CONSUMER_REASON)
        elif flow is not None and flow.paused():
            self._block(flow)
        return len(frames)

    def _block(self, flow: Flow) -> None:
        """Keep frames here (conflating them) until the transport drains."""
        if not self._blocked:
            self._blocked = True
            flow.when_drained(self._drained)

    def _drained(self) -> None:
        """The transport takes writes again: flush what waited, in this loop iteration."""
        self._blocked = False
        # Frames pushed from now on are not indexed, so the index must go: a later block
        # must never replace a frame older than one queued in between.
        self._keys = None
        if self._frames and not self._dirty and self.close_code is None and self._sink is not None:
            self._dirty = True
            self._outbox.mark(self)  # type: ignore[union-attr]  # set with the sink

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
        self._frames = []
        self._keys = None
        if self._held is not None:
            self._held = []
        self._pending_bytes = self._held_bytes = 0
        if self._wake is not None:
            self._wake.set()
        if self._closed is not None:
            self._closed.set()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    async def wait_closed(self) -> None:
        """Return once a close was requested."""
        if self.close_code is not None:
            return
        if self._closed is None:
            self._closed = asyncio.Event()
        await self._closed.wait()

    async def next_batch(self) -> list[bytes] | None:
        """Wait for frames and take all of them; None once the session is closed.

        Between two calls the writer is busy with the batch it took, so the session is
        blocked (frames conflate); while the writer waits here, nothing conflates.
        """
        if self._wake is None:
            self._wake = asyncio.Event()
        while not self._frames:
            if self.close_code is not None:
                return None
            self._blocked = False
            self._keys = None
            self._wake.clear()
            await self._wake.wait()
        if self.close_code is not None:
            return None
        batch, self._frames = self._frames, []
        self._keys = None
        self._pending_bytes = 0
        self._blocked = True
        return batch

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.namespace} user={self.user_id!r}>"
