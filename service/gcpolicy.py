"""Keeps the garbage collector's full passes off the delivery path.

CPython's full (generation 2) collection walks every object it tracks. A process holding
10,000 sockets tracks about a million, so a full pass stops the event loop for 100 to 400 ms
(measured: bench S4, docs/performance.md), and while sockets keep arriving (a connect storm,
the reconnects of a rollout) one comes at every 25 % of growth. The objects that make up a
connected socket live as long as it does: walking them again and again finds nothing.

So the process moves what it holds to the permanent generation (`gc.freeze()`, which costs a
few microseconds) whenever the number of open connections grew by `freeze_after` since the
last freeze; collections then walk only what was made since. What a frozen object left behind
when its socket closed is freed by reference counting as usual; only reference cycles wait,
until every `thaw_every_s` the process unfreezes, collects once (one full pass, at a known
cadence) and freezes again. Process-wide by nature, so `server.py` runs it, not the app.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import structlog

from service.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

CHECK_EVERY_S = 0.5
FREEZE_AFTER = 200  # connections opened since the last freeze
THAW_EVERY_S = 600.0


class GcPolicy:
    """Freeze the heap as connections accumulate; thaw and collect on a slow cadence."""

    def __init__(
        self,
        connections: Callable[[], int],
        *,
        check_every_s: float = CHECK_EVERY_S,
        freeze_after: int = FREEZE_AFTER,
        thaw_every_s: float = THAW_EVERY_S,
    ) -> None:
        self._connections = connections
        self._check_every_s = check_every_s
        self._freeze_after = freeze_after
        self._thaw_every_s = thaw_every_s
        self._task: asyncio.Task[None] | None = None
        self._at_last_freeze = 0
        self.freezes = 0
        self.thaws = 0

    def start(self) -> None:
        """Freeze what start-up made (modules, the app) and start watching."""
        gc.freeze()
        self._at_last_freeze = self._connections()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gc-policy")

    async def close(self) -> None:
        """Stop watching. What is frozen stays so: the process is about to end, and a last
        full pass over everything would only delay its exit."""
        await cancel_and_wait(self._task)
        self._task = None

    def check(self) -> None:
        """Freeze when enough connections arrived since the last freeze."""
        now = self._connections()
        if now - self._at_last_freeze >= self._freeze_after:
            gc.freeze()
            self.freezes += 1
        if now < self._at_last_freeze or now - self._at_last_freeze >= self._freeze_after:
            self._at_last_freeze = now

    def thaw(self) -> None:
        """Collect the cycles left by connections that closed since the last thaw."""
        started = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self.thaws += 1
        log.info(
            "gc_thawed",
            collected=collected,
            pause_ms=round((time.perf_counter() - started) * 1000, 1),
            frozen=gc.get_freeze_count(),
        )

    async def _run(self) -> None:
        next_thaw = time.monotonic() + self._thaw_every_s
        while True:
            await asyncio.sleep(self._check_every_s)
            self.check()
            if time.monotonic() >= next_thaw:
                next_thaw = time.monotonic() + self._thaw_every_s
                self.thaw()
