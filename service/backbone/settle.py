"""Acks and rejects of one consumer channel, sent in delivery order by one task.

A consumer marks each delivery once it is done with it (`ack` after the event was queued for
every target socket, `reject` for one it cannot use); the settler sends them at most once per
loop iteration: one `basic.ack(multiple=True)` for each run of good deliveries and a
`basic.reject(requeue=False)` for each unusable one, so a `multiple` ack never covers a message
about to be dead-lettered. Lost with the link: the broker redelivers nothing (at most once,
exclusive queue) or the stream consumer starts again from its offset.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiormq.abc

from service.backbone.errors import LINK_ERRORS
from service.tasks import cancel_and_wait


class Settler:
    """Batches the settlements of one channel's consumers."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, *, ack_every: int = 1) -> None:
        self._channel = channel
        self._ack_every = ack_every  # a stream's acks are credit: one per run of this many
        self._unsent = 0
        self._pending: list[tuple[int, bool]] = []  # (delivery tag, reject)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0  # frames sent (acks and rejects)

    def start(self) -> None:
        """Start the task that sends the settlements."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="amqp-settler")

    async def stop(self) -> None:
        """Stop sending; what is still pending is dropped with the link."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def ack(self, tag: int) -> None:
        """Settle `tag` and every earlier delivery not yet settled as done."""
        pending = self._pending
        if pending and not pending[-1][1]:
            pending[-1] = (tag, False)  # one ack with multiple=True covers the run
        else:
            pending.append((tag, False))
        self._unsent += 1
        if self._unsent >= self._ack_every:
            self._wake.set()

    def reject(self, tag: int) -> None:
        """Reject `tag` without requeue (the broker dead-letters it)."""
        self._pending.append((tag, True))
        self._wake.set()

    async def _run(self) -> None:
        channel = self._channel
        with contextlib.suppress(*LINK_ERRORS):  # lost with the link
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._pending = self._pending, []
                self._unsent = 0
                for tag, reject in batch:
                    if reject:
                        await channel.basic_reject(tag, requeue=False)
                    else:
                        await channel.basic_ack(tag, multiple=True, wait=False)
                    self.sent += 1
