"""Recovery of missed notifications (contract §3): resume a notifications session from an offset.

A reconnecting client names the last offset it saw (`since`). The gateway then sends, in
order, every notification of that user (and every broadcast) with a larger offset that the
backbone's `NotificationHistory` still holds, then `resumed`, then live traffic, with no gap and no
reordering at the switch:

1. The session is *held* from the moment it joins the hub, so live frames that reach it while
   the replay runs go to a side list instead of the socket (`Session.hold`).
2. `until` = the log's `last_offset` once the session is held: every notification after it
   reaches the session live (held), every one up to it is in the log. The replay covers
   `since < offset <= until`.
3. When the replay is done: the replayed frames, `resumed`, then the held frames whose offset is
   above `until` (the others were replayed already), all pushed in one synchronous step.

`recovered` is False when the log no longer reaches back to `since` (the floor of what a
replay read, above which nothing is missing, is above `since`), when `since` is from another
history (above every offset the backbone knows, once a lagging instance had a moment to catch
up), when the replay would not fit in `max_replay_bytes`, or when the log cannot be read in
`timeout_s`.

Replays are coalesced: one reader task per process reads the log from the lowest waiting
`since`, and each notification it reads is encoded once and handed to every waiting session of
its user; requests that arrive while a pass runs wait for the next one. A reconnect storm of N
clients therefore costs a handful of passes, never N readers. A pass takes at most `max_batch`
requests and `timeout_s` seconds, and holds at most `max_replay_bytes` per request.

A client that resumes with the `resume` event rather than the `since` query parameter sends it
as its first frame, one round trip after the upgrade. Notifications sessions are therefore held
from the upgrade until their first frame, or for `resume_grace_s` at most, so live frames of
that round trip cannot overtake the replay; a client that never resumes sees its first
notifications at most that much later.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import structlog

from service import codec, routing
from service.backbone.base import NotificationHistory
from service.errors import BackboneUnavailable, ErrorCode, ProtocolError
from service.metrics import Metrics
from service.model import Event, Namespace
from service.session import Session
from service.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

RESUME_GRACE_S = 0.25
GATHER_S = 0.05  # a pass waits this long for more requests before it starts reading
TIMEOUT_S = 15.0
LAG_TIMEOUT_S = 2.0
MAX_BATCH = 10_000
MAX_OFFSET = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Resumed:
    """The answer to one resume: the data of the `resumed` frame."""

    recovered: bool
    replayed: int

    def as_data(self) -> dict[str, bool | int]:
        """`{"recovered": ..., "replayed": ...}`."""
        return {"recovered": self.recovered, "replayed": self.replayed}


@dataclass(slots=True)
class _Request:
    """One session waiting for a pass over the log."""

    session_id: str
    user_id: str | None
    since: int
    until: int
    budget: int
    future: asyncio.Future[Resumed] = field(repr=False)
    frames: list[bytes] = field(default_factory=list, repr=False)
    size: int = 0
    overflow: bool = False

    def add(self, frame: bytes) -> None:
        if self.overflow:
            return
        self.size += len(frame)
        if self.size > self.budget:
            self.overflow = True
            self.frames = []
            return
        self.frames.append(frame)


def parse_since(value: object) -> int:
    """A client's `since`: a non-negative integer (ProtocolError(bad_request) otherwise)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_OFFSET:
        return value
    raise ProtocolError(ErrorCode.BAD_REQUEST, "since must be a non-negative integer offset")


class Recovery:
    """Resumes notifications sessions; see the module docstring."""

    def __init__(
        self,
        history: NotificationHistory | None,
        *,
        metrics: Metrics,
        max_replay_bytes: int = 1 << 19,
        resume_grace_s: float = RESUME_GRACE_S,
        gather_s: float = GATHER_S,
        timeout_s: float = TIMEOUT_S,
        lag_timeout_s: float = LAG_TIMEOUT_S,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.history = history
        self.metrics = metrics
        self.max_replay_bytes = max_replay_bytes
        self.resume_grace_s = resume_grace_s
        self.gather_s = gather_s
        self.timeout_s = timeout_s
        self.lag_timeout_s = lag_timeout_s
        self.max_batch = max_batch
        self._awaiting: dict[str, asyncio.TimerHandle] = {}  # held until the first frame
        self._resumed: set[str] = set()  # sessions that used their one resume
        self._queue: deque[_Request] = deque()
        self._reader: asyncio.Task[None] | None = None
        self.passes = 0  # passes over the log since start (tests, the storm script)

    @property
    def enabled(self) -> bool:
        """Whether the backbone keeps a history to replay from."""
        return self.history is not None

    # -- session lifecycle (called by the node) -------------------------------------------

    def on_join(self, session: Session) -> None:
        """Hold a new notifications session until its first frame (before the hub sees it)."""
        if not self.enabled or session.namespace is not Namespace.NOTIFICATIONS:
            return
        session.hold()
        loop = asyncio.get_running_loop()
        self._awaiting[session.id] = loop.call_later(
            self.resume_grace_s, self._stop_waiting, session
        )

    def on_message(self, session: Session, event: str) -> None:
        """A client frame arrived: anything but `resume` ends the wait for one."""
        if event != "resume" and session.id in self._awaiting:
            self._stop_waiting(session)

    def on_leave(self, session: Session) -> None:
        """Forget a session that left."""
        timer = self._awaiting.pop(session.id, None)
        if timer is not None:
            timer.cancel()
        self._resumed.discard(session.id)

    def _stop_waiting(self, session: Session) -> None:
        timer = self._awaiting.pop(session.id, None)
        if timer is not None:
            timer.cancel()
        if session.held:
            for frame in session.release():
                session.push(frame)

    # -- resume ---------------------------------------------------------------------------

    async def resume(self, session: Session, since: int) -> Resumed:
        """Replay what `session` missed after `since`, then `resumed`, then go live.

        Raises ProtocolError(bad_request) for a second resume on the same connection.
        """
        if session.id in self._resumed:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "resume is allowed once per connection")
        self._resumed.add(session.id)
        timer = self._awaiting.pop(session.id, None)
        if timer is not None:
            timer.cancel()
        started = time.perf_counter()
        session.hold()
        frames: list[bytes] = []
        until = since
        try:
            recovered, frames, until = await self._replay(session, since)
        except BaseException:
            # Cancelled with its connection: whatever was held goes out (or nowhere).
            self._go_live(session, [], None, since)
            raise
        result = Resumed(recovered, len(frames) if recovered else 0)
        self._go_live(session, frames if recovered else [], result, until)
        self.metrics.replays.labels(str(recovered).lower()).inc()
        self.metrics.replayed.inc(result.replayed)
        self.metrics.replay_duration.observe(time.perf_counter() - started)
        log.info("resumed", since=since, until=until, **result.as_data())
        return result

    def _go_live(
        self, session: Session, frames: list[bytes], result: Resumed | None, horizon: int
    ) -> None:
        # One synchronous step: nothing can reach the session between these pushes.
        held = session.release()
        for frame in frames:
            session.push(frame)
        if result is not None:
            session.push(codec.encode_plain("resumed", result.as_data()))
        for frame in held:
            offset = codec.frame_offset(frame)
            if offset is None or offset > horizon:
                session.push(frame)

    async def _replay(self, session: Session, since: int) -> tuple[bool, list[bytes], int]:
        history = self.history
        if history is None:
            return False, [], since
        if since > history.last_offset and not await history.wait_offset(since, self.lag_timeout_s):
            return False, [], history.last_offset
        until = history.last_offset
        if since >= until:
            return True, [], max(since, until)
        future: asyncio.Future[Resumed] = asyncio.get_running_loop().create_future()
        request = _Request(session.id, session.user_id, since, until, self.max_replay_bytes, future)
        self._queue.append(request)
        self._ensure_reader()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await future
        except TimeoutError:
            log.warning("replay_timed_out", since=since, until=until)
            return False, [], until
        finally:
            if not future.done():
                future.cancel()
        return result.recovered, request.frames, until

    # -- the coalescing reader ------------------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(
                self._read_passes(), name="recovery-reader"
            )

    async def close(self) -> None:
        """Stop the reader; waiting resumes fail (their sessions are closing anyway)."""
        for timer in self._awaiting.values():
            timer.cancel()
        self._awaiting.clear()
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.cancel()

    async def _read_passes(self) -> None:
        while self._queue:
            if self.gather_s > 0:
                await asyncio.sleep(self.gather_s)
            batch: list[_Request] = []
            while self._queue and len(batch) < self.max_batch:
                request = self._queue.popleft()
                if not request.future.done():
                    batch.append(request)
            if batch:
                await self._read_pass(batch)

    async def _read_pass(self, batch: list[_Request]) -> None:
        history = self.history
        assert history is not None
        self.passes += 1
        since = min(request.since for request in batch)
        until = max(request.until for request in batch)
        by_user: dict[str | None, list[_Request]] = {}
        for request in batch:
            by_user.setdefault(request.user_id, []).append(request)
        floor = until
        outcome = "ok"
        try:
            async with asyncio.timeout(self.timeout_s):
                floor = await history.replay(
                    since, until, lambda event: self._dispatch(event, batch, by_user)
                )
        except (TimeoutError, BackboneUnavailable) as exc:
            outcome = "failed"
            log.warning("history_read_failed", error=repr(exc), since=since, until=until)
        except Exception:
            outcome = "failed"
            log.exception("history_read_crashed", since=since, until=until)
        self.metrics.history_reads.labels(outcome).inc()
        for request in batch:
            if request.future.done():
                continue
            # Everything above the floor was read; a client at or above it missed nothing.
            recovered = outcome == "ok" and request.since >= floor and not request.overflow
            request.future.set_result(Resumed(recovered, len(request.frames)))

    @staticmethod
    def _dispatch(
        event: Event, batch: list[_Request], by_user: dict[str | None, list[_Request]]
    ) -> None:
        # Keys in the log were validated on their way in: a prefix test is enough here.
        key = event.routing_key
        if event.offset is None:
            return
        if key == routing.BROADCAST_KEY:
            targets = batch
        elif key.startswith(routing.USER_PREFIX):
            targets = by_user.get(key[len(routing.USER_PREFIX) :], [])
        else:
            return
        if not targets:
            return
        frame: bytes | None = None
        for request in targets:
            if (
                request.since < event.offset <= request.until
                and event.origin != request.session_id
                and not request.future.done()
            ):
                if frame is None:
                    frame = codec.encode_event(
                        event.name, event.data, event.id, event.ts, offset=event.offset
                    )
                request.add(frame)
