"""The lean receive path (service/backbone/tap.py) against the real broker."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import pytest

from service.model import Event
from tests.broker import (
    Broker,
    Names,
    Service,
    StartRecovering,
    TcpProxy,
    make_backbone,
    next_message,
    until,
)
from tests.conftest import receive
from tests.integration.test_amqp import sample

pytestmark = pytest.mark.amqp

#: Bodies from empty to several frames (RabbitMQ's frame_max is 128 KiB) and several MiB.
SIZES = [0, 100, 131_000, 131_072, 300_000, 5_000_000]


async def test_bodies_of_every_size_arrive_whole_and_in_order(
    amqp_broker: Broker, amqp_names: Names, service: Service
) -> None:
    received: list[Event] = []
    backbone = make_backbone(amqp_broker.url, amqp_names)
    await backbone.start(received.append)
    try:
        await backbone.bind(["dashboard.#"])
        for size in SIZES:
            await service.publish("dashboard.big", {"data": "x" * size}, message_id=f"m{size}")
        await until(lambda: len(received) == len(SIZES), within=20, what="every body")
        assert [len(e.data) for e in received] == SIZES
        assert all(e.data == "x" * len(e.data) for e in received)
        assert [e.id for e in received] == [f"m{size}" for size in SIZES]
        assert backbone.tapped == len(SIZES)  # the lean path took them, not aiormq's
    finally:
        await backbone.close()


async def test_reconnect_under_load_keeps_order_and_delivers_at_most_once(
    amqp_broker: Broker, amqp_names: Names, service: Service, broker_proxy: TcpProxy
) -> None:
    received: list[int] = []
    backbone = make_backbone(
        broker_proxy.url(amqp_broker.url),
        amqp_names,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    await backbone.start(lambda event: received.append(event.data))
    sent = 0

    async def publish_forever() -> None:
        nonlocal sent
        while True:
            await service.publish("dashboard.load", {"data": sent})
            sent += 1

    try:
        await backbone.bind(["dashboard.#"])
        publisher = asyncio.get_running_loop().create_task(publish_forever())
        await until(lambda: len(received) >= 300, within=10, what="deliveries under load")
        await broker_proxy.cut()
        await until(lambda: not backbone.ready, 5, "the gateway to see the cut")
        await broker_proxy.restore()
        await backbone.wait_ready(10)
        after = sent
        await until(lambda: received[-1] > after, within=10, what="deliveries after the reconnect")
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
        assert received == sorted(set(received))  # in order, none twice
    finally:
        await backbone.close()


async def test_a_consumer_channel_closed_by_the_broker_is_reopened_and_delivery_goes_on(
    amqp_broker: Broker, amqp_names: Names, service: Service
) -> None:
    received: list[Event] = []
    backbone = make_backbone(amqp_broker.url, amqp_names, backoff_initial_s=0.05)
    await backbone.start(received.append)
    try:
        await backbone.bind(["dashboard.#"])
        await service.publish("dashboard.a", {"data": 1})
        await until(lambda: len(received) == 1, 5, "the first delivery")
        link = backbone._link
        assert link is not None
        # Acking a tag the broker never sent is a channel error: it closes the channel.
        await link.consumer_rpc.basic_ack(10**9)
        await until(lambda: not backbone.ready, 5, "the lost channel to be seen")
        await backbone.wait_ready(10)
        await service.publish("dashboard.a", {"data": 2})
        await until(lambda: len(received) == 2, 5, "a delivery on the new link")
        assert received[-1].data == 2
        assert backbone.tapped == 1  # the new link's tap
    finally:
        await backbone.close()


async def test_with_recovery_each_notification_crosses_the_link_once(
    start_recovering: StartRecovering, service: Service, amqp_broker: Broker, amqp_names: Names
) -> None:
    gw = await start_recovering()
    ws = await gw.gateway.connect("notifications", user="ann")
    dash = await gw.gateway.connect("dashboard", user="viewer")
    idents = [await service.publish("notification.user.ann", {"data": n}) for n in range(20)]
    frames = [await receive(ws) for _ in idents]
    assert [f["id"] for f in frames] == idents
    assert all(isinstance(f["offset"], int) for f in frames)
    update = await service.publish("dashboard.sales", {"data": 1})
    assert (await receive(dash))["id"] == update
    # 20 notifications from the stream and 1 update from the instance queue: nothing twice.
    assert gw.backbone.tapped == 21
    assert sample(gw, "events_total", kind="user") == 20
    bound = amqp_broker.bindings(gw.queue, amqp_names.events)
    assert not {key for key in bound if key.startswith("notification.")}
    assert "notification.user.ann" in gw.backbone.bindings  # still wanted, served by the stream


async def test_with_recovery_an_unusable_notification_is_dead_lettered_like_the_broker_does(
    start_recovering: StartRecovering, service: Service, amqp_names: Names
) -> None:
    a = await start_recovering()
    b = await start_recovering()
    ws = await a.gateway.connect("notifications", user="erin")
    await b.gateway.connect("notifications", user="someone-else")
    await service.publish("notification.user.erin", b"{not json", message_id="bad-1")
    good = await service.publish("notification.user.erin", {"data": "fine"})
    assert (await receive(ws))["id"] == good
    dead = await (await service.channel()).get_queue(amqp_names.dead)
    letter = await next_letter(dead)
    assert (letter.message_id, letter.body, letter.routing_key) == (
        "bad-1",
        b"{not json",
        "notification.user.erin",
    )
    headers = letter.headers
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-gateway-reason"] == "body"
    assert headers["x-death"][0]["reason"] == "rejected"  # type: ignore[index]
    assert "x-stream-offset" not in headers
    # Only instance A holds erin: B would not have bound her key, so B adds no copy.
    barrier = await service.publish("notification.broadcast", b"[1]", message_id="bad-2")
    copies = [await next_letter(dead) for _ in range(2)]  # A and B both bind the broadcast
    assert [c.message_id for c in copies] == [barrier, barrier]
    assert await dead.get(no_ack=True, fail=False) is None


async def next_letter(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    return await next_message(queue, within=10)
