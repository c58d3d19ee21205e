"""One suite every backbone must pass (the guarantees of service/backbone/base.py).

Parametrised over the embedded backbone and RabbitMQ, in the manner of Phoenix PubSub's shared
adapter tests. A harness gives each backbone the same three extra powers: read what was
published upstream, cut the carrier, restore it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

import aio_pika
import pytest

from service.backbone.amqp import AmqpBackbone
from service.backbone.base import Backbone
from service.backbone.memory import MemoryBackbone, UpstreamRecord
from service.errors import BackboneUnavailable
from service.model import Event
from tests.broker import Broker, Names, TcpProxy, make_backbone, next_message, until

WITHIN_S = 5.0
RECOVERY_S = 30.0


class Harness(Protocol):
    backbone: Backbone

    async def next_upstream(self) -> tuple[str, bytes]: ...

    async def cut(self) -> None: ...

    async def restore(self) -> None: ...


class Received:
    """The `on_event` callback, with a way to wait for the n-th event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def count(self, n: int, within: float = WITHIN_S) -> list[Event]:
        async with asyncio.timeout(within):
            while len(self.events) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.events

    def keys(self) -> list[str]:
        return [e.routing_key for e in self.events]


class MemoryHarness:
    def __init__(self) -> None:
        self.memory = MemoryBackbone()
        self.backbone: Backbone = self.memory
        self._upstream: asyncio.Queue[UpstreamRecord] = asyncio.Queue()
        self.memory.on_upstream(self._upstream.put_nowait)

    async def next_upstream(self) -> tuple[str, bytes]:
        record = await asyncio.wait_for(self._upstream.get(), WITHIN_S)
        return record.routing_key, record.body

    async def cut(self) -> None:
        self.memory.set_available(False)

    async def restore(self) -> None:
        self.memory.set_available(True)


class AmqpHarness:
    def __init__(self, broker: Broker, names: Names, proxy: TcpProxy) -> None:
        self.amqp = make_backbone(proxy.url(broker.url), names)
        self.backbone: Backbone = self.amqp
        self._proxy = proxy
        self._broker = broker
        self._names = names
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._tap: aio_pika.abc.AbstractQueue | None = None

    async def open(self) -> None:
        # The upstream reader talks to the broker directly, not through the proxy.
        self._connection = await aio_pika.connect(self._broker.url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(
            self._names.upstream, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._tap = await channel.declare_queue(exclusive=True, auto_delete=True)
        await self._tap.bind(exchange, "#")

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def next_upstream(self) -> tuple[str, bytes]:
        assert self._tap is not None
        message = await next_message(self._tap, WITHIN_S)
        return message.routing_key or "", message.body

    async def cut(self) -> None:
        await self._proxy.cut()
        await until(lambda: not self.amqp.ready, WITHIN_S, "the backbone to notice the cut")

    async def restore(self) -> None:
        await self._proxy.restore()


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.amqp)])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "amqp":
        request.getfixturevalue("amqp_broker")  # skips (or fails on CI) without a broker
    return str(request.param)


@pytest.fixture
async def harness(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if kind == "memory":
        yield MemoryHarness()
        return
    broker: Broker = request.getfixturevalue("amqp_broker")
    names = Names.new()
    proxy = TcpProxy(*_host_port(broker.url))
    await proxy.start()
    amqp = AmqpHarness(broker, names, proxy)
    await amqp.open()
    try:
        yield amqp
    finally:
        await amqp.backbone.close()
        await amqp.close()
        await proxy.cut()
        await names.delete(broker.url)


def _host_port(url: str) -> tuple[str, int]:
    from yarl import URL

    parsed = URL(url)
    return parsed.host or "127.0.0.1", parsed.port or 5672


@pytest.fixture
async def started(harness: Harness) -> Received:
    received = Received()
    await harness.backbone.start(received)
    return received


def event(routing_key: str, data: object = None, *, name: str = "notification_new") -> Event:
    return Event(routing_key, name, data, uuid.uuid4().hex, int(time.time() * 1000))


async def test_ready_only_between_start_and_close(harness: Harness) -> None:
    assert not harness.backbone.ready
    assert harness.backbone.reason
    await harness.backbone.start(Received())
    assert harness.backbone.ready
    assert harness.backbone.reason == ""
    await harness.backbone.close()
    assert not harness.backbone.ready
    with pytest.raises(BackboneUnavailable):
        await harness.backbone.publish(event("notification.broadcast"))


async def test_a_bound_key_is_delivered_with_every_field(
    harness: Harness, started: Received
) -> None:
    await harness.backbone.bind(["notification.user.7"])
    sent = Event(
        "notification.user.7",
        "notification_read",
        {"id": "n1"},
        "msg-1",
        1_700_000_000_123,
        origin="conn-9",
    )
    await harness.backbone.publish(sent)
    [got] = await started.count(1)
    assert (got.routing_key, got.name, got.data, got.id, got.ts, got.origin) == (
        sent.routing_key,
        sent.name,
        sent.data,
        sent.id,
        sent.ts,
        sent.origin,
    )


async def test_an_unbound_key_is_not_delivered(harness: Harness, started: Received) -> None:
    await harness.backbone.bind(["notification.user.1"])
    await harness.backbone.publish(event("notification.user.2"))
    await harness.backbone.publish(event("notification.user.1"))  # barrier: same publisher order
    await started.count(1)
    await harness.backbone.publish(event("notification.user.1"))
    await started.count(2)
    assert started.keys() == ["notification.user.1", "notification.user.1"]


async def test_a_pattern_binding_takes_every_matching_key(
    harness: Harness, started: Received
) -> None:
    await harness.backbone.bind(["dashboard.#"])
    for key in ("dashboard.sales", "dashboard.eu.sales", "notification.broadcast", "dashboard.x"):
        await harness.backbone.publish(event(key, name="dashboard_update"))
    await started.count(3)
    assert started.keys() == ["dashboard.sales", "dashboard.eu.sales", "dashboard.x"]


async def test_unbind_stops_delivery_of_those_keys_only(
    harness: Harness, started: Received
) -> None:
    await harness.backbone.bind(["dashboard.a", "dashboard.b"])
    await harness.backbone.unbind(["dashboard.a"])
    await harness.backbone.publish(event("dashboard.a"))
    await harness.backbone.publish(event("dashboard.b"))
    await started.count(1)
    assert started.keys() == ["dashboard.b"]


async def test_order_is_kept_per_key(harness: Harness, started: Received) -> None:
    await harness.backbone.bind(["notification.user.u", "notification.broadcast"])
    for i in range(200):
        key = "notification.user.u" if i % 3 else "notification.broadcast"
        await harness.backbone.publish(event(key, i))
    events = await started.count(200)
    for key in ("notification.user.u", "notification.broadcast"):
        values = [e.data for e in events if e.routing_key == key]
        assert values == sorted(values)


async def test_notification_offsets_grow_where_supported(
    harness: Harness, started: Received
) -> None:
    await harness.backbone.bind(["notification.broadcast"])
    for _ in range(3):
        await harness.backbone.publish(event("notification.broadcast"))
    offsets = [e.offset for e in await started.count(3)]
    assert offsets == [None] * 3 or offsets == sorted(set(offsets))  # type: ignore[type-var]


async def test_publish_upstream_returns_once_taken(harness: Harness, started: Received) -> None:
    await harness.backbone.publish_upstream("notifications.notification_read", b'{"id":"n1"}')
    assert await harness.next_upstream() == ("notifications.notification_read", b'{"id":"n1"}')


async def test_while_cut_publishes_fail_at_once(harness: Harness, started: Received) -> None:
    await harness.cut()
    assert not harness.backbone.ready
    assert harness.backbone.reason
    begin = time.monotonic()
    with pytest.raises(BackboneUnavailable):
        await harness.backbone.publish(event("notification.broadcast"))
    with pytest.raises(BackboneUnavailable):
        await harness.backbone.publish_upstream("dashboard.dashboard_refresh", b"{}")
    assert time.monotonic() - begin < 0.5  # no waiting, no buffering


async def test_bindings_come_back_after_an_outage(harness: Harness, started: Received) -> None:
    await harness.backbone.bind(["notification.user.kept", "notification.user.dropped"])
    await harness.cut()
    await harness.backbone.unbind(["notification.user.dropped"])  # asked for while cut
    try:
        await harness.backbone.bind(["notification.user.late"])
        late_bound = True
    except BackboneUnavailable:
        late_bound = False
    await harness.restore()
    await until(lambda: harness.backbone.ready, RECOVERY_S, "the backbone to be ready again")
    if not late_bound:
        await harness.backbone.bind(["notification.user.late"])
    for key in ("notification.user.dropped", "notification.user.kept", "notification.user.late"):
        await harness.backbone.publish(event(key))
    await started.count(2)
    assert started.keys() == ["notification.user.kept", "notification.user.late"]


def test_the_amqp_backbone_satisfies_the_protocol() -> None:
    backbone: Backbone = AmqpBackbone("amqp://guest:guest@127.0.0.1/", instance_id="typing")
    assert not backbone.ready
