"""The embedded backbone: one process, no broker.

Used when GATEWAY_AMQP_URL is empty, and by tests. Bindings are matched with AMQP topic
semantics, delivery is synchronous from `publish`, notifications get offsets from a counter,
and upstream events are kept in a bounded log that tests and operators can read.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from service import routing
from service.backbone.base import OnEvent
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

    def __init__(self, *, upstream_log_size: int = UPSTREAM_LOG_SIZE) -> None:
        self._on_event: OnEvent | None = None
        self._bindings: set[str] = set()
        self._patterns: set[str] = set()  # the bindings with `*` or `#`, matched word by word
        self._available = True
        self._offsets = itertools.count(1)
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
            event = replace(event, offset=next(self._offsets))
        if self._on_event is not None and self._is_bound(event.routing_key):
            self._on_event(event)

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
