"""Recovery of missed notifications (contract §3) on RabbitMQ: the notification stream.

Two or more gateway instances share this test's exchanges and a stream of its own; services are
played by a plain aio-pika client. The embedded-backbone versions of the same scenarios are in
tests/integration/test_recovery.py.
"""

from __future__ import annotations

import asyncio

import pytest

from service.backbone.stream import StreamHistory
from service.transports.context import GATEWAY
from tests.broker import (
    AmqpGateway,
    Broker,
    Names,
    Service,
    StartRecovering,
    TcpProxy,
    next_message,
    until,
)
from tests.conftest import receive
from tests.integration.recovery_helpers import until_resumed

pytestmark = pytest.mark.amqp

RECOVERY_S = 30.0


def history(gw: AmqpGateway) -> StreamHistory:
    assert gw.backbone.history is not None
    return gw.backbone.history


async def offset_seen(gw: AmqpGateway, service: Service, user: str) -> int:
    """Connect to `gw`, get one notification, disconnect: the offset the client keeps."""
    ws = await gw.gateway.connect("notifications", user=user)
    ident = await service.publish(f"notification.user.{user}", {"data": {"n": 0}})
    frame = await receive(ws)
    assert frame["id"] == ident
    await ws.close()
    return int(frame["offset"])


async def test_every_replica_sees_the_same_offset(
    start_recovering: StartRecovering, service: Service
) -> None:
    a = await start_recovering()
    b = await start_recovering()
    on_a = await a.gateway.connect("notifications", user="42")
    on_b = await b.gateway.connect("notifications", user="42")
    ident = await service.publish("notification.user.42", {"data": "x"})
    read_echo = await receive(on_a), await receive(on_b)
    assert [f["id"] for f in read_echo] == [ident, ident]
    assert read_echo[0]["offset"] == read_echo[1]["offset"]
    assert isinstance(read_echo[0]["offset"], int)


async def test_missed_three_are_replayed_by_another_replica_then_live(
    start_recovering: StartRecovering, service: Service
) -> None:
    a = await start_recovering()
    b = await start_recovering()
    since = await offset_seen(a, service, "42")
    missed = [await service.publish("notification.user.42", {"data": {"n": n}}) for n in (1, 2, 3)]
    await service.publish("notification.user.7", {"data": "not yours"})
    await asyncio.wait_for(history(b).wait_offset(since, 5), 6)

    ws = await b.gateway.connect("notifications", user="42", query={"since": str(since)})
    frames, resumed = await until_resumed(ws)

    assert [f["id"] for f in frames] == missed
    assert [f["data"] for f in frames] == [{"n": 1}, {"n": 2}, {"n": 3}]
    offsets = [f["offset"] for f in frames]
    assert offsets == sorted(offsets)
    assert offsets[0] > since
    assert resumed == {"recovered": True, "replayed": 3}
    after = await service.publish("notification.user.42", {"data": {"n": 4}})
    live = await receive(ws)
    assert live["id"] == after
    assert live["offset"] > offsets[-1]


async def test_resume_event_on_a_fresh_replica_reads_the_stream_once(
    start_recovering: StartRecovering, service: Service
) -> None:
    a = await start_recovering()
    since = await offset_seen(a, service, "42")
    missed = [await service.publish("notification.user.42", {"data": n}) for n in range(3)]
    # Started after all of it: its memory holds none of it, the stream does.
    c = await start_recovering()
    ws = await c.gateway.connect("notifications", user="42")
    await ws.send_json({"event": "resume", "data": {"since": since}})
    frames, resumed = await until_resumed(ws)
    assert [f["id"] for f in frames] == missed
    assert resumed == {"recovered": True, "replayed": 3}
    assert history(c).readers == 1
    again = await c.gateway.connect("notifications", user="42", query={"since": str(since)})
    frames, resumed = await until_resumed(again)
    assert [f["id"] for f in frames] == missed
    assert history(c).readers == 1  # the second one came from memory


async def test_an_offset_the_stream_no_longer_holds_is_not_recovered(
    start_recovering: StartRecovering, service: Service
) -> None:
    # A stream that keeps about 2 kB in 500-byte segments, and instances that remember only
    # the last 5 entries: what the client saw is gone from both.
    small = {"segment_bytes": 500, "max_bytes": 2000, "recent_entries": 5}
    a = await start_recovering(stream_options=small)
    since = await offset_seen(a, service, "42")
    for n in range(30):
        await service.publish("notification.user.42", {"data": "x" * 200, "n": n})
    b = await start_recovering(stream_options=small)
    ws = await b.gateway.connect("notifications", user="42", query={"since": str(since)})
    assert await until_resumed(ws) == ([], {"recovered": False, "replayed": 0})
    after = await service.publish("notification.user.42", {"data": "live"})
    assert (await receive(ws))["id"] == after


async def test_no_gap_and_no_reordering_while_a_service_keeps_publishing(
    start_recovering: StartRecovering, service: Service
) -> None:
    a = await start_recovering()
    b = await start_recovering()
    since = await offset_seen(a, service, "a")
    published: list[tuple[str, str]] = []
    stop = asyncio.Event()

    async def publisher() -> None:
        n = 0
        while not stop.is_set():
            user = ("a", "b")[n % 2]
            ident = await service.publish(f"notification.user.{user}", {"data": n})
            published.append((user, ident))
            n += 1

    task = asyncio.create_task(publisher())
    try:
        clients = []
        for gw in (b, a, b, a):
            await asyncio.sleep(0.03)
            ws = await gw.gateway.connect("notifications", user="a", query={"since": str(since)})
            clients.append(ws)
        await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    barrier = await service.publish("notification.user.a", {"data": "barrier"})
    expected = [ident for user, ident in published if user == "a"] + [barrier]
    for ws in clients:
        ids: list[str] = []
        offsets: list[int] = []
        async with asyncio.timeout(RECOVERY_S):
            while not ids or ids[-1] != barrier:
                frame = await receive(ws)
                if frame["event"] == "resumed":
                    assert frame["data"]["recovered"] is True
                    continue
                ids.append(frame["id"])
                offsets.append(frame["offset"])
        assert ids == expected
        assert offsets == sorted(set(offsets))


async def test_a_reconnect_storm_opens_one_stream_reader(
    start_recovering: StartRecovering, service: Service
) -> None:
    a = await start_recovering()
    since = await offset_seen(a, service, "u0")
    for n in range(40):
        await service.publish(f"notification.user.u{n % 8}", {"data": n})
    c = await start_recovering()  # after a restart: nothing of it in memory
    clients = await asyncio.gather(
        *(
            c.gateway.connect("notifications", user=f"u{n % 8}", query={"since": str(since)})
            for n in range(64)
        )
    )
    results = await asyncio.gather(*(until_resumed(ws) for ws in clients))
    assert all(resumed == {"recovered": True, "replayed": 5} for _, resumed in results)
    assert 1 <= history(c).readers <= 2
    metrics = c.gateway.app[GATEWAY].metrics.registry
    assert metrics.get_sample_value("realtime_gateway_stream_readers_total") == history(c).readers


async def test_a_broker_outage_loses_no_notification(
    start_recovering: StartRecovering,
    service: Service,
    broker_proxy: TcpProxy,
    amqp_broker: Broker,
) -> None:
    gw = await start_recovering(
        url=broker_proxy.url(amqp_broker.url),
        backbone_options={"backoff_initial_s": 0.05, "backoff_max_s": 0.2},
    )
    ws = await gw.gateway.connect("notifications", user="dave")
    first = await service.publish("notification.user.dave", {"data": 0})
    assert (await receive(ws))["id"] == first
    await broker_proxy.cut()
    await until(lambda: not gw.backbone.ready, 5, "the gateway to see the cut")
    during = [await service.publish("notification.user.dave", {"data": n}) for n in (1, 2)]
    await broker_proxy.restore()
    await gw.backbone.wait_ready(RECOVERY_S)
    frames = [await receive(ws, within=RECOVERY_S) for _ in during]
    assert [f["id"] for f in frames] == during  # from the stream, in order, none lost


async def test_unusable_notifications_are_still_dead_lettered(
    start_recovering: StartRecovering, service: Service, amqp_names: Names
) -> None:
    gw = await start_recovering()
    ws = await gw.gateway.connect("notifications", user="erin")
    await service.publish("notification.user.erin", b"{not json", message_id="bad-1")
    good = await service.publish("notification.user.erin", {"data": "fine"})
    frame = await receive(ws)
    assert frame["id"] == good
    dead = await (await service.channel()).get_queue(amqp_names.dead)
    assert (await next_message(dead)).message_id == "bad-1"
