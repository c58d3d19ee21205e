"""Session delivery: the writer-task mode and the sink mode with its per-iteration Outbox."""

from __future__ import annotations

import asyncio

from service.errors import CloseCode
from service.model import Namespace, Principal
from service.session import Outbox, Session


def make(limit: int = 1000, outbox: Outbox | None = None) -> Session:
    return Session(
        principal=Principal(sub="u1"),
        namespace=Namespace.DASHBOARD,
        send_queue_bytes=limit,
        outbox=outbox,
    )


class FakeSink:
    """Records each write; reports `buffered` bytes still held downstream."""

    def __init__(self, buffered: int = 0) -> None:
        self.writes: list[list[bytes]] = []
        self.buffered = buffered
        self.wrote = asyncio.Event()

    def __call__(self, frames: list[bytes]) -> int:
        self.writes.append(list(frames))
        self.wrote.set()
        return self.buffered


async def test_pushes_of_one_iteration_reach_the_sink_in_one_call_in_order() -> None:
    outbox = Outbox()
    sink = FakeSink()
    session = make(outbox=outbox)
    session.attach_sink(sink)
    for i in range(5):
        assert session.push(b"frame-%d" % i)
    assert sink.writes == []  # nothing is written synchronously by a producer
    await asyncio.wait_for(sink.wrote.wait(), 1)
    assert sink.writes == [[b"frame-%d" % i for i in range(5)]]
    assert session.pending_bytes == 0
    assert outbox.flushed_frames == 5


async def test_one_flush_serves_every_dirty_session() -> None:
    outbox = Outbox()
    sinks = [FakeSink() for _ in range(3)]
    sessions = [make(outbox=outbox) for _ in sinks]
    for session, sink in zip(sessions, sinks, strict=True):
        session.attach_sink(sink)
        session.push(b"event")
    await asyncio.wait_for(sinks[-1].wrote.wait(), 1)
    assert [s.writes for s in sinks] == [[[b"event"]]] * 3


async def test_bytes_held_downstream_count_against_the_budget() -> None:
    outbox = Outbox()
    sink = FakeSink(buffered=900)
    closed: list[int | None] = []
    session = make(limit=1000, outbox=outbox)
    session.attach_sink(sink, on_close=lambda: closed.append(session.close_code))
    assert session.push(b"x" * 50)
    await asyncio.wait_for(sink.wrote.wait(), 1)
    assert session.pending_bytes == 900  # the transport still holds 900 bytes
    assert session.push(b"y" * 50)  # 900 + 50 fits
    assert not session.push(b"z" * 60)  # 900 + 50 + 60 does not: slow consumer
    assert session.close_code == CloseCode.SLOW_CONSUMER
    assert closed == [CloseCode.SLOW_CONSUMER]  # the transport is told exactly once
    await asyncio.sleep(0)
    assert sink.writes == [[b"x" * 50]]  # queued frames were dropped with the close


async def test_a_write_that_leaves_too_much_buffered_closes_with_4008() -> None:
    outbox = Outbox()
    sink = FakeSink(buffered=1001)
    session = make(limit=1000, outbox=outbox)
    session.attach_sink(sink)
    session.push(b"x")
    await asyncio.wait_for(sink.wrote.wait(), 1)
    assert session.close_code == CloseCode.SLOW_CONSUMER


async def test_frames_queued_before_the_sink_is_attached_are_flushed() -> None:
    outbox = Outbox()
    sink = FakeSink()
    session = make(outbox=outbox)
    session.push(b"early")  # e.g. a resume replay before the transport is ready
    session.attach_sink(sink)
    await asyncio.wait_for(sink.wrote.wait(), 1)
    assert sink.writes == [[b"early"]]


async def test_a_closed_session_writes_nothing_more() -> None:
    outbox = Outbox()
    sink = FakeSink()
    session = make(outbox=outbox)
    session.attach_sink(sink)
    session.push(b"a")
    session.close(CloseCode.GOING_AWAY, "draining")
    assert not session.push(b"b")
    outbox.flush()
    assert sink.writes == []


async def test_writer_task_mode_still_batches() -> None:
    session = make()
    session.push(b"a")
    session.push(b"b")
    assert await asyncio.wait_for(session.next_batch(), 1) == [b"a", b"b"]
    waiter = asyncio.ensure_future(session.next_batch())
    await asyncio.sleep(0)
    session.push(b"c")
    assert await asyncio.wait_for(waiter, 1) == [b"c"]
    session.close(CloseCode.NORMAL, "bye")
    assert await asyncio.wait_for(session.next_batch(), 1) is None
    await asyncio.wait_for(session.wait_closed(), 1)


async def test_overflow_in_writer_task_mode() -> None:
    session = make(limit=10)
    assert session.push(b"x" * 10)
    assert not session.push(b"y")
    assert session.close_code == CloseCode.SLOW_CONSUMER


async def test_a_sink_that_fails_closes_its_session_and_spares_the_others() -> None:
    outbox = Outbox()

    def broken(frames: list[bytes]) -> int:
        raise OSError("gone")

    bad, good = make(outbox=outbox), make(outbox=outbox)
    sink = FakeSink()
    bad.attach_sink(broken)
    good.attach_sink(sink)
    bad.push(b"a")
    good.push(b"b")
    await asyncio.wait_for(sink.wrote.wait(), 1)
    assert bad.close_code == CloseCode.INTERNAL
    assert sink.writes == [[b"b"]]
    assert good.push(b"c")  # the outbox still works afterwards
    sink.wrote.clear()
    await asyncio.wait_for(sink.wrote.wait(), 1)
    assert sink.writes[-1] == [b"c"]


async def test_a_session_closed_before_the_sink_came_is_closed_at_once() -> None:
    closed: list[int | None] = []
    session = make(outbox=Outbox())
    session.close(CloseCode.GOING_AWAY, "server draining")
    session.attach_sink(FakeSink(), on_close=lambda: closed.append(session.close_code))
    assert closed == [CloseCode.GOING_AWAY]  # the transport still sends the close frame
