"""Conflation on native WebSockets (contract §3, GATEWAY_CONFLATE): a client that stops
reading while updates keep coming gets, once it reads again, the newest value of every topic,
never an older value after a newer one, and its acks in order; a client that keeps up gets
every update."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp

from service.session import Session
from tests.conftest import Gateway, GatewayFactory, receive

TOPICS = [f"t{i}" for i in range(20)]
PAD = "x" * 2000
RECEIVE_S = 10.0


def session_of(gateway: Gateway, user: str) -> Session:
    return next(s for s in gateway.node.hub.sessions() if s.user_id == user)


class Reader:
    """Reads one client's frames and checks them: per topic, `seq` only grows."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.last: dict[str, int] = {}
        self.last_id: dict[str, str] = {}
        self.updates = 0
        self.acks: list[int] = []

    def take(self, frame: dict[str, Any]) -> None:
        if frame["event"] == "ack":
            self.acks.append(frame["ack"])
            return
        assert frame["event"] == "dashboard_update", frame
        topic, seq = frame["topic"], frame["data"]["seq"]
        assert seq > self.last.get(topic, -1), f"{topic}: {seq} after {self.last[topic]}"
        self.last[topic] = seq
        self.last_id[topic] = frame["id"]
        self.updates += 1

    async def until(self, last: dict[str, int], acks: int = 0) -> None:
        """Read until every topic reached `last` and `acks` acks arrived."""
        async with asyncio.timeout(RECEIVE_S):
            while self.last != last or len(self.acks) < acks:
                self.take(await receive(self.ws, RECEIVE_S))


async def publish(gateway: Gateway, n: int, published: dict[str, int], ids: dict[str, str]) -> None:
    topic = TOPICS[n % len(TOPICS)]
    ids[topic] = await gateway.node.publish(f"dashboard.{topic}", {"seq": n, "pad": PAD})
    published[topic] = n


async def test_a_slow_reader_gets_the_newest_value_of_each_topic_and_a_fast_one_everything(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(send_queue_bytes=256 * 1024)
    slow_ws = await gateway.connect("dashboard", user="slow")
    fast = Reader(await gateway.connect("dashboard", user="fast"))
    slow_session = session_of(gateway, "slow")
    published: dict[str, int] = {}
    ids: dict[str, str] = {}
    acks = 0
    n = 0
    # The slow client reads nothing: the kernel's buffers fill, then the transport's, then
    # updates wait (and conflate) in its session. It still sends requests, which the
    # gateway reads and answers into the same buffer.
    while gateway.node.outbox.conflated_frames < 1000:
        assert n < 30_000, "the slow client's buffer never conflated"
        await publish(gateway, n, published, ids)
        n += 1
        if n % 500 == 0:
            acks += 1
            await slow_ws.send_json({"event": "subscribe", "data": {"topics": ["*"]}, "ack": acks})
        # The fast client keeps up: each update is read before the next one goes out.
        await fast.until(published)
    assert slow_session.close_code is None
    assert fast.updates == n  # every update, none replaced

    slow = Reader(slow_ws)
    await slow.until(published, acks)
    assert slow.acks == list(range(1, acks + 1))
    assert slow.updates < n  # conflated: it never saw the stale backlog
    assert slow.last_id == ids  # the frame kept is the newest one, with that one's id
    metrics = await (await gateway.client.get("/metrics")).text()
    conflated = [
        line
        for line in metrics.splitlines()
        if line.startswith('realtime_gateway_frames_conflated_total{transport="ws"}')
    ]
    assert conflated
    assert float(conflated[0].split()[-1]) == gateway.node.outbox.conflated_frames


async def test_with_conflation_off_a_slow_reader_gets_every_update(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(send_queue_bytes=64 * 1024 * 1024, conflate=False)
    slow_ws = await gateway.connect("dashboard", user="slow")
    published: dict[str, int] = {}
    ids: dict[str, str] = {}
    count = 4000  # ~8 MB: more than the kernel buffers take
    for n in range(count):
        await publish(gateway, n, published, ids)
    slow = Reader(slow_ws)
    await slow.until(published)
    assert slow.updates == count
    assert gateway.node.outbox.conflated_frames == 0


async def test_other_events_on_a_topic_are_not_conflated(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway(send_queue_bytes=64 * 1024)
    ws = await gateway.connect("dashboard", user="slow")
    session = session_of(gateway, "slow")
    session._blocked = True  # as if the transport were paused (see the unit tests)
    for n in range(3):
        await gateway.node.publish("dashboard.t0", {"seq": n}, event="alert")
    session._blocked = False
    session._drained()
    names = [(await receive(ws))["data"]["seq"] for _ in range(3)]
    assert names == [0, 1, 2]
    assert gateway.node.outbox.conflated_frames == 0


async def test_the_conflated_buffer_still_closes_with_4008_when_it_overflows(
    start_gateway: GatewayFactory,
) -> None:
    # More topics than the budget can hold one frame each: conflation cannot save it.
    gateway = await start_gateway(send_queue_bytes=64 * 1024)
    slow_ws = await gateway.connect("dashboard", user="slow")
    session = session_of(gateway, "slow")
    pad = "x" * 4000
    n = 0
    while session.close_code is None:
        assert n < 20_000, "never closed"
        await gateway.node.publish(f"dashboard.many{n % 200}", {"seq": n, "pad": pad})
        n += 1
        await asyncio.sleep(0)
    assert session.close_code == 4008
    async with asyncio.timeout(RECEIVE_S):
        while (await slow_ws.receive()).type is aiohttp.WSMsgType.TEXT:
            pass
    assert slow_ws.close_code == 4008


async def test_a_conflating_socket_keeps_little_below_the_session(
    start_gateway: GatewayFactory,
) -> None:
    budget = 256 * 1024
    gateway = await start_gateway(send_queue_bytes=budget)
    await gateway.connect("dashboard", user="d")
    await gateway.connect("notifications", user="n")
    share = 16 * 1024  # TRANSPORT_WATER, below a quarter of the budget

    def transport_of(user: str) -> Any:
        return session_of(gateway, user)._sink._transport  # type: ignore[union-attr]

    dashboard, notifications = transport_of("d"), transport_of("n")
    assert dashboard.get_write_buffer_limits()[1] == share
    sndbuf = dashboard.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert sndbuf == 2 * share  # Linux reports twice what was set
    # Notifications never conflate: their transport keeps asyncio's defaults.
    assert notifications.get_write_buffer_limits()[1] == 64 * 1024


async def fill_until_blocked(gateway: Gateway, session: Session) -> int:
    """Publish 2 KB updates over TOPICS until the session keeps frames back (conflates)."""
    n = 0
    while not session._blocked:
        assert n < 30_000, "never blocked"
        await gateway.node.publish(f"dashboard.{TOPICS[n % len(TOPICS)]}", {"seq": n, "pad": PAD})
        n += 1
        await asyncio.sleep(0)
    return n


async def test_a_drain_counts_as_a_pong_for_the_heartbeat(
    start_gateway: GatewayFactory,
) -> None:
    # A slow reader's pings wait behind what is buffered for it, possibly past the pong
    # deadline (heartbeat / 2); each time its transport drains, it took bytes, which proves
    # it alive. Here the client never answers pings; the drains are simulated by calling the
    # hook the transport's flow control calls (aiohttp's private heartbeat reset: this test
    # fails if a new aiohttp changes it).
    gateway = await start_gateway(heartbeat_s=0.4)
    await gateway.connect("dashboard", user="slow")
    session = session_of(gateway, "slow")
    alive = session._flow._alive  # type: ignore[union-attr]
    assert alive is not None
    loop = asyncio.get_running_loop()
    end = loop.time() + 2.0  # five heartbeats
    while loop.time() < end:
        alive()
        await asyncio.sleep(0.1)
    assert session.close_code is None
    # Without drains (nor pongs) the heartbeat closes it.
    await asyncio.wait_for(session.wait_closed(), 3)
    assert session.close_code != 4008


async def test_a_client_that_stopped_reading_is_closed_by_the_heartbeat(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(heartbeat_s=0.5)
    await gateway.connect("dashboard", user="gone")
    session = session_of(gateway, "gone")
    await fill_until_blocked(gateway, session)
    await asyncio.wait_for(session.wait_closed(), 5)
    assert session.close_code != 4008  # the pong deadline, not the buffer
