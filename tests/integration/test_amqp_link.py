"""What the broker link guarantees under the lean receive path: the broker holds the backlog
(prefetch / stream credit), heartbeats both ways, connection.blocked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from pamqp.commands import Connection
from yarl import URL

from service.backbone.amqp import AmqpBackbone
from service.errors import BackboneUnavailable
from service.model import Event
from tests.broker import Broker, Names, Service, make_backbone, until
from tests.frame_proxy import FrameProxy

pytestmark = pytest.mark.amqp

PREFETCH = 10
BURST = 100


@pytest.fixture
async def frame_proxy(amqp_broker: Broker) -> AsyncIterator[FrameProxy]:
    url = URL(amqp_broker.url)
    proxy = FrameProxy(url.host or "127.0.0.1", url.port or 5672)
    await proxy.start()
    yield proxy
    proxy.thaw()
    await proxy.cut()


async def started(backbone: AmqpBackbone, received: list[Event]) -> AmqpBackbone:
    await backbone.start(received.append)
    return backbone


async def queue_depth(backbone: AmqpBackbone) -> int:
    """Messages ready in the instance queue (asked on its own connection: it is exclusive)."""
    link = backbone._link
    assert link is not None
    declared = await link.control.declare_queue(backbone.queue_name, passive=True)
    return declared.declaration_result.message_count or 0


async def test_while_acks_do_not_flow_the_broker_holds_the_backlog(
    amqp_broker: Broker, amqp_names: Names, service: Service
) -> None:
    received: list[Event] = []
    backbone = await started(
        make_backbone(amqp_broker.url, amqp_names, prefetch=PREFETCH), received
    )
    try:
        await backbone.bind(["dashboard.#"])
        link = backbone._link
        assert link is not None
        await link.settler.stop()  # as if the gateway could not keep up: no acks go out
        for i in range(BURST):
            await service.publish("dashboard.load", {"data": i})
        await until(lambda: len(received) == PREFETCH, 5, "a prefetch's worth")
        # Every message was routed (confirmed): the rest waits in the broker, not here.
        assert await queue_depth(backbone) == BURST - PREFETCH
        assert len(received) == PREFETCH
        link.settler.start()
        await until(lambda: len(received) == BURST, 10, "the backlog once acks flow again")
        assert [e.data for e in received] == list(range(BURST))
    finally:
        await backbone.close()


async def test_the_stream_consumer_is_bounded_by_its_credit_too(
    amqp_broker: Broker, amqp_names: Names, service: Service
) -> None:
    received: list[Event] = []
    stream = f"realtime.notifications.{amqp_names.tag}"
    backbone = make_backbone(
        amqp_broker.url,
        amqp_names,
        prefetch=PREFETCH,
        recovery_window_s=600,
        recovery_stream=stream,
    )
    await backbone.start(received.append)
    try:
        history = backbone.history
        assert history is not None
        assert history._settler is not None
        await history._settler.stop()
        for i in range(BURST):
            await service.publish("notification.user.u1", {"data": i})
        await until(lambda: len(received) >= PREFETCH, 5, "a credit's worth")
        held = len(received)
        await asyncio.sleep(0.5)  # give the broker every chance to overrun its credit
        assert len(received) == held < BURST
        history._settler.start()
        await until(lambda: len(received) == BURST, 10, "the rest once credit flows again")
        assert [e.data for e in received] == list(range(BURST))
    finally:
        await backbone.close()
        channel = await service.channel()
        await channel.queue_delete(stream)


async def test_a_link_busy_with_deliveries_only_is_not_taken_for_a_dead_one(
    amqp_broker: Broker, amqp_names: Names, service: Service
) -> None:
    # aiormq counts a link dead after 3 x (heartbeat + 1) s without a frame it saw. The tap
    # takes every delivery frame and the broker sends no heartbeat while it sends deliveries,
    # so the tap has to show aiormq the link is alive.
    received: list[Event] = []
    backbone = await started(make_backbone(amqp_broker.url, amqp_names, heartbeat_s=1), received)
    stop_at = time.monotonic() + 8.0  # longer than aiormq's 6 s grace at heartbeat 1

    async def publish_until_done() -> None:
        i = 0
        while time.monotonic() < stop_at:
            await service.publish("dashboard.busy", {"data": i})
            i += 1

    try:
        await backbone.bind(["dashboard.#"])
        ready_all_along = True

        async def watch() -> None:
            nonlocal ready_all_along
            while time.monotonic() < stop_at:
                ready_all_along &= backbone.ready
                await asyncio.sleep(0.05)

        await asyncio.gather(publish_until_done(), watch())
        assert ready_all_along
        assert backbone.metrics.backbone_reconnects._value.get() == 0
        assert backbone.tapped == len(received) > 0
    finally:
        await backbone.close()


async def test_a_link_that_goes_silent_is_detected_and_replaced(
    amqp_broker: Broker, amqp_names: Names, service: Service, frame_proxy: FrameProxy
) -> None:
    received: list[Event] = []
    backbone = make_backbone(
        frame_proxy.url(amqp_broker.url),
        amqp_names,
        heartbeat_s=1,
        connect_timeout_s=2.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
    )
    await backbone.start(received.append)
    try:
        await backbone.bind(["dashboard.#"])
        frame_proxy.freeze()  # nothing passes, nothing closes
        await until(lambda: not backbone.ready, 15, "the silent link to be given up")
        frame_proxy.thaw()
        await backbone.wait_ready(15)
        await service.publish("dashboard.after", {"data": "back"})
        await until(lambda: [e.data for e in received] == ["back"], 5, "delivery on the new link")
    finally:
        await backbone.close()


async def test_connection_blocked_fails_publishes_at_once_and_delivery_resumes_after(
    amqp_broker: Broker, amqp_names: Names, service: Service, frame_proxy: FrameProxy
) -> None:
    received: list[Event] = []
    backbone = make_backbone(frame_proxy.url(amqp_broker.url), amqp_names, confirm_timeout_s=5.0)
    await backbone.start(received.append)
    try:
        await backbone.bind(["dashboard.#"])
        await backbone.publish_upstream("notifications.notification_read", b"{}")
        # A broker under a resource alarm says connection.blocked and stops reading.
        frame_proxy.inject(Connection.Blocked(reason="low on memory"))
        await until(lambda: backbone._blocked is not None, 5, "the gateway to see the block")
        frame_proxy.freeze()
        started_at = time.monotonic()
        with pytest.raises(BackboneUnavailable, match="low on memory"):
            await backbone.publish_upstream("notifications.notification_read", b"{}")
        assert time.monotonic() - started_at < 1.0  # answered at once, not after 5 s
        assert backbone.ready  # a blocked broker is not a lost one: sockets stay
        frame_proxy.thaw()
        frame_proxy.inject(Connection.Unblocked())
        await until(lambda: backbone._blocked is None, 5, "the gateway to see the unblock")
        await backbone.publish_upstream("notifications.notification_read", b"{}")
        await service.publish("dashboard.after", {"data": "flowing"})
        await until(lambda: [e.data for e in received] == ["flowing"], 5, "deliveries")
    finally:
        await backbone.close()
