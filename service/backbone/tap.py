"""A lean receive path for AMQP deliveries, under aiormq.

aiormq reads every frame with three `readexactly` calls, builds pamqp objects for it, queues
it to the channel's reader task and starts a task per delivery: about 39 µs per message before
the gateway sees it (docs/performance.md). This module sits where aiormq reads its socket: a
`DeliveryTap` is the connection's `StreamReader`, handed to aiormq by `TapTransportFactory`
(aiormq's public `transport_factory` hook). Every chunk the socket delivers is cut into frames
in place; the `basic.deliver` frames of a tapped consumer and their content frames are decoded
here and handed to its callback synchronously, in order, with no task and no pamqp object per
message; every other frame (replies, heartbeats, closes, confirms, other consumers) is passed
on to aiormq untouched, which stays in charge of the connection.

A consumer is tapped by (channel number, consumer tag) before `basic.consume` is sent, so no
delivery can reach aiormq's path first; the aiormq callback given to `basic_consume` is a
fallback that converts and forwards whatever still reaches it (`delivery_from_aiormq`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import aiormq.abc
import pamqp.decode
import structlog
from aiormq.connection import TransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

log = structlog.get_logger(__name__)

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
BASIC_DELIVER = (60 << 16) | 60
CONNECTION_BLOCKED = (10 << 16) | 60
CONNECTION_UNBLOCKED = (10 << 16) | 61
#: What aiormq gets instead of the frames the tap took, so that it still sees the link alive.
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"
HEARTBEAT_EVERY_S = 1.0
STREAM_LIMIT = 2**16  # asyncio.open_connection's default buffer limit

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_I32 = struct.Struct(">i")
_FRAME_HEAD = struct.Struct(">BHI")
_HEADER_HEAD = struct.Struct(">HHQH")


class Properties:
    """The basic properties of a delivery (AMQP 0-9-1 names, `timestamp` in seconds)."""

    __slots__ = (
        "app_id",
        "content_encoding",
        "content_type",
        "correlation_id",
        "delivery_mode",
        "expiration",
        "headers",
        "message_id",
        "priority",
        "reply_to",
        "timestamp",
        "type",
        "user_id",
    )

    def __init__(self) -> None:
        self.content_type: str | None = None
        self.content_encoding: str | None = None
        self.headers: dict[str, Any] | None = None
        self.delivery_mode: int | None = None
        self.priority: int | None = None
        self.correlation_id: str | None = None
        self.reply_to: str | None = None
        self.expiration: str | None = None
        self.message_id: str | None = None
        self.timestamp: int | None = None
        self.type: str | None = None
        self.user_id: str | None = None
        self.app_id: str | None = None


class Delivery:
    """One message delivered to a tapped consumer."""

    __slots__ = ("body", "delivery_tag", "exchange", "properties", "redelivered", "routing_key")

    def __init__(
        self,
        delivery_tag: int,
        routing_key: str,
        exchange: str,
        redelivered: bool,
        properties: Properties,
        body: bytes,
    ) -> None:
        self.delivery_tag = delivery_tag
        self.routing_key = routing_key
        self.exchange = exchange
        self.redelivered = redelivered
        self.properties = properties
        self.body = body


OnDelivery = Callable[[Delivery], None]
#: Told of `connection.blocked` (with the broker's reason) and `connection.unblocked` (None).
OnBlocked = Callable[[str | None], None]


def _shortstr(buf: bytes, pos: int) -> tuple[str, int]:
    end = pos + 1 + buf[pos]
    return buf[pos + 1 : end].decode("utf-8", "replace"), end


def _headers(buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
    """A field table; the common value types inline, anything else through pamqp."""
    size = _U32.unpack_from(buf, pos)[0]
    start, end = pos + 4, pos + 4 + size
    table: dict[str, Any] = {}
    at = start
    while at < end:
        name_end = at + 1 + buf[at]
        name = buf[at + 1 : name_end].decode("utf-8", "replace")
        kind = buf[name_end]
        at = name_end + 1
        if kind == 0x6C:  # 'l': signed 64-bit (x-stream-offset, x-timestamp-ms)
            table[name] = _I64.unpack_from(buf, at)[0]
            at += 8
        elif kind == 0x53:  # 'S': long string (pamqp gives bytes when it is not UTF-8)
            length = _U32.unpack_from(buf, at)[0]
            raw = buf[at + 4 : at + 4 + length]
            try:
                table[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                table[name] = raw
            at += 4 + length
        elif kind == 0x49:  # 'I': signed 32-bit
            table[name] = _I32.unpack_from(buf, at)[0]
            at += 4
        else:  # rarer types: let pamqp decode the whole table
            return pamqp.decode.field_table(buf[pos:end])[1], end
    return table, end


def parse_properties(buf: bytes, pos: int) -> Properties:
    """Decode the property list of a content header whose flags start at `pos`."""
    props = Properties()
    flags = _U16.unpack_from(buf, pos)[0]
    pos += 2
    more = flags & 1
    while more:  # continuation flag words: no defined property uses them, skip
        more = _U16.unpack_from(buf, pos)[0] & 1
        pos += 2
    if flags <= 1:
        return props
    if flags & 0x8000:
        props.content_type, pos = _shortstr(buf, pos)
    if flags & 0x4000:
        props.content_encoding, pos = _shortstr(buf, pos)
    if flags & 0x2000:
        props.headers, pos = _headers(buf, pos)
    if flags & 0x1000:
        props.delivery_mode = buf[pos]
        pos += 1
    if flags & 0x0800:
        props.priority = buf[pos]
        pos += 1
    if flags & 0x0400:
        props.correlation_id, pos = _shortstr(buf, pos)
    if flags & 0x0200:
        props.reply_to, pos = _shortstr(buf, pos)
    if flags & 0x0100:
        props.expiration, pos = _shortstr(buf, pos)
    if flags & 0x0080:
        props.message_id, pos = _shortstr(buf, pos)
    if flags & 0x0040:
        props.timestamp = _U64.unpack_from(buf, pos)[0]
        pos += 8
    if flags & 0x0020:
        props.type, pos = _shortstr(buf, pos)
    if flags & 0x0010:
        props.user_id, pos = _shortstr(buf, pos)
    if flags & 0x0008:
        props.app_id, pos = _shortstr(buf, pos)
    return props


class _Incoming:
    """A delivery of a tapped consumer whose content frames are still arriving."""

    __slots__ = ("callback", "exchange", "props", "redelivered", "routing_key", "size", "tag")

    def __init__(
        self, tag: int, exchange: str, routing_key: str, redelivered: bool, callback: OnDelivery
    ) -> None:
        self.tag = tag
        self.exchange = exchange
        self.routing_key = routing_key
        self.redelivered = redelivered
        self.callback = callback
        self.props: Properties | None = None
        self.size = 0


class _Channel:
    """Tap state of one channel: its tapped consumers and the delivery in progress."""

    __slots__ = ("consumers", "incoming", "parts", "passing", "received")

    def __init__(self) -> None:
        self.consumers: dict[str, OnDelivery] = {}
        self.incoming: _Incoming | None = None
        self.parts: list[bytes] = []
        self.received = 0
        self.passing = False  # content frames of a delivery the tap left to aiormq


class DeliveryTap(asyncio.StreamReader):
    """The connection's reader: takes tapped deliveries out, passes the rest to aiormq."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=STREAM_LIMIT, loop=loop)
        self._loop = loop
        self._channels: dict[int, _Channel] = {}
        self._rest = b""  # an incomplete frame from the previous chunk
        self._broken = False  # a byte stream the tap cannot frame: aiormq gets it all
        self._last_passed = loop.time()
        self.taken = 0  # deliveries handed to tapped consumers
        self.on_blocked: OnBlocked | None = None

    def tap(self, channel: int, consumer_tag: str, callback: OnDelivery) -> None:
        """Hand `consumer_tag`'s deliveries on `channel` to `callback` from now on."""
        self._channels.setdefault(channel, _Channel()).consumers[consumer_tag] = callback

    def untap(self, channel: int, consumer_tag: str | None = None) -> None:
        """Stop tapping one consumer (or every consumer) of a channel."""
        state = self._channels.get(channel)
        if state is None:
            return
        if consumer_tag is None:
            state.consumers.clear()
        else:
            state.consumers.pop(consumer_tag, None)
        if not state.consumers and state.incoming is None:
            del self._channels[channel]

    def feed_data(self, data: bytes) -> None:  # type: ignore[override]  # asyncio gives bytes
        if self._broken or not (self._channels or self.on_blocked):
            if self._rest:  # keep the byte stream whole when the last tap goes
                data, self._rest = self._rest + data, b""
            self._pass(data)
            return
        buf = self._rest + data if self._rest else data
        size = len(buf)
        pos = start = 0  # start: the first byte of the run of frames aiormq gets
        passed: list[bytes] = []
        channels = self._channels
        while pos + 7 <= size:
            kind, number, length = _FRAME_HEAD.unpack_from(buf, pos)
            if kind not in (1, 2, 3, 8):
                self._broken = True  # aiormq reports it (InvalidFrameError) and closes
                break
            end = pos + 8 + length
            if end > size:
                break
            if buf[end - 1] != FRAME_END:
                self._broken = True
                break
            if number == 0 and kind == FRAME_METHOD and self.on_blocked is not None:
                self._watch_flow(buf, pos + 7, length)  # seen, and still passed to aiormq
            state = channels.get(number)
            if state is not None:
                try:
                    taken = self._take(state, number, kind, buf, pos + 7, length)
                except (struct.error, IndexError, ValueError):
                    log.exception("tap_frame_unreadable", channel=number, kind=kind)
                    self._broken = True  # from here on aiormq reads (and judges) every frame
                    break
                if taken:
                    if pos > start:
                        passed.append(buf[start:pos])
                    start = end
            pos = end
        if self._broken:
            passed.append(buf[start:])
            self._rest = b""
        else:
            if pos > start:
                passed.append(buf[start:pos])
            self._rest = buf[pos:]
        if passed:
            self._pass(b"".join(passed) if len(passed) > 1 else passed[0])
        elif start and self._loop.time() - self._last_passed > HEARTBEAT_EVERY_S:
            # Only tapped frames for a while: aiormq would take the link for stuck.
            self._pass(HEARTBEAT)

    def _watch_flow(self, buf: bytes, at: int, n: int) -> None:
        method = _U32.unpack_from(buf, at)[0] if n >= 4 else 0
        if method == CONNECTION_BLOCKED and self.on_blocked is not None:
            reason = buf[at + 5 : at + 5 + buf[at + 4]] if n >= 5 else b""
            self.on_blocked(reason.decode("utf-8", "replace") or "blocked")
        elif method == CONNECTION_UNBLOCKED and self.on_blocked is not None:
            self.on_blocked(None)

    def _pass(self, data: bytes) -> None:
        self._last_passed = self._loop.time()
        super().feed_data(data)

    def _take(self, state: _Channel, number: int, kind: int, buf: bytes, at: int, n: int) -> bool:
        """Consume one frame of a tapped channel; False leaves it to aiormq."""
        if kind == FRAME_METHOD:
            if _U32.unpack_from(buf, at)[0] != BASIC_DELIVER:
                return False
            # consumer-tag, delivery-tag, redelivered, exchange, routing-key (inlined: hot)
            pos = at + 5 + buf[at + 4]
            callback = state.consumers.get(buf[at + 5 : pos].decode("utf-8", "replace"))
            if callback is None:
                state.passing = True
                return False
            state.passing = False
            delivery_tag = _U64.unpack_from(buf, pos)[0]
            redelivered = bool(buf[pos + 8] & 1)
            end = pos + 10 + buf[pos + 9]
            exchange = buf[pos + 10 : end].decode("utf-8", "replace")
            stop = end + 1 + buf[end]
            if stop > at + n:
                raise ValueError("basic.deliver runs past the end of its frame")
            routing_key = buf[end + 1 : stop].decode("utf-8", "replace")
            state.incoming = _Incoming(delivery_tag, exchange, routing_key, redelivered, callback)
            return True
        incoming = state.incoming
        if state.passing or incoming is None:
            return False
        if kind == FRAME_HEADER:
            incoming.size = _HEADER_HEAD.unpack_from(buf, at)[2]
            incoming.props = parse_properties(buf, at + 12)
            state.parts = []
            state.received = 0
            if incoming.size == 0:
                self._deliver(state, number, b"")
            return True
        if kind == FRAME_BODY:
            state.parts.append(buf[at : at + n])
            state.received += n
            if state.received >= incoming.size:
                parts = state.parts
                self._deliver(state, number, parts[0] if len(parts) == 1 else b"".join(parts))
            return True
        return False

    def _deliver(self, state: _Channel, number: int, body: bytes) -> None:
        incoming = state.incoming
        assert incoming is not None
        assert incoming.props is not None
        state.incoming = None
        state.parts = []
        if not state.consumers:
            del self._channels[number]
        self.taken += 1
        try:
            incoming.callback(
                Delivery(
                    incoming.tag,
                    incoming.routing_key,
                    incoming.exchange,
                    incoming.redelivered,
                    incoming.props,
                    body,
                )
            )
        except Exception:  # a consumer's bug must not stop the connection
            log.exception(
                "tapped_consumer_failed", channel=number, routing_key=incoming.routing_key
            )


class TapTransportFactory(TransportFactory):
    """Opens the connection's socket with a `DeliveryTap` as its reader (TCP or TLS)."""

    def __init__(self) -> None:
        self.reader: DeliveryTap | None = None

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        provider = kwargs.pop("ssl_context_provider", None)
        ssl = await provider.get_context() if url.scheme == "amqps" and provider else None
        loop = asyncio.get_running_loop()
        reader = DeliveryTap(loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol,
                host=url.host or "localhost",
                port=url.port or 5672,
                ssl=ssl,
                **kwargs,
            )
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        self.reader = reader
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def fallback(on_delivery: OnDelivery) -> aiormq.abc.ConsumerCallback:
    """The aiormq consumer callback for a tapped consumer: whatever still reaches aiormq."""

    async def consume(message: aiormq.abc.DeliveredMessage) -> None:
        on_delivery(delivery_from_aiormq(message))

    return consume


def delivery_from_aiormq(message: aiormq.abc.DeliveredMessage) -> Delivery:
    """The same delivery as the tap would have made it (for the fallback path)."""
    source = message.header.properties
    props = Properties()
    for name in Properties.__slots__:
        if name != "timestamp":
            setattr(props, name, getattr(source, name, None))
    stamp = source.timestamp
    props.timestamp = int(stamp.timestamp()) if stamp is not None else None
    return Delivery(
        message.delivery_tag or 0,
        message.routing_key or "",
        message.exchange or "",
        bool(message.redelivered),
        props,
        message.body,
    )
