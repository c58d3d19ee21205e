"""The NotificationHistory guarantees (service/backbone/base.py), for every backbone that keeps one.

Each backbone is driven only through its public seam: `start`, `publish`, `last_offset`,
`wait_offset`, `replay`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.backbone.base import NotificationHistory, history_of
from service.backbone.memory import MemoryBackbone
from service.model import Event


class Harness:
    """A started backbone, what reached `on_event`, and a way to publish."""

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone
        history = history_of(backbone)
        assert history is not None
        self.log: NotificationHistory = history
        self.delivered: list[Event] = []
        self.arrived = asyncio.Event()

    def on_event(self, event: Event) -> None:
        self.delivered.append(event)
        self.arrived.set()

    async def publish(self, routing_key: str, n: int) -> str:
        ident = f"{routing_key}-{n}"
        await self.backbone.publish(Event(routing_key, "notification_new", {"n": n}, ident, 1))
        return ident

    async def settle(self, offset: int) -> None:
        """Wait until this instance has seen `offset` (live delivery can lag)."""
        assert await self.log.wait_offset(offset, 5.0)

    async def read(self, since: int, until: int) -> tuple[list[Event], int]:
        events: list[Event] = []
        floor = await self.log.replay(since, until, events.append)
        return events, floor


@pytest.fixture(params=["memory"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    backbone = MemoryBackbone()
    h = Harness(backbone)
    await backbone.start(h.on_event)
    await backbone.bind(["notification.#"])
    yield h
    await backbone.close()


async def test_every_notification_takes_the_next_offset(harness: Harness) -> None:
    start = harness.log.last_offset
    ids = [
        await harness.publish("notification.user.a", 1),
        await harness.publish("notification.broadcast", 2),
        await harness.publish("notification.user.b", 3),
    ]
    await harness.settle(start + 3)
    events, floor = await harness.read(start, start + 3)
    assert [e.id for e in events] == ids
    offsets = [e.offset for e in events]
    assert offsets == sorted(offsets)
    assert offsets[0] > start
    assert offsets[-1] == harness.log.last_offset
    assert [e.offset for e in harness.delivered[-3:]] == offsets
    assert floor <= start


async def test_replay_is_bounded_on_both_sides(harness: Harness) -> None:
    for n in range(5):
        await harness.publish("notification.user.a", n)
    await harness.settle(1)
    every, _ = await harness.read(0, harness.log.last_offset)
    offsets = [e.offset or 0 for e in every][-5:]
    events, floor = await harness.read(offsets[0], offsets[2])
    assert [e.offset for e in events] == offsets[1:3]
    assert floor <= offsets[0]
    events, floor = await harness.read(offsets[4], offsets[4])
    assert events == []
    assert floor <= offsets[4]


async def test_events_keep_what_the_publisher_gave(harness: Harness) -> None:
    start = harness.log.last_offset
    ident = await harness.publish("notification.user.a", 7)
    await harness.settle(start + 1)
    (event,), _ = await harness.read(start, harness.log.last_offset)
    assert (event.routing_key, event.name, event.data, event.id) == (
        "notification.user.a",
        "notification_new",
        {"n": 7},
        ident,
    )


async def test_an_offset_nobody_has_seen_is_not_waited_for_forever(harness: Harness) -> None:
    assert not await harness.log.wait_offset(harness.log.last_offset + 1000, 0.2)


async def test_memory_log_forgets_by_time_and_by_count() -> None:
    now = [0.0]
    backbone = MemoryBackbone(window_s=10, history_max=3, clock=lambda: now[0])
    await backbone.start(lambda event: None)
    for n in range(5):
        await backbone.publish(Event("notification.user.a", "e", n, str(n), 1))
    await backbone.publish(Event("dashboard.sales", "dashboard_update", 0, "d", 1))
    events: list[Event] = []
    assert await backbone.replay(0, 5, events.append) == 2
    assert [e.offset for e in events] == [3, 4, 5]
    now[0] = 11
    events.clear()
    assert await backbone.replay(0, 5, events.append) == 5
    assert events == []
    assert backbone.last_offset == 5
