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
    """Absorb a CancelledError unless the current task is itself being cancelled."""
    try:
        yield
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is None or current.cancelling():
            raise


async def wait_ended(task: asyncio.Future[Any]) -> None:
    """Wait until `task` has ended; its own cancellation is absorbed, its errors propagate."""
    with suppress_foreign_cancel():
        await task


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel `task` (None: nothing to do) and wait until it has ended.

    Re-raises CancelledError when the caller is being cancelled, before or while it waits.
    An exception the task ended with (other than its cancellation) propagates.
    """
    if task is None:
        return
    task.cancel()
    await wait_ended(task)
