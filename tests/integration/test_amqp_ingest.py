"""The AMQP consumer's fast path: batched acks keep the prefetch window moving, in order."""

from __future__ import annotations

import pytest

from service.model import Event
from tests.broker import Broker, Names, Service, make_backbone, next_message, until

pytestmark = pytest.mark.amqp

PREFETCH = 10
BURST = 300


async def test_a_burst_far_beyond_the_prefetch_is_delivered_in_order_and_acked(
    amqp_broker: Broker, amqp_names: Names, service: Service
) -> None:
    # With a prefetch of 10 the broker stops after 10 unacked deliveries: getting all 300
    # proves the batched `multiple` acks are sent; the bad message in the middle proves a
    # reject is sent in its place in the order (an ack covering it first would make the
    # broker close the channel on the reject, and the rest would never arrive).
    received: list[Event] = []
    backbone = make_backbone(amqp_broker.url, amqp_names, prefetch=PREFETCH)
    await backbone.start(received.append)
    try:
        await backbone.bind(["notification.user.#"])
        dead = await (await service.channel()).get_queue(amqp_names.dead, ensure=False)
        for i in range(BURST):
            if i == BURST // 2:
                await service.publish("notification.user.u1", b"not json")
            await service.publish("notification.user.u1", {"data": i}, message_id=f"m{i}")
        await until(lambda: len(received) >= BURST, within=10, what="the whole burst")
        assert [e.data for e in received] == list(range(BURST))
        assert (await next_message(dead)).body == b"not json"
        assert backbone.ready
    finally:
        await backbone.close()
