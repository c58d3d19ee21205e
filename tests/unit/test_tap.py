"""DeliveryTap: frames sliced from the byte stream, whatever the chunking, the rest to aiormq."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pamqp.frame
import pytest
from pamqp import body as pbody
from pamqp import commands, header
from pamqp.base import Frame

from service.backbone.tap import HEARTBEAT, Delivery, DeliveryTap, Properties, parse_properties

CONSUMER = "ctag-1"
CHANNEL = 3


def marshal(frame: Frame | header.ContentHeader | pbody.ContentBody, channel: int) -> bytes:
    return pamqp.frame.marshal(frame, channel)  # type: ignore[arg-type]


def message(
    tag: int,
    body: bytes,
    *,
    channel: int = CHANNEL,
    consumer: str = CONSUMER,
    key: str = "dashboard.sales",
    frame_max: int = 4096,
    **props: object,
) -> bytes:
    """The frames of one basic.deliver, its body split at `frame_max` bytes."""
    out = [
        marshal(commands.Basic.Deliver(consumer, tag, False, "ex", key), channel),
        marshal(
            header.ContentHeader(0, len(body), commands.Basic.Properties(**props)),  # type: ignore[arg-type]
            channel,
        ),
    ]
    for at in range(0, len(body), frame_max):
        out.append(marshal(pbody.ContentBody(body[at : at + frame_max]), channel))
    return b"".join(out)


def other_frames() -> bytes:
    """Frames the tap must leave to aiormq: replies, a heartbeat, another consumer's message."""
    return b"".join(
        [
            marshal(commands.Basic.QosOk(), CHANNEL),
            HEARTBEAT,
            message(99, b'{"other": true}', consumer="someone-else"),
            marshal(commands.Channel.OpenOk(), 7),
            message(98, b"on another channel", channel=7),
        ]
    )


async def read_all(reader: asyncio.StreamReader) -> bytes:
    reader.feed_eof()
    return await reader.read()


def feed(tap: DeliveryTap, stream: bytes, chunk: int) -> None:
    for at in range(0, len(stream), chunk):
        tap.feed_data(stream[at : at + chunk])


@pytest.mark.parametrize("chunk", [1, 2, 7, 8, 13, 100, 4097, 1 << 20])
async def test_every_chunking_gives_the_same_deliveries_and_passes_the_rest(chunk: int) -> None:
    got: list[Delivery] = []
    tap = DeliveryTap(asyncio.get_running_loop())
    tap.tap(CHANNEL, CONSUMER, got.append)
    bodies = [b"", b"x", b'{"event": "a"}', bytes(range(256)) * 40, b"y" * 4096, b"z" * 4097]
    ours = b"".join(
        message(i + 1, body, content_type="application/json", message_id=f"m{i}")
        for i, body in enumerate(bodies)
    )
    rest = other_frames()
    frames = split_frames(ours)  # other channels' frames may come between two of ours
    feed(tap, b"".join(frames[:2]) + rest + b"".join(frames[2:]), chunk)
    assert [d.body for d in got] == bodies
    assert [d.delivery_tag for d in got] == list(range(1, len(bodies) + 1))
    assert {d.properties.message_id for d in got} == {f"m{i}" for i in range(len(bodies))}
    assert all(d.routing_key == "dashboard.sales" and d.exchange == "ex" for d in got)
    assert await read_all(tap) == rest  # byte for byte, in order
    assert tap.taken == len(bodies)


async def test_frames_interleaved_across_channels_stay_with_their_delivery() -> None:
    got: list[Delivery] = []
    tap = DeliveryTap(asyncio.get_running_loop())
    tap.tap(CHANNEL, CONSUMER, got.append)
    ours = message(1, b"a" * 10_000, frame_max=1000)
    theirs = message(2, b"b" * 3000, channel=9, frame_max=1000)
    # Content frames of one channel never interleave with its own others, but may with
    # another channel's: split both at frame boundaries and alternate.
    ours_frames, theirs_frames = split_frames(ours), split_frames(theirs)
    mixed = b"".join(a + b for a, b in zip(ours_frames, theirs_frames, strict=False))
    mixed += b"".join(ours_frames[len(theirs_frames) :])
    feed(tap, mixed, 333)
    assert [d.body for d in got] == [b"a" * 10_000]
    assert await read_all(tap) == theirs


def split_frames(stream: bytes) -> list[bytes]:
    frames, at = [], 0
    while at < len(stream):
        size = int.from_bytes(stream[at + 3 : at + 7], "big")
        frames.append(stream[at : at + 8 + size])
        at += 8 + size
    return frames


async def test_a_consumer_that_raises_does_not_stop_the_next_delivery() -> None:
    got: list[bytes] = []

    def consumer(delivery: Delivery) -> None:
        if delivery.body == b"poison":
            raise ValueError("bug")
        got.append(delivery.body)

    tap = DeliveryTap(asyncio.get_running_loop())
    tap.tap(CHANNEL, CONSUMER, consumer)
    tap.feed_data(message(1, b"poison") + message(2, b"fine"))
    assert got == [b"fine"]


async def test_after_untap_deliveries_go_to_aiormq_again() -> None:
    got: list[Delivery] = []
    tap = DeliveryTap(asyncio.get_running_loop())
    tap.tap(CHANNEL, CONSUMER, got.append)
    first, second = message(1, b"tapped"), message(2, b"not tapped")
    tap.feed_data(first + second[:20])  # the second one is split over two chunks
    tap.untap(CHANNEL, CONSUMER)
    tap.feed_data(second[20:])
    assert [d.body for d in got] == [b"tapped"]
    assert await read_all(tap) == second


async def test_a_stream_it_cannot_frame_is_left_whole_to_aiormq() -> None:
    got: list[Delivery] = []
    tap = DeliveryTap(asyncio.get_running_loop())
    tap.tap(CHANNEL, CONSUMER, got.append)
    garbage = b"AMQP\x00\x00\x09\x01"  # a broker that speaks another protocol version
    tap.feed_data(garbage + message(1, b"late"))
    assert got == []
    assert await read_all(tap) == garbage + message(1, b"late")


async def test_only_tapped_frames_for_a_while_still_show_aiormq_a_live_link() -> None:
    tap = DeliveryTap(asyncio.get_running_loop())
    tap.tap(CHANNEL, CONSUMER, lambda _d: None)
    tap._last_passed -= 5  # as if the last frame aiormq saw was 5 s ago
    tap.feed_data(message(1, b"only ours"))
    assert await read_all(tap) == HEARTBEAT


PROPERTIES = [
    {},
    {"content_type": "application/json"},
    {
        "content_type": "application/json; charset=utf-8",
        "content_encoding": "gzip",
        "headers": {"x-stream-offset": 12, "x-timestamp-ms": 1_700_000_000_123, "s": "é"},
        "delivery_mode": 2,
        "priority": 5,
        "correlation_id": "c",
        "reply_to": "r",
        "expiration": "60000",
        "message_id": "m-1",
        "timestamp": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "message_type": "t",
        "user_id": "guest",
        "app_id": "app",
    },
    {  # value types the inline table decoder leaves to pamqp
        "headers": {
            "flag": True,
            "n": 1,
            "f": 1.5,
            "d": Decimal("1.25"),
            "list": [1, "a", {"nested": "x"}],
            "when": datetime(2024, 5, 1, tzinfo=UTC),
            "none": None,
        }
    },
]


@pytest.mark.parametrize("props", PROPERTIES)
def test_properties_decode_as_pamqp_decodes_them(props: dict[str, object]) -> None:
    encoded = header.ContentHeader(0, 0, commands.Basic.Properties(**props)).marshal()  # type: ignore[arg-type]
    ours = parse_properties(encoded, 12)
    theirs = header.ContentHeader()
    theirs.unmarshal(encoded)
    reference = theirs.properties
    for name in Properties.__slots__:
        source = "message_type" if name == "type" else name
        want = getattr(reference, source)
        if name == "timestamp" and want is not None:
            want = int(want.timestamp())
        assert getattr(ours, name) == want, name


async def test_a_delivery_frame_it_cannot_read_leaves_the_stream_to_aiormq() -> None:
    got: list[Delivery] = []
    tap = DeliveryTap(asyncio.get_running_loop())
    tap.tap(CHANNEL, CONSUMER, got.append)
    good = message(1, b"fine")
    # A basic.deliver whose routing-key length runs past the end of its frame.
    payload = b"\x00\x3c\x00\x3c" + bytes([len(CONSUMER)]) + CONSUMER.encode() + b"\x00" * 9
    bad = b"\x01" + CHANNEL.to_bytes(2, "big") + len(payload).to_bytes(4, "big") + payload
    tap.feed_data(good + bad + b"\xce" + good)
    assert [d.body for d in got] == [b"fine"]
    assert await read_all(tap) == bad + b"\xce" + good


async def test_connection_blocked_and_unblocked_are_seen_and_still_passed_on() -> None:
    seen: list[str | None] = []
    tap = DeliveryTap(asyncio.get_running_loop())
    tap.on_blocked = seen.append
    blocked = marshal(commands.Connection.Blocked(reason="low on memory"), 0)
    unblocked = marshal(commands.Connection.Unblocked(), 0)
    feed(tap, blocked + HEARTBEAT + unblocked, 5)
    assert seen == ["low on memory", None]
    assert await read_all(tap) == blocked + HEARTBEAT + unblocked
