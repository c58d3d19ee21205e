"""service.tasks: a task's own cancellation is absorbed, the caller's never is."""

from __future__ import annotations

import asyncio

import pytest

from service.tasks import cancel_and_wait, suppress_foreign_cancel, wait_ended

WAIT_S = 5.0


async def _forever(started: asyncio.Event) -> None:
    started.set()
    await asyncio.Event().wait()


async def test_cancel_and_wait_ends_the_task_and_returns() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(_forever(started))
    await started.wait()
    async with asyncio.timeout(WAIT_S):
        await cancel_and_wait(task)
    assert task.cancelled()


async def test_cancel_and_wait_accepts_none_and_finished_tasks() -> None:
    await cancel_and_wait(None)
    task = asyncio.create_task(asyncio.sleep(0, "done"))
    await task
    await cancel_and_wait(task)
    assert task.result() == "done"


async def test_the_task_s_own_error_propagates() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.wait([task])
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(task)


async def test_a_cancel_of_the_caller_while_it_waits_propagates() -> None:
    """The task resists its cancel for a while; the caller is cancelled meanwhile."""
    release = asyncio.Event()
    resisting = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            resisting.set()
            await release.wait()  # cleanup that takes time
            raise

    worker = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    caller_went_on = False

    async def caller() -> None:
        nonlocal caller_went_on
        await cancel_and_wait(worker)
        caller_went_on = True

    outer = asyncio.create_task(caller())
    await resisting.wait()
    outer.cancel()
    release.set()
    async with asyncio.timeout(WAIT_S):
        await asyncio.wait([outer])
    assert outer.cancelled()
    assert not caller_went_on
    assert worker.done()


async def test_a_caller_already_being_cancelled_is_not_revived() -> None:
    """A cleanup that cancels a helper task in a `finally` keeps its own cancellation."""
    helper_started = asyncio.Event()
    caller_started = asyncio.Event()
    after_cleanup = False

    async def caller() -> None:
        nonlocal after_cleanup
        helper = asyncio.create_task(_forever(helper_started))
        try:
            caller_started.set()
            await asyncio.Event().wait()
        finally:
            await cancel_and_wait(helper)
            after_cleanup = True  # reached: the cleanup itself ran to its end
        after_cleanup = False  # never reached: the cancel still propagates

    task = asyncio.create_task(caller())
    await caller_started.wait()
    await helper_started.wait()
    task.cancel()
    async with asyncio.timeout(WAIT_S):
        await asyncio.wait([task])
    assert task.cancelled()
    assert after_cleanup


async def test_wait_ended_does_not_cancel() -> None:
    done = asyncio.Event()

    async def finishes() -> str:
        await done.wait()
        return "ok"

    task = asyncio.create_task(finishes())
    asyncio.get_running_loop().call_later(0.01, done.set)
    async with asyncio.timeout(WAIT_S):
        await wait_ended(task)
    assert task.result() == "ok"


async def test_a_foreign_cancelled_error_is_absorbed_only_when_not_cancelling() -> None:
    with suppress_foreign_cancel():
        raise asyncio.CancelledError("a closed channel's future")  # not ours: absorbed

    entered = asyncio.Event()

    async def cancelled_inside() -> None:
        with suppress_foreign_cancel():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(cancelled_inside())
    await entered.wait()
    task.cancel()
    async with asyncio.timeout(WAIT_S):
        await asyncio.wait([task])
    assert task.cancelled()
