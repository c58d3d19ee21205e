"""Recovery of missed notifications (contract §3) on the embedded backbone.

The same scenarios run against RabbitMQ in tests/integration/test_recovery_amqp.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from service.backbone.memory import MemoryBackbone
from service.errors import BackboneUnavailable
from service.model import Event
from tests.conftest import Gateway, GatewayFactory, mint, nothing_arrives, receive, request
from tests.integration.recovery_helpers import last_offset_seen, until_resumed


async def test_reconnect_with_since_gets_exactly_what_it_missed_then_resumed_then_live(
    gateway: Gateway,
) -> None:
    since = await last_offset_seen(gateway, "42")
    missed = [await gateway.publish("notification.user.42", {"n": n}) for n in (1, 2, 3)]
    await gateway.publish("notification.user.7", {"not": "yours"})

    ws = await gateway.connect("notifications", user="42", query={"since": str(since)})
    frames, resumed = await until_resumed(ws)

    assert [f["id"] for f in frames] == missed
    assert [f["data"] for f in frames] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [f["event"] for f in frames] == ["notification_new"] * 3
    offsets = [f["offset"] for f in frames]
    assert offsets == sorted(offsets)
    assert offsets[0] > since
    assert resumed == {"recovered": True, "replayed": 3}
    after = await gateway.publish("notification.user.42", {"n": 4})
    live = await receive(ws)
    assert (live["id"], live["data"]) == (after, {"n": 4})
    assert live["offset"] > offsets[-1]


async def test_resume_event_as_first_frame_replays_and_is_acked(gateway: Gateway) -> None:
    since = await last_offset_seen(gateway, "42")
    missed = [await gateway.publish("notification.user.42", {"n": n}) for n in (1, 2, 3)]
    broadcast = await gateway.publish("notification.broadcast", {"all": True})

    ws = await gateway.connect("notifications", user="42")
    await ws.send_json({"event": "resume", "data": {"since": since}, "ack": 9})
    frames, resumed = await until_resumed(ws)

    assert [f["id"] for f in frames] == [*missed, broadcast]
    assert resumed == {"recovered": True, "replayed": 4}
    assert await receive(ws) == {"event": "ack", "ack": 9, "data": resumed}


async def test_live_frames_before_the_resume_event_do_not_overtake_the_replay(
    gateway: Gateway,
) -> None:
    since = await last_offset_seen(gateway, "42")
    missed = await gateway.publish("notification.user.42", {"n": 1})
    ws = await gateway.connect("notifications", user="42")
    # Published after the upgrade but before the client's first frame: held, not sent.
    early = [await gateway.publish("notification.user.42", {"n": n}) for n in (2, 3)]
    await ws.send_json({"event": "resume", "data": {"since": since}})

    frames, resumed = await until_resumed(ws)
    assert [f["id"] for f in frames] == [missed, *early]
    assert resumed == {"recovered": True, "replayed": 3}
    # No second copy of the early ones after the switch: the next frame is the barrier.
    await gateway.publish("notification.broadcast", {"barrier": 1})
    assert (await receive(ws))["data"] == {"barrier": 1}


async def test_a_late_resume_event_is_still_answered(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway()
    gateway.node.recovery.resume_grace_s = 0.0
    since = await last_offset_seen(gateway, "42")
    ws = await gateway.connect("notifications", user="42")
    live = await gateway.publish("notification.user.42", {"n": 1})
    assert (await receive(ws))["id"] == live  # released: the client sent nothing
    answer = await request(ws, "resume", {"since": since})
    assert answer["data"] == {"recovered": True, "replayed": 1}


async def test_since_at_the_latest_offset_replays_nothing(gateway: Gateway) -> None:
    since = await last_offset_seen(gateway, "42")
    ws = await gateway.connect("notifications", user="42", query={"since": str(since)})
    assert await until_resumed(ws) == ([], {"recovered": True, "replayed": 0})


async def test_an_offset_older_than_the_window_is_not_recovered(
    start_gateway: GatewayFactory,
) -> None:
    now = [1000.0]
    backbone = MemoryBackbone(window_s=60, clock=lambda: now[0])
    gateway = await start_gateway(backbone=backbone)
    since = await last_offset_seen(gateway, "42")
    await gateway.publish("notification.user.42", {"n": 1})  # falls out of the window
    now[0] += 61
    await gateway.publish("notification.user.42", {"n": 2})

    ws = await gateway.connect("notifications", user="42", query={"since": str(since)})
    assert await until_resumed(ws) == ([], {"recovered": False, "replayed": 0})
    # Live traffic goes on after the answer.
    await gateway.publish("notification.user.42", {"n": 3})
    assert (await receive(ws))["data"] == {"n": 3}
    metrics = (await (await gateway.client.get("/metrics")).read()).decode()
    assert 'realtime_gateway_replays_total{recovered="false"} 1.0' in metrics


async def test_the_window_still_reaching_since_is_recovered(start_gateway: GatewayFactory) -> None:
    now = [1000.0]
    backbone = MemoryBackbone(window_s=60, clock=lambda: now[0])
    gateway = await start_gateway(backbone=backbone)
    await gateway.publish("notification.user.42", {"n": 0})  # expires; since is after it
    now[0] += 61
    since = await last_offset_seen(gateway, "42")
    await gateway.publish("notification.user.42", {"n": 1})

    ws = await gateway.connect("notifications", user="42", query={"since": str(since)})
    frames, resumed = await until_resumed(ws)
    assert [f["data"] for f in frames] == [{"n": 1}]
    assert resumed == {"recovered": True, "replayed": 1}


async def test_a_log_cut_by_its_size_bound_is_not_recovered(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(backbone=MemoryBackbone(history_max=2))
    since = await last_offset_seen(gateway, "42")
    for n in range(3):
        await gateway.publish("notification.user.42", {"n": n})
    ws = await gateway.connect("notifications", user="42", query={"since": str(since)})
    assert await until_resumed(ws) == ([], {"recovered": False, "replayed": 0})


async def test_an_offset_from_another_history_is_not_recovered(gateway: Gateway) -> None:
    # The embedded backbone restarts its offsets with the process: a larger one is foreign.
    ws = await gateway.connect("notifications", user="42", query={"since": "1000"})
    assert await until_resumed(ws) == ([], {"recovered": False, "replayed": 0})


async def test_a_replay_larger_than_its_budget_is_not_recovered(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(send_queue_bytes=4096)  # replay budget: half of it
    since = await last_offset_seen(gateway, "42")
    for n in range(20):
        await gateway.publish("notification.user.42", {"n": n, "pad": "x" * 200})
    ws = await gateway.connect("notifications", user="42", query={"since": str(since)})
    assert await until_resumed(ws) == ([], {"recovered": False, "replayed": 0})


class GatedBackbone(MemoryBackbone):
    """An embedded backbone whose replays wait for `gate` after reading, as a slow log would."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.replaying = asyncio.Event()

    async def replay(self, since: int, until: int, sink: Callable[[Event], None]) -> int:
        events: list[Event] = []
        floor = await super().replay(since, until, events.append)
        self.replaying.set()
        await self.gate.wait()
        for event in events:
            sink(event)
        return floor


async def test_notifications_published_during_the_replay_come_after_it_in_order(
    start_gateway: GatewayFactory,
) -> None:
    backbone = GatedBackbone()
    gateway = await start_gateway(backbone=backbone)
    since = await last_offset_seen(gateway, "42")
    missed = [await gateway.publish("notification.user.42", {"n": n}) for n in (1, 2, 3)]

    ws = await gateway.connect("notifications", user="42", query={"since": str(since)})
    await asyncio.wait_for(backbone.replaying.wait(), 5)
    during = [await gateway.publish("notification.user.42", {"n": n}) for n in (4, 5)]
    backbone.gate.set()

    frames, resumed = await until_resumed(ws)
    assert [f["id"] for f in frames] == missed
    assert resumed == {"recovered": True, "replayed": 3}
    live = [await receive(ws), await receive(ws)]
    assert [f["id"] for f in live] == during
    assert live[0]["offset"] > frames[-1]["offset"]
    await gateway.publish("notification.broadcast", {"barrier": 1})
    assert (await receive(ws))["data"] == {"barrier": 1}


async def test_no_gap_and_no_reordering_under_a_steady_stream(gateway: Gateway) -> None:
    """Clients resume while a publisher keeps going: each gets every offset of its user once."""
    published: list[tuple[str, str]] = []  # (user, id) in publish order
    stop = asyncio.Event()

    async def publisher() -> None:
        n = 0
        while not stop.is_set():
            user = ("a", "b")[n % 2]
            published.append((user, await gateway.publish(f"notification.user.{user}", {"n": n})))
            n += 1
            await asyncio.sleep(0.002)

    since = await last_offset_seen(gateway, "a")
    task = asyncio.create_task(publisher())
    try:
        clients = []
        for _ in range(5):
            await asyncio.sleep(0.02)
            ws = await gateway.connect("notifications", user="a", query={"since": str(since)})
            clients.append(ws)
        await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    barrier = await gateway.publish("notification.user.a", {"barrier": True})
    expected = [ident for user, ident in published if user == "a"] + [barrier]
    for ws in clients:
        ids: list[str] = []
        offsets: list[int] = []
        async with asyncio.timeout(10):
            while not ids or ids[-1] != barrier:
                frame = await receive(ws)
                if frame["event"] == "resumed":
                    assert frame["data"]["recovered"] is True
                    continue
                ids.append(frame["id"])
                offsets.append(frame["offset"])
        assert ids == expected
        assert offsets == sorted(set(offsets))


async def test_a_client_that_does_not_resume_gets_live_traffic(gateway: Gateway) -> None:
    quiet = await gateway.connect("notifications", user="42")
    talker = await gateway.connect("notifications", user="42")
    await gateway.publish("notification.user.42", {"n": 1})
    # The quiet one is released by the grace timer, the talker by its first frame.
    assert (await receive(quiet))["data"] == {"n": 1}
    await talker.send_json({"event": "notification_read", "data": {"id": "x"}, "ack": 1})
    assert (await receive(talker))["data"] == {"n": 1}


async def test_resume_is_allowed_once_and_validated(gateway: Gateway) -> None:
    since = await last_offset_seen(gateway, "42")
    ws = await gateway.connect("notifications", user="42", query={"since": str(since)})
    await until_resumed(ws)
    again = await request(ws, "resume", {"since": since})
    assert again["error"]["code"] == "bad_request"

    fresh = await gateway.connect("notifications", user="42")
    for data in (None, {}, {"since": -1}, {"since": "x"}, {"since": True}, {"since": 1.5}):
        answer = await request(fresh, "resume", data)
        assert answer["error"]["code"] == "bad_request", data
    answer = await request(fresh, "resume", {"since": since}, ack=2)
    assert answer == {"event": "ack", "ack": 2, "data": {"recovered": True, "replayed": 0}}


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", "", "99999999999999999999"])
async def test_a_bad_since_query_is_refused_before_the_upgrade(
    gateway: Gateway, since: str
) -> None:
    resp = await gateway.client.get(
        "/ws/notifications",
        params={"since": since},
        headers={
            "Authorization": f"Bearer {mint('42')}",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"


async def test_resume_is_a_notifications_event(gateway: Gateway) -> None:
    ws = await gateway.connect("dashboard", user="42", query={"since": "3"})
    answer = await request(ws, "resume", {"since": 1})
    assert answer["error"]["code"] == "unknown_event"


async def test_the_read_echo_is_replayed_to_a_reconnecting_device(gateway: Gateway) -> None:
    since = await last_offset_seen(gateway, "42")
    phone = await gateway.connect("notifications", user="42")
    await request(phone, "notification_read", {"id": "n-1"})
    laptop = await gateway.connect("notifications", user="42", query={"since": str(since)})
    frames, resumed = await until_resumed(laptop)
    assert [(f["event"], f["data"]) for f in frames] == [("notification_read", {"id": "n-1"})]
    assert resumed == {"recovered": True, "replayed": 1}
    assert await nothing_arrives(phone)


async def test_a_reconnect_storm_reads_the_log_a_few_times_not_once_per_client(
    gateway: Gateway,
) -> None:
    since = await last_offset_seen(gateway, "u0")
    for n in range(50):
        await gateway.publish(f"notification.user.u{n % 10}", {"n": n})
    clients = await asyncio.gather(
        *(
            gateway.connect("notifications", user=f"u{n % 10}", query={"since": str(since)})
            for n in range(60)
        )
    )
    results = await asyncio.gather(*(until_resumed(ws) for ws in clients))
    for frames, resumed in results:
        assert resumed == {"recovered": True, "replayed": 5}
        assert len(frames) == 5
    passes = gateway.node.recovery.passes
    assert 1 <= passes <= 10, passes
    metrics = (await (await gateway.client.get("/metrics")).read()).decode()
    assert 'realtime_gateway_replays_total{recovered="true"} 60.0' in metrics
    assert "realtime_gateway_replayed_messages_total 300.0" in metrics
    assert "realtime_gateway_replay_duration_seconds_count 60.0" in metrics
    assert f'realtime_gateway_history_reads_total{{result="ok"}} {passes}.0' in metrics


class ForgetfulBackbone(MemoryBackbone):
    """An embedded backbone that keeps no history (as RabbitMQ with a window of 0)."""

    @property
    def history(self) -> None:  # type: ignore[override]
        return None


async def test_without_a_history_resume_says_not_recovered_and_live_is_immediate(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(backbone=ForgetfulBackbone())
    ws = await gateway.connect("notifications", user="42", query={"since": "5"})
    assert await until_resumed(ws) == ([], {"recovered": False, "replayed": 0})
    gateway.node.recovery.resume_grace_s = 60.0  # would hold a minute, if it held at all
    quiet = await gateway.connect("notifications", user="42")
    await gateway.publish("notification.user.42", {"n": 1})
    assert (await receive(quiet, within=2))["data"] == {"n": 1}


class BrokenBackbone(MemoryBackbone):
    """An embedded backbone whose history cannot be read."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def replay(self, since: int, until: int, sink: Callable[[Event], None]) -> int:
        raise self.error


@pytest.mark.parametrize("error", [BackboneUnavailable("down"), RuntimeError("bug")])
async def test_a_history_that_cannot_be_read_answers_at_once_not_recovered(
    start_gateway: GatewayFactory, error: Exception
) -> None:
    backbone = BrokenBackbone(error)
    gateway = await start_gateway(backbone=backbone)
    since = await last_offset_seen(gateway, "42")
    await gateway.publish("notification.user.42", {"n": 1})
    ws = await gateway.connect("notifications", user="42", query={"since": str(since)})
    assert await until_resumed(ws) == ([], {"recovered": False, "replayed": 0})
    after = await gateway.publish("notification.user.42", {"n": 2})
    assert (await receive(ws))["id"] == after
    metrics = (await (await gateway.client.get("/metrics")).read()).decode()
    assert 'realtime_gateway_history_reads_total{result="failed"} 1.0' in metrics
