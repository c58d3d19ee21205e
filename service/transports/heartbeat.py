"""`HeartbeatWheel`: one timer for every socket's heartbeat, instead of one per socket.

Contract section 1 (`GATEWAY_HEARTBEAT_SECONDS`): the server pings a peer silent this long, and
closes one that does not answer within half that. aiohttp keeps a timer handle per socket and
re-arms it on every frame received; here a socket only records when it last heard its peer
(a float), and the wheel visits it about once per interval, in slots of `interval / SLOTS`
seconds, asking it what to do: a socket answers the time it next wants a visit, or None once
it is closed. So a ping leaves between `interval` and `interval + interval / SLOTS` after the
peer went silent, and a dead peer is closed within 1.5 intervals plus one slot.

The wheel is also the registry of the sockets it serves: `close_all` ends them at shutdown.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

SLOTS = 16  # slots per heartbeat interval: the precision of a ping's timing


class Beating(Protocol):
    """A socket the wheel visits."""

    def heartbeat(self, now: float) -> float | None:
        """Ping or close as the time `now` requires; the time of the next visit, or None."""

    def abort(self) -> None:
        """Drop the connection now (the process is stopping)."""


class HeartbeatWheel:
    """Visits each added socket when it asked to be visited, within one slot's precision."""

    __slots__ = (
        "_done",
        "_handle",
        "_loop",
        "_slot_s",
        "_slots",
        "_where",
        "interval_s",
        "timeout_s",
    )

    def __init__(self, interval_s: float, timeout_s: float | None = None) -> None:
        self.interval_s = interval_s
        self.timeout_s = interval_s / 2 if timeout_s is None else timeout_s
        self._slot_s = interval_s / SLOTS
        # Enough slots to hold the furthest visit a socket may ask for (now + interval).
        self._slots: list[set[Beating]] = [set() for _ in range(SLOTS + 2)]
        self._where: dict[Beating, int] = {}  # socket -> its slot's tick number
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._done = 0  # the last tick visited

    def __len__(self) -> int:
        return len(self._where)

    def now(self) -> float:
        """The loop's time, the clock of every visit."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def add(self, socket: Beating, first_visit: float) -> None:
        """Serve `socket`; first visit at loop time `first_visit`."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._handle is None:  # idle until now: the wheel starts from the present
            self._done = math.floor(self._loop.time() / self._slot_s)
        self._place(socket, first_visit)
        if self._handle is None:
            self._schedule()

    def discard(self, socket: Beating) -> None:
        """Stop serving `socket` (closed): no visit, no reference kept."""
        tick = self._where.pop(socket, None)
        if tick is not None:
            self._slots[tick % len(self._slots)].discard(socket)

    def close_all(self) -> None:
        """Abort every socket still served, and stop the timer."""
        sockets = list(self._where)
        self._where.clear()
        for slot in self._slots:
            slot.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for socket in sockets:
            socket.abort()

    def _place(self, socket: Beating, when: float) -> None:
        span = len(self._slots)
        # Never in a slot already visited, never beyond the wheel's span.
        tick = min(max(math.ceil(when / self._slot_s), self._done + 1), self._done + span - 1)
        old = self._where.get(socket)
        if old == tick:
            return
        if old is not None:
            self._slots[old % span].discard(socket)
        self._where[socket] = tick
        self._slots[tick % span].add(socket)

    def _schedule(self) -> None:
        assert self._loop is not None
        self._handle = self._loop.call_at((self._done + 1) * self._slot_s, self._turn)

    def _turn(self) -> None:
        assert self._loop is not None
        self._handle = None
        now = self._loop.time()
        due = math.floor(now / self._slot_s)
        span = len(self._slots)
        # Every slot whose time came, in order (a late timer may have to visit several).
        for tick in range(max(self._done + 1, due - span + 1), due + 1):
            self._done = tick
            slot = self._slots[tick % span]
            if not slot:
                continue
            sockets = list(slot)
            slot.clear()
            for socket in sockets:
                del self._where[socket]
                after = socket.heartbeat(now)
                if after is not None:
                    self._place(socket, after)
        self._done = max(self._done, due)
        if self._where:
            self._schedule()
