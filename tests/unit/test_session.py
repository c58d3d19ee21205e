"""service.session: the byte-bounded outbound buffer, close semantics and next_batch()."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import CloseCode
from service.model import Namespace, Principal
from service.session import Session

WAIT_S = 2.0


def make_session(limit: int = 100, sub: str | None = "42") -> Session:
    return Session(
        principal=Principal(sub=sub),
        namespace=Namespace.NOTIFICATIONS,
        send_queue_bytes=limit,
    )


def test_identity_and_defaults() -> None:
    one, two = make_session(), make_session()
    assert one.id != two.id
    assert len(one.id) == 32
    assert one.user_id == "42"
    assert make_session(sub=None).user_id is None
    assert one.transport == "ws"
    assert not one.closed
    assert one.close_code is None
    assert one.pending_bytes == 0
    assert (one.explicit, one.sub_all, one.topics) == (False, False, set())
    assert "42" in repr(one)


def test_explicit_session_id() -> None:
    session = Session(
        principal=Principal(sub="1"),
        namespace=Namespace.DASHBOARD,
        send_queue_bytes=10,
        transport="socketio",
        session_id="sid-1",
    )
    assert session.id == "sid-1"
    assert session.transport == "socketio"


def test_push_counts_bytes() -> None:
    session = make_session(limit=10)
    assert session.push(b"abc")
    assert session.push(b"defg")
    assert session.pending_bytes == 7


def test_buffer_may_fill_exactly_to_the_limit() -> None:
    session = make_session(limit=10)
    assert session.push(b"12345")
    assert session.push(b"67890")
    assert not session.closed
    assert session.pending_bytes == 10


def test_overflow_closes_with_4008_and_drops_the_frames() -> None:
    session = make_session(limit=10)
    assert session.push(b"12345")
    assert session.push(b"67890")
    assert not session.push(b"x")
    assert session.closed
    assert session.close_code == CloseCode.SLOW_CONSUMER == 4008
    assert "slow consumer" in session.close_reason
    assert session.pending_bytes == 0


def test_a_single_frame_larger_than_the_buffer_overflows() -> None:
    session = make_session(limit=4)
    assert not session.push(b"12345")
    assert session.close_code == CloseCode.SLOW_CONSUMER


def test_push_after_close_is_refused_and_queues_nothing() -> None:
    session = make_session()
    session.close(CloseCode.NORMAL, "bye")
    assert not session.push(b"late")
    assert session.pending_bytes == 0
    assert session.close_code == CloseCode.NORMAL


def test_first_close_wins() -> None:
    session = make_session()
    session.close(CloseCode.GOING_AWAY, "server draining")
    session.close(CloseCode.SLOW_CONSUMER, "slow")
    session.close(CloseCode.NORMAL, "client closed")
    assert session.close_code == CloseCode.GOING_AWAY
    assert session.close_reason == "server draining"


def test_overflow_after_another_close_keeps_the_first_code() -> None:
    session = make_session(limit=1)
    session.close(CloseCode.TOKEN_EXPIRED, "token expired")
    assert not session.push(b"too big")
    assert session.close_code == CloseCode.TOKEN_EXPIRED


def test_other_sessions_are_unaffected_by_one_overflow() -> None:
    slow, fast = make_session(limit=8), make_session(limit=1000)
    frames = [b"frame-%d" % index for index in range(10)]
    results = [(slow.push(frame), fast.push(frame)) for frame in frames]
    assert [fast_ok for _, fast_ok in results] == [True] * 10
    assert [slow_ok for slow_ok, _ in results] == [True] + [False] * 9
    assert slow.close_code == CloseCode.SLOW_CONSUMER
    assert not fast.closed
    assert fast.pending_bytes == sum(map(len, frames))


async def test_next_batch_takes_everything_queued_in_order() -> None:
    session = make_session()
    for frame in (b"a", b"bb", b"ccc"):
        session.push(frame)
    async with asyncio.timeout(WAIT_S):
        assert await session.next_batch() == [b"a", b"bb", b"ccc"]
    assert session.pending_bytes == 0


async def test_taking_a_batch_frees_the_buffer() -> None:
    session = make_session(limit=6)
    assert session.push(b"abc")
    assert session.push(b"def")
    async with asyncio.timeout(WAIT_S):
        assert await session.next_batch() == [b"abc", b"def"]
    assert session.push(b"ghijkl")
    assert not session.closed


async def test_next_batch_waits_for_a_push() -> None:
    session = make_session()
    waiter = asyncio.create_task(session.next_batch())
    await asyncio.sleep(0)
    assert not waiter.done()
    session.push(b"x")
    async with asyncio.timeout(WAIT_S):
        assert await waiter == [b"x"]


async def test_next_batch_returns_none_once_closed() -> None:
    session = make_session()
    session.close(CloseCode.NORMAL, "bye")
    async with asyncio.timeout(WAIT_S):
        assert await session.next_batch() is None
        assert await session.next_batch() is None


async def test_close_wakes_a_waiting_writer_with_none() -> None:
    session = make_session()
    waiter = asyncio.create_task(session.next_batch())
    await asyncio.sleep(0)
    session.close(CloseCode.GOING_AWAY, "server draining")
    async with asyncio.timeout(WAIT_S):
        assert await waiter is None


async def test_close_drops_frames_the_writer_did_not_take() -> None:
    session = make_session()
    session.push(b"a")
    session.close(CloseCode.SLOW_CONSUMER, "slow")
    async with asyncio.timeout(WAIT_S):
        assert await session.next_batch() is None


async def test_push_then_close_before_the_writer_runs_yields_none() -> None:
    session = make_session()
    waiter = asyncio.create_task(session.next_batch())
    await asyncio.sleep(0)
    session.push(b"a")
    session.close(CloseCode.NORMAL, "bye")
    async with asyncio.timeout(WAIT_S):
        assert await waiter is None


async def test_writer_loop_sees_every_frame_across_batches() -> None:
    session = make_session(limit=10_000)
    received: list[bytes] = []
    expected = [b"%d" % index for index in range(200)]
    all_received = asyncio.Event()
    batches = 0

    async def writer() -> None:
        nonlocal batches
        while (batch := await session.next_batch()) is not None:
            batches += 1
            received.extend(batch)
            if len(received) >= len(expected):
                all_received.set()

    task = asyncio.create_task(writer())
    for index, frame in enumerate(expected):
        assert session.push(frame)
        if index % 7 == 0:
            await asyncio.sleep(0)  # let the writer take partial batches
    async with asyncio.timeout(WAIT_S):
        await all_received.wait()
    assert batches > 1
    session.close(CloseCode.NORMAL, "done")
    async with asyncio.timeout(WAIT_S):
        await task
    assert received == expected


async def test_wait_closed() -> None:
    session = make_session()
    waiter = asyncio.create_task(session.wait_closed())
    await asyncio.sleep(0)
    assert not waiter.done()
    session.close(CloseCode.TOKEN_EXPIRED, "token expired")
    async with asyncio.timeout(WAIT_S):
        await waiter
    async with asyncio.timeout(WAIT_S):
        await session.wait_closed()  # returns at once when already closed


@pytest.mark.parametrize("code", [CloseCode.NORMAL, CloseCode.GOING_AWAY, 4000])
def test_close_records_any_code(code: int) -> None:
    session = make_session()
    session.close(code, "r")
    assert session.close_code == code
    assert session.closed
