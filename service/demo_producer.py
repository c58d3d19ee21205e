"""The synthetic producer of demo mode (`GATEWAY_DEMO=1`): fake analytics and notifications.

It stands in for the services that would publish to RabbitMQ, and goes through the same path
they do (`Node.publish` → backbone → fan-out), so the demo page shows the gateway's real
delivery, not a shortcut. Every `update_interval_s` it publishes one `dashboard_update` per
topic (a bounded random walk per metric) and every `notification_every` ticks one
`notification_new` to the demo user. A backbone outage skips a tick; it never stops the loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from service import routing
from service.errors import BackboneUnavailable
from service.node import Node

log = structlog.get_logger(__name__)

DEMO_USER = "42"  # the user `scripts/run` prints a token for


@dataclass(frozen=True, slots=True)
class Metric:
    """One dashboard topic of the demo: a value wandering between `low` and `high`."""

    topic: str
    unit: str
    start: float
    low: float
    high: float
    step: float


METRICS: tuple[Metric, ...] = (
    Metric("sales", "EUR/min", 1200.0, 300.0, 3000.0, 120.0),
    Metric("visitors", "users", 340.0, 50.0, 900.0, 25.0),
    Metric("latency", "ms p95", 80.0, 20.0, 400.0, 12.0),
)

_NOTES: tuple[tuple[str, str], ...] = (
    ("New order", "Order #{n} was paid"),
    ("Deploy finished", "Build {n} is live"),
    ("Comment", "Someone replied to your report ({n})"),
    ("Alert cleared", "Latency is back under the threshold ({n})"),
    ("Invoice", "Invoice {n} is ready to download"),
)


class DemoProducer:
    """Publishes the demo's events through a node; see the module docstring."""

    def __init__(
        self,
        node: Node,
        *,
        user: str = DEMO_USER,
        metrics: Sequence[Metric] = METRICS,
        update_interval_s: float = 1.0,
        notification_every: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        self.node = node
        self.user = user
        self.metrics = tuple(metrics)
        self.update_interval_s = update_interval_s
        self.notification_every = max(1, notification_every)
        self._rng = rng or random.Random()
        self._values = {m.topic: m.start for m in self.metrics}
        self.ticks = 0
        self.published = 0
        self.skipped = 0

    @property
    def topics(self) -> list[str]:
        """The dashboard topics this producer publishes."""
        return [m.topic for m in self.metrics]

    def next_value(self, metric: Metric) -> float:
        """The next point of a metric's random walk, kept within its bounds."""
        value = self._values[metric.topic] + self._rng.uniform(-metric.step, metric.step)
        value = min(metric.high, max(metric.low, value))
        self._values[metric.topic] = value
        return round(value, 1)

    async def tick(self) -> None:
        """Publish one round: an update per topic, and a notification every few ticks."""
        self.ticks += 1
        for metric in self.metrics:
            data = {"value": self.next_value(metric), "unit": metric.unit}
            await self._publish(routing.topic_key(metric.topic), data)
        if self.ticks % self.notification_every == 0:
            n = self.ticks // self.notification_every
            title, body = _NOTES[(n - 1) % len(_NOTES)]
            data = {"title": title, "body": body.format(n=1000 + n), "level": "info"}
            await self._publish(routing.user_key(self.user), data)

    async def run(self) -> None:
        """Tick forever on a fixed schedule (no drift); cancel to stop."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self.tick()
            # A late tick (a busy loop, a slow backbone) does not cause a burst of catch-ups.
            due = max(due + self.update_interval_s, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _publish(self, routing_key: str, data: object) -> None:
        try:
            await self.node.publish(routing_key, data)
        except BackboneUnavailable:
            self.skipped += 1
            log.debug("demo_publish_skipped", routing_key=routing_key)
        else:
            self.published += 1
