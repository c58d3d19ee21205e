"""The embedded backbone: one process, no broker.

Used when GATEWAY_AMQP_URL is empty, and by tests. Bindings are matched with AMQP topic
semantics, delivery is synchronous from `publish`, notifications get offsets from a counter,
and upstream events are kept in a bounded log that tests and operators can read.

Notifications are also kept in a log bounded in time (`window_s`, GATEWAY_RECOVERY_WINDOW_SECONDS)
and in count (`history_max`), read by `replay` (the `NotificationHistory` seam): the same semantics
as the RabbitMQ stream, for one instance. Offsets restart at 1 with the process, so a client's
offset from before a restart is either above `last_offset` or below what the log holds, and
its resume is answered `recovered: false` in both cases.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from service import routing
from service.backbone.base import OnEvent
from service.backbone.history import MAX_ENTRIES, RecentHistory
from service.errors import BackboneUnavailable
from service.model import Event

UPSTREAM_LOG_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class UpstreamRecord:
    """One event the gateway published upstream."""

    routing_key: str
    body: bytes


class MemoryBackbone:
    """In-process backbone; see the module docstring."""

    def __init__(
        self,
        *,
        upstream_log_size: int = UPSTREAM_LOG_SIZE,
        window_s: float = 600.0,
        history_max: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_event: OnEvent | None = None
        self._bindings: set[str] = set()
        self._patterns: set[str] = set()  # the bindings with `*` or `#`, matched word by word
        self._available = True
        self._last_offset = 0
        self._history = RecentHistory(window_s=window_s, max_entries=history_max, clock=clock)
        self.upstream: deque[UpstreamRecord] = deque(maxlen=upstream_log_size)
        self._upstream_listeners: list[Callable[[UpstreamRecord], None]] = []

    @property
    def ready(self) -> bool:
        return self._on_event is not None and self._available

    @property
    def reason(self) -> str:
        if self._on_event is None:
            return "backbone not started"
        return "" if self._available else "backbone unavailable"

    @property
    def bindings(self) -> frozenset[str]:
        """The keys currently bound."""
        return frozenset(self._bindings)

    def set_available(self, available: bool) -> None:
        """Simulate an outage of the carrier (for tests and drills)."""
        self._available = available

    def on_upstream(self, listener: Callable[[UpstreamRecord], None]) -> Callable[[], None]:
        """Call `listener` for every upstream event; returns a function that removes it."""
        self._upstream_listeners.append(listener)
        return lambda: self._upstream_listeners.remove(listener)

    async def start(self, on_event: OnEvent) -> None:
        self._on_event = on_event

    async def close(self) -> None:
        self._on_event = None
        self._bindings.clear()
        self._patterns.clear()

    async def bind(self, keys: Collection[str]) -> None:
        self._bindings.update(keys)
        self._patterns.update(key for key in keys if "*" in key or "#" in key)
        await asyncio.sleep(0)

    async def unbind(self, keys: Collection[str]) -> None:
        self._bindings.difference_update(keys)
        self._patterns.difference_update(keys)
        await asyncio.sleep(0)

    async def publish(self, event: Event) -> None:
        self._check()
        if event.routing_key.startswith("notification."):
            self._last_offset += 1
            event = replace(event, offset=self._last_offset)
            self._history.append(event)
        if self._on_event is not None and self._is_bound(event.routing_key):
            self._on_event(event)

    # -- NotificationHistory ------------------------------------------------------------------

    @property
    def history(self) -> MemoryBackbone:
        """This backbone is its own notification log."""
        return self

    @property
    def last_offset(self) -> int:
        return self._last_offset

    async def wait_offset(self, offset: int, timeout_s: float) -> bool:
        # One instance cannot lag behind itself: a larger offset is from another history.
        return offset <= self._last_offset

    async def replay(self, since: int, until: int, sink: Callable[[Event], None]) -> int:
        self._check()
        floor = self._history.floor
        # Synchronous: the log cannot change while it is read (bounded by history_max).
        for event in self._history.read(since, until):
            sink(event)
        return self._last_offset if floor is None else floor

    async def publish_upstream(self, routing_key: str, body: bytes) -> None:
        self._check()
        record = UpstreamRecord(routing_key, body)
        self.upstream.append(record)
        for listener in list(self._upstream_listeners):
            listener(record)

    def _is_bound(self, key: str) -> bool:
        return key in self._bindings or any(routing.matches(p, key) for p in self._patterns)

    def _check(self) -> None:
        if not self.ready:
            raise BackboneUnavailable(self.reason or "backbone unavailable")
