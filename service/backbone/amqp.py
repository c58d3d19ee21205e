"""The RabbitMQ backbone (contract section 4); with `stream.py`, the only aio_pika user.

Declares the topology, consumes the instance queue and publishes upstream; a supervisor task
connects (also when the broker is down at start-up) and reconnects with jittered backoff, and
`ready` is True only while a link is up. Deliveries reach it through the connection's lean
receive path (`tap.py`), synchronously and in order, and are acked in batches (`settle.py`).
Topology, start-up and reconnects: docs/backbone.md; how notifications come from the stream
instead when recovery is on (each crossing the link once): docs/recovery.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import aiormq.abc
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
    DeliveryMode,
    ExchangeType,
)
from yarl import URL

from service import codec, routing
from service.backbone.base import OnEvent
from service.backbone.dead_letters import DeadLetterPublisher
from service.backbone.errors import LINK_ERRORS
from service.backbone.settle import Settler
from service.backbone.stream import STREAM_NAME, StreamHistory
from service.backbone.tap import Delivery, DeliveryTap, TapTransportFactory, fallback
from service.config import Config
from service.errors import BackboneUnavailable, ConfigError, ErrorCode, ProtocolError
from service.metrics import Metrics
from service.model import Event
from service.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

JSON = "application/json"
ORIGIN_HEADER = "x-origin-connection"
TS_HEADER = "x-timestamp-ms"
DEAD_LETTER_EXCHANGE = "realtime.dlx"
DEAD_LETTER_QUEUE = "realtime.dead"
QUEUE_PREFIX = "realtime.gateway."
NOTIFICATION_PREFIX = "notification."


def redact_url(url: str) -> str:
    """The URL with its password masked, for logs and error lines."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


def describe(exc: BaseException | None) -> str:
    """A short, password-free reason for a link failure."""
    if exc is None:
        return "connection closed"
    if isinstance(
        exc, aiormq.exceptions.ProbableAuthenticationError | aio_pika.exceptions.AuthenticationError
    ):
        return "authentication refused (check the user, password and vhost)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    for arg in exc.args:  # a Connection.Close / Channel.Close frame from the broker
        reply = getattr(arg, "reply_text", None)
        if isinstance(reply, str) and reply:
            return f"refused by the broker: {reply}"
    text = str(exc).strip()
    if "Connection.OpenOk" in text and "Connection.Close" in text:
        # aiormq drops the broker's reply text here; a refused vhost is what this means
        return "the broker refused to open the vhost (does it exist, may the user use it?)"
    if isinstance(exc, aiormq.exceptions.AMQPConnectionError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def waiting_helps(exc: BaseException) -> bool:
    """Whether a failed connect may succeed later (the broker is not there yet), as opposed
    to what only an operator can fix: credentials, the vhost, the URL, a topology that
    conflicts with the broker's (PRECONDITION_FAILED, RESOURCE_LOCKED, ACCESS_REFUSED)."""
    if isinstance(
        exc,
        aiormq.exceptions.AuthenticationError
        | aiormq.exceptions.ProbableAuthenticationError
        | aiormq.exceptions.IncompatibleProtocolError
        | aiormq.exceptions.ConnectionNotAllowed  # 530: the vhost
        | aiormq.exceptions.AMQPChannelError,  # a declaration the broker refused
    ):
        return False
    # aiormq reports a vhost the broker refuses as an unexpected Connection.Close
    return not ("Connection.OpenOk" in str(exc) and "Connection.Close" in str(exc))


class _Unusable(Exception):
    """A delivery the gateway cannot use; `reason` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class _Link:
    """One live connection and what was declared on it."""

    generation: int
    connection: AbstractConnection
    control: AbstractChannel  # declarations and confirmed publishes
    consumer: AbstractChannel  # the instance queue's consumer, with the prefetch
    consumer_rpc: aiormq.abc.AbstractChannel  # the same channel, for broker-side cancels
    binder: AbstractChannel  # bind / unbind calls
    binder_rpc: aiormq.abc.AbstractChannel  # the same channel, for nowait binds
    events: AbstractExchange
    upstream: AbstractExchange
    queue: AbstractQueue
    tap: DeliveryTap  # the connection's reader: deliveries reach _on_delivery through it
    settler: Settler  # the consumer channel's acks and rejects
    consumer_tag: str | None = None


class AmqpBackbone:
    """RabbitMQ backbone; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        instance_id: str,
        exchange: str = "realtime.events",
        upstream_exchange: str = "realtime.upstream",
        dead_letter_exchange: str = DEAD_LETTER_EXCHANGE,
        dead_letter_queue: str = DEAD_LETTER_QUEUE,
        queue_prefix: str = QUEUE_PREFIX,
        prefetch: int = 5000,
        metrics: Metrics | None = None,
        confirm_timeout_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        heartbeat_s: int = 15,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 15.0,
        recovery_window_s: float = 0.0,
        recovery_stream: str = STREAM_NAME,
        stream_options: dict[str, Any] | None = None,
    ) -> None:
        parsed = URL(url)
        if "heartbeat" not in parsed.query:
            # aiormq's default (60 s, three missed) takes minutes to notice a dead peer.
            parsed = parsed.update_query(heartbeat=heartbeat_s)
        if "name" not in parsed.query:
            parsed = parsed.update_query(name=instance_id)  # the connection name in the broker
        self._url = parsed
        self.url = redact_url(url)  # for logs and error lines
        self.instance_id = instance_id
        self.exchange = exchange
        self.upstream_exchange = upstream_exchange
        self.dead_letter_exchange = dead_letter_exchange
        self.dead_letter_queue = dead_letter_queue
        self.queue_name = queue_prefix + instance_id
        self._prefetch = prefetch
        self.metrics = metrics or Metrics()
        self._confirm_timeout_s = confirm_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._on_event: OnEvent | None = None
        self._keys: set[str] = set()  # what the instance queue is bound to (and re-bound to)
        self._link: _Link | None = None  # the live link; None while (re)connecting
        self._generations = itertools.count(1)
        self._ready = False
        self._ready_event = asyncio.Event()
        self._reason = "backbone not started"
        self._closing = False
        self._blocked: str | None = None  # the broker's reason while it blocks publishing
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._connected_once = False  # a first link was up (later ones are reconnects)
        #: The notification stream (recovery); None when the window is 0.
        self.history: StreamHistory | None = None
        if recovery_window_s > 0:
            self.history = StreamHistory(
                recovery_stream,
                exchange=exchange,
                window_s=recovery_window_s,
                decode=self._decode_entry,
                prefetch=prefetch,
                on_reader=lambda: self.metrics.stream_readers.inc(),
                **(stream_options or {}),
            )
        self._dead_letters = DeadLetterPublisher(
            dead_letter_exchange, source_queue=recovery_stream, instance=instance_id
        )

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics) -> AmqpBackbone:
        """The backbone GATEWAY_AMQP_URL and friends describe."""
        return cls(
            config.amqp_url,
            instance_id=config.instance_id,
            exchange=config.exchange,
            upstream_exchange=config.upstream_exchange,
            prefetch=config.amqp_prefetch,
            metrics=metrics,
            recovery_window_s=config.recovery_window_s,
            recovery_stream=config.recovery_stream,
        )

    # -- state ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def reason(self) -> str:
        return "" if self._ready else self._reason

    @property
    def bindings(self) -> frozenset[str]:
        """The keys this instance receives (re-applied after every reconnect).

        With the notification stream on, notification keys are served by the stream, which
        carries every notification already: they are kept here, not bound on the broker.
        """
        return frozenset(self._keys)

    @property
    def tapped(self) -> int:
        """Deliveries the current link's lean receive path handed on (for tests and tools)."""
        link = self._link
        return link.tap.taken if link is not None else 0

    def _on_broker(self, key: str) -> bool:
        """Whether `key` is bound on the broker (not served by the notification stream)."""
        return self.history is None or not key.startswith(NOTIFICATION_PREFIX)

    async def wait_ready(self, timeout_s: float) -> None:
        """Return once ready; TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while not self._ready:
                await self._ready_event.wait()

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        self._ready = ready
        if ready:
            self._ready_event.set()
        else:
            self._reason = reason
            self._ready_event.clear()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, on_event: OnEvent) -> None:
        """Connect, declare, consume; then supervise the link.

        A broker that is not there yet (refused, timed out, name not resolving) is no error:
        the backbone stays unready and the supervisor retries with backoff until it is.
        What waiting cannot fix (`waiting_helps`) raises ConfigError(GATEWAY_AMQP_URL).
        """
        self._on_event = on_event
        self._closing = False
        try:
            await self._establish()
        except LINK_ERRORS as exc:
            if not waiting_helps(exc):
                self._set_ready(False, f"cannot connect to the broker: {describe(exc)}")
                raise ConfigError(
                    "GATEWAY_AMQP_URL",
                    f"cannot connect to RabbitMQ at {self.url}: {describe(exc)}",
                ) from None
            self._set_ready(False, f"connecting to the broker (attempt 1): {describe(exc)}")
            log.warning("backbone_connect_failed", url=self.url, attempt=1, error=describe(exc))
            self._lost.set()  # the supervisor keeps trying from here
        else:
            self._connected_once = True
            log.info(
                "backbone_connected", url=self.url, queue=self.queue_name, exchange=self.exchange
            )
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name="amqp-supervisor"
        )

    async def close(self) -> None:
        """Stop consuming, delete the instance queue and close the connection."""
        self._closing = True
        self._set_ready(False, "backbone closed")
        await cancel_and_wait(self._supervisor)
        self._supervisor = None
        link, self._link = self._link, None
        self._on_event = None
        self._keys.clear()
        if link is None:
            return
        with contextlib.suppress(*LINK_ERRORS):
            async with asyncio.timeout(self._connect_timeout_s):
                if link.consumer_tag is not None:
                    await link.queue.cancel(link.consumer_tag)
                # Exclusive queues go with their connection anyway; deleting it first makes
                # "gone after a clean shutdown" hold the moment close() returns.
                await link.queue.delete(if_unused=False, if_empty=False)
        await self._discard(link)
        log.info("backbone_closed", queue=self.queue_name)

    # -- bindings -------------------------------------------------------------------------

    async def bind(self, keys: Collection[str]) -> None:
        """Bind the instance queue; BackboneUnavailable while the broker is unreachable."""
        todo = sorted(set(keys) - self._keys)
        if not todo:
            return
        link = self._require()
        try:
            await self._bind_on(link, todo)
        except LINK_ERRORS as exc:
            raise BackboneUnavailable(f"binding failed: {describe(exc)}") from None
        if not self._ready or self._link is not link:
            # The link went down meanwhile; the caller retries and the keys are bound then.
            raise BackboneUnavailable(self._reason or "broker connection lost")
        self._keys.update(todo)

    async def unbind(self, keys: Collection[str]) -> None:
        """Unbind; while disconnected only forget the keys (the next queue will not have them)."""
        todo = sorted(self._keys.intersection(keys))
        if not todo:
            return
        self._keys.difference_update(todo)
        link = self._link
        if link is None or not self._ready:
            return
        with contextlib.suppress(*LINK_ERRORS):  # a lost link loses the bindings with it
            await self._unbind_on(link, todo)

    async def _bind_on(self, link: _Link, keys: list[str]) -> None:
        # Pipelined: every bind but the last is sent with nowait; the broker handles a
        # channel's methods in order, so the last one's BindOk means all are in place (an
        # error in any closes the channel and fails the last). This saves a round trip per
        # key; the broker's own rate (about 1,500 bindings/s here) is the limit then.
        keys = [key for key in keys if self._on_broker(key)]
        if not keys:
            return
        queue = link.queue.name
        for key in keys[:-1]:
            await link.binder_rpc.queue_bind(queue, self.exchange, key, nowait=True)
        await link.binder_rpc.queue_bind(queue, self.exchange, keys[-1])

    async def _unbind_on(self, link: _Link, keys: list[str]) -> None:
        # queue.unbind has no nowait in AMQP 0-9-1: one round trip each.
        for key in keys:
            if not self._on_broker(key):
                continue
            await link.binder_rpc.queue_unbind(link.queue.name, self.exchange, key)

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, event: Event) -> None:
        """Publish downstream to the events exchange, as a service would; waits for the confirm."""
        link = self._require()
        message = downstream_message(event)
        await self._publish_confirmed(link.events, message, event.routing_key)

    async def publish_upstream(self, routing_key: str, body: bytes) -> None:
        """Publish a client event upstream (persistent) and wait for the broker's confirm."""
        link = self._require()
        message = aio_pika.Message(
            body,
            content_type=JSON,
            message_id=uuid.uuid4().hex,
            timestamp=datetime.now(UTC),
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        await self._publish_confirmed(link.upstream, message, routing_key)

    async def _publish_confirmed(
        self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str
    ) -> None:
        try:
            await exchange.publish(message, routing_key, timeout=self._confirm_timeout_s)
        except TimeoutError:
            raise BackboneUnavailable(
                f"no broker confirm within {self._confirm_timeout_s:g} s"
            ) from None
        except aiormq.exceptions.DeliveryError:
            raise BackboneUnavailable("the broker refused the message (nack)") from None
        except LINK_ERRORS as exc:
            raise BackboneUnavailable(f"broker connection lost: {describe(exc)}") from None

    def _require(self) -> _Link:
        link = self._link
        if not self._ready or link is None:
            raise BackboneUnavailable(self._reason or "broker unavailable")
        if self._blocked is not None:
            # A resource alarm: the broker reads nothing we publish until it clears, so a
            # publish would only wait for its confirm timeout. Deliveries go on.
            raise BackboneUnavailable(f"the broker blocks publishing: {self._blocked}")
        return link

    def _on_blocked(self, reason: str | None) -> None:
        if reason is None:
            if self._blocked is not None:
                log.info("backbone_unblocked")
            self._blocked = None
        else:
            self._blocked = reason
            log.warning("backbone_blocked", reason=reason)

    # -- consuming ------------------------------------------------------------------------

    def _on_delivery(self, link: _Link, delivery: Delivery) -> None:
        # Called by the connection's DeliveryTap, synchronously and in delivery order, for
        # each message of the instance queue: decoded once, handed to the node, then marked
        # for the batched ack (the contract's "ack after queued").
        try:
            event = self._decode(delivery)
        except _Unusable as exc:
            self._dead_letter(delivery, exc.reason, exc.detail)
            link.settler.reject(delivery.delivery_tag)
            return
        on_event = self._on_event
        if on_event is None:  # closing
            return
        try:
            on_event(event)
        except Exception as exc:
            log.exception("event_failed", message_id=event.id, routing_key=event.routing_key)
            self._dead_letter(delivery, "internal", repr(exc))
            link.settler.reject(delivery.delivery_tag)
            return
        link.settler.ack(delivery.delivery_tag)

    def _decode(self, delivery: Delivery, offset: int | None = None) -> Event:
        key = delivery.routing_key
        route = routing.parse(key)
        if route is None:
            raise _Unusable("routing_key", f"routing key {key!r} is outside the contract")
        props = delivery.properties
        content_type = props.content_type or ""
        if content_type != JSON:  # the common case needs no normalising
            content_type = content_type.partition(";")[0].strip().lower()
        if content_type and content_type != JSON:
            raise _Unusable("content_type", f"content type {content_type!r} is not {JSON}")
        try:
            name, data = codec.decode_backbone_body(
                delivery.body, routing.default_event(route.kind)
            )
        except ProtocolError as exc:
            raise _Unusable("body", exc.message) from None
        headers = props.headers
        if headers:
            ts = _timestamp_ms(headers.get(TS_HEADER), props.timestamp)
            origin = _text(headers.get(ORIGIN_HEADER))
        else:
            ts, origin = _timestamp_ms(None, props.timestamp), None
        ident = props.message_id or uuid.uuid4().hex
        return Event(key, name, data, ident, ts, offset=offset, origin=origin)

    def _on_stream_entry(self, delivery: Delivery, offset: int) -> Event | None:
        """A live entry of the notification stream: decoded and handed on, or dead-lettered.

        With the stream on, the instance queue has no notification bindings (each
        notification crosses the link once), so an unusable one is dead-lettered here, by
        every instance whose own bindings would have taken it: the same copies as before.
        """
        try:
            event = self._decode(delivery, offset)
        except _Unusable as exc:
            if self._wants(delivery.routing_key):
                self._dead_letter(delivery, exc.reason, exc.detail, republish=True)
            return None
        if event.routing_key.startswith(routing.DASHBOARD_PREFIX):
            return None
        on_event = self._on_event
        if on_event is not None:
            try:
                on_event(event)
            except Exception:
                log.exception("event_failed", message_id=event.id, routing_key=event.routing_key)
        return event

    def _decode_entry(self, delivery: Delivery, offset: int) -> Event | None:
        """A notification read back from the stream (replay), or None when it is unusable."""
        try:
            event = self._decode(delivery, offset)
        except _Unusable:
            return None
        return None if event.routing_key.startswith(routing.DASHBOARD_PREFIX) else event

    def _wants(self, routing_key: str) -> bool:
        """Whether this instance's bindings (real or kept by the stream) match the key."""
        return any(routing.matches(key, routing_key) for key in self._keys)

    def _dead_letter(
        self, delivery: Delivery, reason: str, detail: str, *, republish: bool = False
    ) -> None:
        self.metrics.dead_lettered.labels(reason).inc()
        log.warning(
            "message_dead_lettered",
            message_id=delivery.properties.message_id,
            routing_key=delivery.routing_key,
            reason=reason,
            detail=detail[:200],
        )
        if republish:
            self._dead_letters.put(delivery, reason)

    # -- connecting -----------------------------------------------------------------------

    async def _establish(self) -> None:
        """Open a link, declare everything, re-apply the bindings, consume; then ready."""
        factory = TapTransportFactory()
        connection = aio_pika.Connection(self._url)
        # aio-pika keeps only the options it knows; aiormq takes the factory from here.
        connection.kwargs["transport_factory"] = factory
        await connection.connect(timeout=self._connect_timeout_s)
        try:
            if factory.reader is None:
                raise RuntimeError("aiormq did not use the gateway's transport factory")
            self._blocked = None  # a new connection starts unblocked
            factory.reader.on_blocked = self._on_blocked
            async with asyncio.timeout(self._connect_timeout_s):
                link = await self._declare(next(self._generations), connection, factory.reader)
            self._watch(link)
            await self._reapply(link)
            if self.history is not None:
                generation = link.generation
                await self.history.attach(
                    connection,
                    factory.reader,
                    self._on_stream_entry,
                    lambda exc: self._on_lost(generation, exc),
                )
            link.settler.start()
            self._dead_letters.start(await link.control.get_underlay_channel())
            on_delivery = functools.partial(self._on_delivery, link)
            tag = f"{self.queue_name}.{link.generation}"
            link.tap.tap(link.consumer_rpc.number, tag, on_delivery)
            await link.consumer_rpc.basic_consume(
                link.queue.name,
                fallback(on_delivery),
                consumer_tag=tag,
            )
            link.consumer_tag = tag
            if connection.is_closed:
                raise aio_pika.exceptions.ConnectionClosed(320, "closed while setting up")
        except BaseException:
            await self._discard_connection(connection)
            raise
        self._link = link
        self._set_ready(True)

    async def _declare(
        self, generation: int, connection: AbstractConnection, tap: DeliveryTap
    ) -> _Link:
        control = await connection.channel(publisher_confirms=True)
        events = await control.declare_exchange(self.exchange, ExchangeType.TOPIC, durable=True)
        upstream = await control.declare_exchange(
            self.upstream_exchange, ExchangeType.TOPIC, durable=True
        )
        dlx = await control.declare_exchange(
            self.dead_letter_exchange, ExchangeType.FANOUT, durable=True
        )
        dead = await control.declare_queue(self.dead_letter_queue, durable=True)
        await dead.bind(dlx, routing_key="")
        consumer = await connection.channel(publisher_confirms=False)
        await consumer.set_qos(prefetch_count=self._prefetch)
        queue = await consumer.declare_queue(
            self.queue_name,
            exclusive=True,
            auto_delete=True,
            arguments={"x-dead-letter-exchange": self.dead_letter_exchange},
        )
        binder = await connection.channel(publisher_confirms=False)
        consumer_rpc = await consumer.get_underlay_channel()
        return _Link(
            generation=generation,
            connection=connection,
            control=control,
            consumer=consumer,
            consumer_rpc=consumer_rpc,
            binder=binder,
            binder_rpc=await binder.get_underlay_channel(),
            events=events,
            upstream=upstream,
            queue=queue,
            tap=tap,
            settler=Settler(consumer_rpc),
        )

    def _watch(self, link: _Link) -> None:
        """Any close of the link (connection, channel) or a broker-side consumer cancel = lost."""

        def lost(_sender: object, exc: BaseException | None = None) -> None:
            self._on_lost(link.generation, exc)

        def cancelled(_frame: object) -> None:
            self._on_lost(link.generation, RuntimeError("the broker cancelled the consumer"))

        link.connection.close_callbacks.add(lost)
        for channel in (link.control, link.consumer, link.binder):
            channel.close_callbacks.add(lost)
        link.consumer_rpc.on_consumer_cancel_callbacks.add(cancelled)

    async def _reapply(self, link: _Link) -> None:
        """Bind the new queue to every remembered key (the set may shrink meanwhile)."""
        applied: set[str] = set()
        while True:
            missing = sorted(self._keys - applied)
            if missing:
                await self._bind_on(link, missing)
                applied.update(missing)
                continue
            stale = sorted(applied - self._keys)
            if not stale:
                return
            await self._unbind_on(link, stale)
            applied.difference_update(stale)

    def _on_lost(self, generation: int, exc: BaseException | None) -> None:
        # Only the live link counts: callbacks of a link being set up or already dropped
        # (they fire late, from close()) are ignored.
        link = self._link
        if link is None or link.generation != generation or self._closing:
            return
        if self._lost.is_set():
            return
        reason = f"broker connection lost: {describe(exc)}"
        self._set_ready(False, reason)
        log.warning("backbone_lost", reason=reason, bindings=len(self._keys))
        self._lost.set()

    async def _supervise(self) -> None:
        while True:
            await self._lost.wait()
            link, self._link = self._link, None
            self._lost.clear()
            if link is not None:
                await self._discard(link)
            await self._reconnect()

    async def _reconnect(self) -> None:
        # Before the first link is up, attempt 1 was start()'s own.
        attempt = 0 if self._connected_once else 1
        verb, failed = (
            ("reconnecting", "backbone_reconnect_failed")
            if self._connected_once
            else ("connecting", "backbone_connect_failed")
        )
        while True:
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1
            try:
                await self._establish()
            except Exception as exc:  # any failure: keep trying, the process must not die
                self._reason = f"{verb} to the broker (attempt {attempt}): {describe(exc)}"
                log.warning(failed, url=self.url, attempt=attempt, error=describe(exc))
                continue
            if not self._connected_once:
                self._connected_once = True
                log.info(
                    "backbone_connected", url=self.url, queue=self.queue_name, attempts=attempt
                )
                return
            self.metrics.backbone_reconnects.inc()
            log.info("backbone_reconnected", attempts=attempt, bindings=len(self._keys))
            return

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter: a uniform pick in [ceiling/2, ceiling]."""
        ceiling = min(self._backoff_max_s, self._backoff_initial_s * 2.0**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _discard(self, link: _Link) -> None:
        if self.history is not None:
            await self.history.detach()
        await link.settler.stop()
        await self._dead_letters.stop()
        await self._discard_connection(link.connection)

    @staticmethod
    async def _discard_connection(connection: AbstractConnection) -> None:
        with contextlib.suppress(*LINK_ERRORS):
            async with asyncio.timeout(5):
                await connection.close()


def _timestamp_ms(header: object, stamp: int | None) -> int:
    """`x-timestamp-ms` when set, else the AMQP timestamp (seconds), else now."""
    if isinstance(header, int) and not isinstance(header, bool) and header > 0:
        return header
    if stamp is not None:
        return stamp * 1000
    return int(time.time() * 1000)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def downstream_message(event: Event) -> aio_pika.Message:
    """A downstream event as the gateway publishes it (the API, client events, the CLI): the
    body services send, plus the headers it reads back (`x-timestamp-ms`, and
    `x-origin-connection` for echoes). Not persistent: the instance queues are not durable,
    and the notification stream keeps everything on disk anyway."""
    headers: dict[str, Any] = {TS_HEADER: event.ts}
    if event.origin is not None:
        headers[ORIGIN_HEADER] = event.origin
    return aio_pika.Message(
        codec.encode_backbone_body(event.name, event.data),
        content_type=JSON,
        message_id=event.id,
        timestamp=datetime.fromtimestamp(event.ts / 1000, UTC),
        headers=headers,
        delivery_mode=DeliveryMode.NOT_PERSISTENT,
    )


async def publish_once(
    config: Config,
    routing_key: str,
    data: Any,
    *,
    event: str | None = None,
    message_id: str | None = None,
    timeout_s: float = 10.0,
) -> str:
    """Publish one downstream event to GATEWAY_EXCHANGE (for `realtime-gateway publish`).

    Validates like `/api/publish` (ProtocolError), declares the exchange as the gateway does,
    waits for the broker's confirm (BackboneUnavailable otherwise) and returns the message id.
    """
    try:
        _, name = routing.downstream(routing_key, event)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from None
    message = downstream_message(
        Event(routing_key, name, data, message_id or uuid.uuid4().hex, int(time.time() * 1000))
    )
    url = URL(config.amqp_url)
    try:
        async with asyncio.timeout(timeout_s):
            connection = await aio_pika.connect(url.update_query(name="realtime-gateway-cli"))
            async with connection:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.declare_exchange(
                    config.exchange, ExchangeType.TOPIC, durable=True
                )
                await exchange.publish(message, routing_key)
    except LINK_ERRORS as exc:
        raise BackboneUnavailable(
            f"cannot publish to RabbitMQ at {redact_url(config.amqp_url)}: {describe(exc)}"
        ) from None
    return message.message_id or ""
