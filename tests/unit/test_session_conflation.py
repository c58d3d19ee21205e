"""Conflation in the session's outbound buffer (contract §3, GATEWAY_CONFLATE)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from aiohttp.base_protocol import BaseProtocol

from service.errors import CloseCode
from service.model import Namespace, Principal
from service.session import TRANSPORT_SHARE, TRANSPORT_WATER, Outbox, Session
from service.transports.wire import TransportFlow


class FakeFlow:
    """A transport's flow control driven by the test."""

    def __init__(self) -> None:
        self.is_paused = False
        self.waiters: list[Callable[[], None]] = []
        self.capped: int | None = None

    def paused(self) -> bool:
        return self.is_paused

    def when_drained(self, callback: Callable[[], None]) -> None:
        self.waiters.append(callback)

    def cap(self, high_water: int) -> None:
        self.capped = high_water

    def resume(self) -> None:
        self.is_paused = False
        waiters, self.waiters = self.waiters, []
        for callback in waiters:
            callback()


class Sink:
    def __init__(self, flow: FakeFlow, pause_after_write: bool = False) -> None:
        self.flow = flow
        self.pause_after_write = pause_after_write
        self.frames: list[bytes] = []
        self.writes = 0

    def __call__(self, frames: list[bytes]) -> int:
        self.frames.extend(frames)
        self.writes += 1
        if self.pause_after_write:
            self.flow.is_paused = True
        return 0


def make(*, conflate: bool = True, limit: int = 10_000) -> tuple[Session, Outbox, FakeFlow, Sink]:
    outbox = Outbox()
    session = Session(
        principal=Principal(sub=None),
        namespace=Namespace.DASHBOARD,
        send_queue_bytes=limit,
        outbox=outbox,
        conflate=conflate,
    )
    flow = FakeFlow()
    sink = Sink(flow)
    session.attach_sink(sink, flow=flow)
    return session, outbox, flow, sink


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_reader_that_keeps_up_gets_every_frame_even_several_per_iteration() -> None:
    session, outbox, _flow, sink = make()
    for i in range(3):
        assert session.push(b"sales-%d" % i, "sales")
    await settle()
    assert sink.frames == [b"sales-0", b"sales-1", b"sales-2"]
    assert outbox.conflated_frames == 0


async def test_while_paused_a_newer_frame_replaces_the_waiting_one_in_place() -> None:
    session, outbox, flow, sink = make()
    flow.is_paused = True
    session.push(b"sales-0", "sales")
    await settle()
    assert sink.frames == []  # the transport is paused: the frame waits in the session
    session.push(b"ack-1")
    session.push(b"ops-0", "ops")
    session.push(b"sales-1", "sales")
    session.push(b"notify")  # no key: never replaced, never replaces
    session.push(b"ops-1", "ops")
    session.push(b"sales-2", "sales")
    assert outbox.conflated_frames == 2
    waiting = (b"sales-0", b"ack-1", b"ops-1", b"sales-2", b"notify")
    assert session.pending_bytes == sum(len(f) for f in waiting)
    flow.resume()
    await settle()
    # The first sales frame waited before the session knew it was blocked, so it stays;
    # every later one replaced its predecessor where that one stood.
    assert sink.frames == [b"sales-0", b"ack-1", b"ops-1", b"sales-2", b"notify"]
    assert sink.writes == 1


async def test_a_write_that_pauses_the_transport_starts_conflation() -> None:
    session, outbox, flow, sink = make()
    sink.pause_after_write = True
    session.push(b"a-0", "a")
    await settle()
    assert sink.frames == [b"a-0"]
    assert flow.waiters
    for i in range(1, 50):
        session.push(b"a-%d" % i, "a")
        session.push(b"b-%d" % i, "b")
    await settle()
    assert sink.writes == 1
    sink.pause_after_write = False
    flow.resume()
    await settle()
    assert sink.frames == [b"a-0", b"a-49", b"b-49"]
    assert outbox.conflated_frames == 96


@pytest.mark.parametrize("seed", range(8))
async def test_never_an_older_value_after_a_newer_and_always_the_last(seed: int) -> None:
    rng = random.Random(seed)
    session, _outbox, flow, sink = make(limit=1 << 20)
    topics = [f"t{i}" for i in range(5)]
    seq = dict.fromkeys(topics, 0)
    for _ in range(400):
        action = rng.random()
        if action < 0.7:
            topic = rng.choice(topics)
            seq[topic] += 1
            assert session.push(f"{topic}:{seq[topic]}".encode(), topic)
        elif action < 0.8:
            flow.is_paused = True
        elif action < 0.9:
            flow.resume()
        else:
            await asyncio.sleep(0)
        sink.pause_after_write = rng.random() < 0.2
    sink.pause_after_write = False
    flow.resume()
    await settle()
    last: dict[str, int] = {}
    for frame in sink.frames:
        topic, n = frame.decode().split(":")
        assert int(n) > last.get(topic, 0), (topic, n, last)
        last[topic] = int(n)
    assert last == {t: n for t, n in seq.items() if n}


async def test_off_writes_every_frame_at_once_and_ignores_the_flow() -> None:
    session, outbox, flow, sink = make(conflate=False)
    flow.is_paused = True
    for i in range(3):
        session.push(b"s-%d" % i, "s")
    await settle()
    assert sink.frames == [b"s-0", b"s-1", b"s-2"]
    assert outbox.conflated_frames == 0
    assert flow.capped is None


async def test_the_transport_gets_a_share_of_the_budget() -> None:
    _session, _outbox, flow, _sink = make(limit=8000)
    assert flow.capped == 8000 // TRANSPORT_SHARE
    _session, _outbox, flow, _sink = make(limit=1 << 20)
    assert flow.capped == TRANSPORT_WATER


async def test_the_conflated_buffer_still_overflows_with_4008() -> None:
    session, _outbox, flow, sink = make(limit=1000)
    flow.is_paused = True
    assert session.push(b"0" * 300, "0")
    await settle()  # the flush finds the transport paused: the session is blocked
    assert session.push(b"x" * 300, "a")
    assert session.push(b"y" * 300, "a")  # replaces: still 300 bytes waiting
    assert session.push(b"x" * 300, "b")
    assert session.pending_bytes == 900
    assert session.push(b"z" * 100, "b")  # smaller replacement: 700 bytes waiting
    assert session.push(b"x" * 300, "c")
    assert not session.push(b"x" * 1, "d")  # a fifth topic does not fit
    assert session.close_code == CloseCode.SLOW_CONSUMER
    flow.resume()
    await settle()
    assert sink.frames == []


async def test_a_larger_replacement_that_does_not_fit_closes_with_4008() -> None:
    session, _outbox, flow, _sink = make(limit=1000)
    flow.is_paused = True
    session.push(b"")
    await settle()
    assert session.push(b"x" * 10, "a")
    assert session.push(b"x" * 600, "b")
    assert not session.push(b"x" * 500, "a")
    assert session.close_code == CloseCode.SLOW_CONSUMER


async def test_a_writer_task_session_conflates_only_while_its_writer_is_busy() -> None:
    outbox = Outbox()
    session = Session(
        principal=Principal(sub=None),
        namespace=Namespace.DASHBOARD,
        send_queue_bytes=10_000,
        outbox=outbox,
        conflate=True,
    )
    for i in range(3):  # nobody took anything yet: the writer is not busy
        session.push(b"a-%d" % i, "a")
    assert await session.next_batch() == [b"a-0", b"a-1", b"a-2"]
    for i in range(3, 6):  # the writer is busy with its batch: these conflate
        session.push(b"a-%d" % i, "a")
        session.push(b"ack-%d" % i)
    assert await session.next_batch() == [b"a-5", b"ack-3", b"ack-4", b"ack-5"]
    waiting = asyncio.create_task(session.next_batch())
    await settle()  # the writer waits for frames: the next ones all go out
    session.push(b"a-6", "a")
    session.push(b"a-7", "a")
    assert await asyncio.wait_for(waiting, 1) == [b"a-6", b"a-7"]
    assert outbox.conflated_frames == 2


async def test_outbox_reports_conflated_frames_once_per_iteration() -> None:
    reports: list[tuple[str, int]] = []
    outbox = Outbox(on_conflated=lambda transport, n: reports.append((transport, n)))
    for _ in range(3):
        outbox.note_conflated("ws")
    outbox.note_conflated("socketio")
    assert reports == []
    await settle()
    assert sorted(reports) == [("socketio", 1), ("ws", 3)]
    assert outbox.conflated_frames == 4


# -- TransportFlow against aiohttp's protocol ---------------------------------------------


class FakeTransport:
    def __init__(self, protocol: BaseProtocol) -> None:
        self.protocol = protocol
        self.closing = False
        self.limits = (16384, 65536)

    def get_protocol(self) -> BaseProtocol:
        return self.protocol

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.limits

    def set_write_buffer_limits(self, high: int) -> None:
        self.limits = (high // 4, high)

    def get_extra_info(self, name: str) -> object:
        return None


async def test_transport_flow_follows_aiohttp_pause_and_resume() -> None:
    protocol = BaseProtocol(asyncio.get_running_loop())
    alive: list[bool] = []
    flow = TransportFlow(FakeTransport(protocol), alive=lambda: alive.append(True))
    assert not flow.paused()
    protocol.pause_writing()
    assert flow.paused()
    drained = asyncio.Event()
    flow.when_drained(drained.set)
    await settle()
    assert not drained.is_set()
    protocol.resume_writing()
    await asyncio.wait_for(drained.wait(), 1)
    assert alive == [True]  # the peer took bytes: as good as a pong


async def test_transport_flow_shares_the_waiter_with_aiohttp_drain() -> None:
    protocol = BaseProtocol(asyncio.get_running_loop())
    protocol.transport = FakeTransport(protocol)  # type: ignore[assignment]
    flow = TransportFlow(protocol.transport, alive=lambda: calls.append("alive"))
    protocol.pause_writing()
    calls: list[str] = []
    drain = asyncio.create_task(protocol._drain_helper())
    await settle()
    flow.when_drained(lambda: calls.append("drained"))
    drain.cancel()  # aiohttp's own drain gave up: the session is told, and can re-check
    await settle()
    assert calls == ["drained"]
    assert flow.paused()
    flow.when_drained(lambda: calls.append("again"))  # a fresh waiter replaces the done one
    protocol.connection_lost(ConnectionResetError())
    await settle()
    assert calls == ["drained", "again"]


async def test_transport_flow_is_immediate_when_not_paused_and_caps_only_downwards() -> None:
    transport = FakeTransport(BaseProtocol(asyncio.get_running_loop()))
    flow = TransportFlow(transport)
    drained = asyncio.Event()
    flow.when_drained(drained.set)
    await asyncio.wait_for(drained.wait(), 1)
    flow.cap(1 << 20)
    assert transport.limits == (16384, 65536)
    flow.cap(8192)
    assert transport.limits == (2048, 8192)
