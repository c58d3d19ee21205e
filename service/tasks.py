"""Ending background tasks without losing the caller's own cancellation.

`task.cancel()` followed by `with suppress(CancelledError): await task` also swallows a
cancellation aimed at the task that is waiting there (a shutdown, a timeout), which then runs
on as if nothing happened. These helpers absorb only the CancelledError that is not the
caller's: the awaited task's, or one that aiormq raises for a future of a closed channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def suppress_foreign_cancel() -> Iterator[None]:
    """Absorb a CancelledError unless the current task was cancelled inside the block.

    A cancel that came before the block (a `finally` running because of it) is left to go on
    propagating after that cleanup; a CancelledError that is nobody's cancel of this task
    (the awaited task's own, aiormq's for a closed channel) is absorbed.
    """
    current = asyncio.current_task()
    before = current.cancelling() if current is not None else 0
    try:
        yield
    except asyncio.CancelledError:
        if current is None or current.cancelling() > before:
            raise


async def wait_ended(task: asyncio.Future[Any]) -> None:
    """Wait until `task` has ended; its own cancellation is absorbed, its errors propagate."""
    with suppress_foreign_cancel():
        await task


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel `task` (None: nothing to do) and wait until it has ended.

    Re-raises CancelledError when the caller is cancelled while it waits (its cleanup after
    an earlier cancel runs to its end; that cancel still propagates from where it was
    caught). An exception the task ended with (other than its cancellation) propagates.
    """
    if task is None:
        return
    task.cancel()
    await wait_ended(task)
