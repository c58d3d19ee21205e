"""The notification stream: offsets every replica agrees on, and the history recovery reads.

Used by the RabbitMQ backbone (`amqp.py`) when the recovery window is not 0: every instance
consumes one durable stream queue bound with `notification.#`, so each live notification
carries the stream's offset (+ 1, so that 0 means "before everything"), and a replay reads the
recent tail from memory (`RecentHistory`) or, for older ranges, with a short-lived reader. Offsets
are not consecutive (RabbitMQ spends some on bookkeeping chunks): only the entry `since` still
being in the stream proves nothing after it was lost. Design, retention and costs:
docs/recovery.md ("RabbitMQ backbone: the notification stream").
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
import aiormq.abc
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from service.backbone.errors import LINK_ERRORS
from service.backbone.history import RecentHistory
from service.backbone.settle import Settler
from service.backbone.tap import Delivery, DeliveryTap, fallback
from service.errors import BackboneUnavailable
from service.model import Event
from service.tasks import suppress_foreign_cancel

log = structlog.get_logger(__name__)

STREAM_NAME = "realtime.notifications"
NOTIFICATIONS_PATTERN = "notification.#"
OFFSET_HEADER = "x-stream-offset"
SEGMENT_BYTES = 8 << 20
MAX_BYTES = 1 << 30
RECENT_ENTRIES = 20_000
CLOSE_TIMEOUT_S = 5.0

#: Turns one stream entry read back (replay) and its offset into an Event, or None.
Decode = Callable[[Delivery, int], Event | None]
#: Handles one live entry with its offset: the Event handed on (for the tail), or None.
OnEntry = Callable[[Delivery, int], Event | None]
OnLost = Callable[[BaseException | None], None]


def entry_offset(delivery: Delivery) -> int | None:
    """The client-facing offset of a stream entry: its `x-stream-offset` + 1."""
    headers = delivery.properties.headers
    raw = headers.get(OFFSET_HEADER) if headers else None
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw + 1
    return None


class StreamHistory:
    """One instance's view of the notification stream; implements `NotificationHistory`."""

    def __init__(
        self,
        name: str = STREAM_NAME,
        *,
        exchange: str,
        window_s: float,
        decode: Decode,
        prefetch: int = 5000,
        segment_bytes: int = SEGMENT_BYTES,
        max_bytes: int = MAX_BYTES,
        recent_entries: int = RECENT_ENTRIES,
        on_reader: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.exchange = exchange
        self.window_s = window_s
        self._decode = decode
        self._prefetch = max(prefetch, 2)
        self._ack_every = max(1, self._prefetch // 4)
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        self._last_offset = 0
        self._recent = RecentHistory(window_s=window_s, max_entries=recent_entries)
        self._attached_once = False
        self._connection: AbstractConnection | None = None
        self._live: AbstractChannel | None = None
        self._settler: Settler | None = None
        self._tap: DeliveryTap | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.readers = 0  # replay consumers opened since start
        self._on_reader = on_reader
        self.skipped = 0  # entries that were not usable notifications

    @property
    def arguments(self) -> dict[str, Any]:
        """The stream's declaration arguments."""
        arguments: dict[str, Any] = {
            "x-queue-type": "stream",
            "x-max-age": f"{max(1, math.ceil(self.window_s))}s",
            "x-stream-max-segment-size-bytes": self._segment_bytes,
        }
        if self._max_bytes:
            arguments["x-max-length-bytes"] = self._max_bytes
        return arguments

    # -- attaching ------------------------------------------------------------------------

    async def attach(
        self, connection: AbstractConnection, tap: DeliveryTap, on_entry: OnEntry, on_lost: OnLost
    ) -> None:
        """Declare and bind the stream on a new connection and start the live consumer.

        The events exchange must exist. Live entries arrive through the connection's `tap`,
        synchronously and in order; `on_entry` decodes and hands each one on. `on_lost` is
        called when the live consumer's channel closes or the broker cancels it (the backbone
        then reconnects and attaches again).
        """
        await self._declare(connection)
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self._prefetch)
        raw = await channel.get_underlay_channel()
        since = self._last_offset
        start: int | str = "last"
        if self._attached_once:
            # From the last entry delivered (stream offset since - 1): when RabbitMQ still has
            # it, it comes back first (filtered below) and nothing in between was lost.
            start = since - 1 if since >= 1 else "first"
        first_seen = not self._attached_once
        settler = Settler(raw, ack_every=self._ack_every)

        def on_delivery(delivery: Delivery) -> None:
            # Synchronous, in stream order. Acks are the consumer's credit: one `multiple`
            # ack per loop iteration keeps the broker sending.
            nonlocal first_seen
            offset = entry_offset(delivery)
            if offset is not None and not first_seen:
                first_seen = True
                if offset > since:
                    # The last entry delivered is gone (retention ran while the broker was
                    # out of reach): the tail in memory cannot be joined to what follows.
                    self._recent.restart()
            if offset is not None and offset > max(since, self._last_offset):
                event = on_entry(delivery, offset)
                if event is None:
                    self.skipped += 1
                else:
                    self._recent.append(event)
                self._advance(offset)
            settler.ack(delivery.delivery_tag)

        def lost(_sender: object, exc: BaseException | None = None) -> None:
            on_lost(exc)

        def cancelled(_tag: object) -> None:
            on_lost(RuntimeError(f"the broker cancelled the consumer of stream {self.name}"))

        channel.close_callbacks.add(lost)
        raw.on_consumer_cancel_callbacks.add(cancelled)
        tag = f"{self.name}.live.{id(connection):x}"
        tap.tap(raw.number, tag, on_delivery)
        settler.start()
        self._settler = settler
        await raw.basic_consume(
            self.name,
            fallback(on_delivery),
            arguments={OFFSET_HEADER: start},
            consumer_tag=tag,
        )
        self._connection, self._live, self._tap = connection, channel, tap
        self._attached_once = True
        log.info("stream_attached", stream=self.name, start=start)

    async def detach(self) -> None:
        """Forget the connection (it is gone or going); replays fail until the next attach."""
        self._connection = self._live = self._tap = None
        settler, self._settler = self._settler, None
        if settler is not None:
            await settler.stop()

    async def _declare(self, connection: AbstractConnection) -> AbstractQueue:
        channel = await connection.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(self.name, durable=True, arguments=self.arguments)
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            # Another replica (or an operator's policy) made it with other arguments: use it
            # as it is; its retention applies.
            log.warning("stream_arguments_differ", stream=self.name, error=str(exc))
            channel = await connection.channel(publisher_confirms=False)
            queue = await channel.declare_queue(self.name, passive=True)
        await queue.bind(self.exchange, NOTIFICATIONS_PATTERN)
        with contextlib.suppress(*LINK_ERRORS):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await channel.close()
        return queue

    # -- NotificationHistory ------------------------------------------------------------------

    @property
    def last_offset(self) -> int:
        return self._last_offset

    def _advance(self, offset: int) -> None:
        self._last_offset = offset
        if self._waiters:
            still = []
            for wanted, future in self._waiters:
                if wanted <= offset:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((wanted, future))
            self._waiters = still

    async def wait_offset(self, offset: int, timeout_s: float) -> bool:
        if offset <= self._last_offset:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (offset, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
        return True

    async def replay(self, since: int, until: int, sink: Callable[[Event], None]) -> int:
        if since >= until:
            return since
        floor = self._recent.floor
        if floor is not None and floor <= since:
            # Served from memory, synchronously (the run cannot change meanwhile).
            for event in self._recent.read(since, until):
                sink(event)
            return floor
        # Older than what this instance holds (typically: from before it started).
        stop = until if floor is None or floor >= until else floor
        block: list[Event] | None = []

        def keep(event: Event) -> None:
            nonlocal block
            sink(event)
            if block is not None:
                block.append(event)
                if len(block) > self._recent.max_entries:
                    block = None  # too many to keep: served, not cached

        read_floor = await self._read_stream(since, stop, keep)
        if stop >= until:
            if block and self._recent.floor is None and until >= self._last_offset:
                self._recent.prepend(block, read_floor, until)  # starts the tail
            return read_floor
        current = self._recent.floor
        if current is not None and current <= stop:
            for event in self._recent.read(stop, until):
                sink(event)
            if block is not None:
                self._recent.prepend(block, read_floor, stop)
            return read_floor
        # Memory moved on while the stream was read: the rest comes from the stream too.
        return max(read_floor, await self._read_stream(stop, until, sink))

    async def _read_stream(self, since: int, until: int, sink: Callable[[Event], None]) -> int:
        """Pass the entries `since < offset <= until` read by a stream consumer; the floor."""
        connection, tap = self._connection, self._tap
        if connection is None or tap is None or connection.is_closed:
            raise BackboneUnavailable("the notification stream is not attached")
        try:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=self._prefetch)
            raw = await channel.get_underlay_channel()
        except LINK_ERRORS as exc:
            raise BackboneUnavailable(f"cannot open a stream reader: {exc!r}") from None
        entries: asyncio.Queue[Delivery | None] = asyncio.Queue()

        def gone(*_args: object) -> None:
            entries.put_nowait(None)

        channel.close_callbacks.add(gone)
        raw.on_consumer_cancel_callbacks.add(gone)
        self.readers += 1
        if self._on_reader is not None:
            self._on_reader()
        first: int | None = None
        try:
            # Start at the entry `since` itself (stream offset since - 1): when it is still
            # there, RabbitMQ delivers it (or its whole chunk), which proves that nothing
            # after it is lost.
            start: int | str = since - 1 if since >= 1 else "first"
            tag = f"{self.name}.reader.{self.readers}"
            tap.tap(raw.number, tag, entries.put_nowait)  # the lean path, as the live consumer
            await raw.basic_consume(
                self.name,
                fallback(entries.put_nowait),
                arguments={OFFSET_HEADER: start},
                consumer_tag=tag,
            )
            taken = 0
            while True:
                message = await entries.get()
                if message is None:
                    raise BackboneUnavailable("the stream reader was closed by the broker")
                taken += 1
                if taken % self._ack_every == 0:
                    await _ack_through(raw, message)
                offset = entry_offset(message)
                if offset is None:
                    continue
                if first is None:
                    first = offset
                if offset <= since:
                    continue
                if offset > until:
                    break
                event = self._decode(message, offset)
                if event is not None:
                    sink(event)
                if offset >= until:
                    break
        except LINK_ERRORS as exc:
            raise BackboneUnavailable(f"stream reader failed: {exc!r}") from None
        finally:
            tap.untap(raw.number)
            # aiormq may fail the close with a CancelledError of its own (the connection
            # went meanwhile): absorbed, while this task's own cancellation propagates.
            with contextlib.suppress(*LINK_ERRORS), suppress_foreign_cancel():
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await channel.close()
        assert first is not None
        # The first entry the stream still had: at or below `since`, nothing was lost;
        # above it, everything from it on was read.
        return since if first <= since else first - 1


async def _ack_through(channel: aiormq.abc.AbstractChannel, delivery: Delivery) -> None:
    """Ack this entry and every one before it (for a stream, acks are consumer credit)."""
    await channel.basic_ack(delivery.delivery_tag, multiple=True)
