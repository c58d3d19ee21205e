"""Process-level gauges and the event-loop lag probe.

The lag probe sleeps for a fixed interval and measures how much later than asked the loop
woke it: that delay is time the loop spent running other callbacks (a long fan-out, a CPU-bound
handler, a blocking call someone slipped in). It is the one number that tells an operator the
process is saturated before clients notice, so it is observed on every tick.

Gauges that describe the process (backbone connected, bindings in place, draining) are set
here on every tick as well as at scrape time: with several workers, a scrape is answered by
one worker and must still see the others' current values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.metrics import Metrics
from service.node import Node
from service.tasks import cancel_and_wait

LAG_INTERVAL_S = 0.5


def refresh_gauges(node: Node, metrics: Metrics) -> None:
    """Copy the node's current state into the process gauges."""
    metrics.backbone_ready.set(1 if node.backbone.ready else 0)
    metrics.bindings.set(len(node.bindings.bound))
    metrics.draining.set(1 if node.draining else 0)


class LoopMonitor:
    """Measures event-loop lag every `interval_s` and runs `on_tick` after each measure."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        interval_s: float = LAG_INTERVAL_S,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._on_tick = on_tick
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.last_lag_s = 0.0

    def start(self) -> None:
        """Start the probe task on the running loop."""
        if self._task is None:
            self._metrics.workers.set(1)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-monitor")

    async def close(self) -> None:
        """Stop the probe."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        self._metrics.workers.set(0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self._interval_s
            await asyncio.sleep(self._interval_s)
            self.last_lag_s = max(0.0, loop.time() - expected)
            self._metrics.loop_lag.observe(self.last_lag_s)
            self.ticks += 1
            if self._on_tick is not None:
                self._on_tick()
