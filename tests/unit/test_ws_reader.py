"""FrameReader: RFC 6455 client frames, every chunking, every breach with its close code."""

from __future__ import annotations

import os
import struct

import pytest

from service.transports.ws_reader import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
)

MAX = 1000


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """A client frame as a browser would send it (masked with a random key)."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Recorder:
    """A FrameSink that writes down what it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def on_text(self, text: str) -> None:
        self.seen.append(("text", text))

    def on_binary(self, data: bytes) -> None:
        self.seen.append(("binary", data))

    def on_ping(self, payload: bytes) -> None:
        self.seen.append(("ping", payload))

    def on_pong(self, payload: bytes) -> None:
        self.seen.append(("pong", payload))

    def on_close(self, code: int, reason: str) -> None:
        self.seen.append(("close", (code, reason)))


def feed(data: bytes, chunk: int | None = None, max_size: int = MAX) -> list[tuple[str, object]]:
    reader = FrameReader(max_size)
    sink = Recorder()
    step = chunk or len(data) or 1
    for start in range(0, len(data), step):
        reader.feed(data[start : start + step], sink)
    return sink.seen


def code_of(data: bytes, max_size: int = MAX) -> int:
    with pytest.raises(FrameError) as info:
        feed(data, max_size=max_size)
    return info.value.code


STREAM = (
    frame(OP_TEXT, '{"event":"x","data":"é"}'.encode())
    + frame(OP_PING, b"p1")
    + frame(OP_TEXT, b"frag", fin=False)
    + frame(OP_PONG, b"")
    + frame(OP_CONTINUATION, b"men", fin=False)
    + frame(OP_PING, b"")
    + frame(OP_CONTINUATION, b"ted")
    + frame(OP_BINARY, b"\x00\x01")
    + frame(OP_TEXT, b"y" * 300)  # 16-bit length
    + frame(OP_TEXT, b"")
)
EXPECTED = [
    ("text", '{"event":"x","data":"é"}'),
    ("ping", b"p1"),
    ("pong", b""),
    ("ping", b""),
    ("text", "fragmented"),
    ("binary", b"\x00\x01"),
    ("text", "y" * 300),
    ("text", ""),
]


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7, 64])
def test_every_chunking_gives_the_same_messages(chunk: int | None) -> None:
    assert feed(STREAM, chunk) == EXPECTED


def test_a_64_bit_length_frame_is_read() -> None:
    payload = b"z" * 70000
    assert feed(frame(OP_TEXT, payload), 4096, max_size=100_000) == [("text", payload.decode())]


def test_a_message_of_exactly_the_limit_is_accepted_one_more_byte_is_1009() -> None:
    assert feed(frame(OP_TEXT, b"a" * MAX)) == [("text", "a" * MAX)]
    assert code_of(frame(OP_TEXT, b"a" * (MAX + 1))) == 1009
    split = frame(OP_TEXT, b"a" * 600, fin=False) + frame(OP_CONTINUATION, b"a" * 401)
    assert code_of(split) == 1009


def test_a_too_big_frame_is_refused_from_its_header_before_its_payload_arrives() -> None:
    reader = FrameReader(MAX)
    header = frame(OP_TEXT, length=1 << 40)[:10]  # claims a terabyte, sends only the header
    with pytest.raises(FrameError) as info:
        reader.feed(header, Recorder())
    assert info.value.code == 1009


def test_invalid_utf8_is_1007_even_split_across_fragments() -> None:
    assert code_of(frame(OP_TEXT, b"\xff\xfe")) == 1007
    euro = "€".encode()
    assert feed(frame(OP_TEXT, euro[:1], fin=False) + frame(OP_CONTINUATION, euro[1:])) == [
        ("text", "€")
    ]
    assert code_of(frame(OP_TEXT, euro[:2], fin=False) + frame(OP_CONTINUATION, b"x")) == 1007


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (frame(OP_TEXT, b"x", masked=False), "unmasked"),
        (frame(OP_TEXT, b"x", rsv=4), "reserved bits"),
        (frame(0x3, b"x"), "unknown data opcode"),
        (frame(0xB, b"x"), "unknown control opcode"),
        (frame(OP_CONTINUATION, b"x"), "continuation without a start"),
        (frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"), "new message inside one"),
        (frame(OP_PING, b"x" * 126), "control frame over 125 bytes"),
        (frame(OP_PING, b"x", fin=False), "fragmented control frame"),
        (frame(OP_CLOSE, b"\x03"), "one-byte close payload"),
        (frame(OP_CLOSE, struct.pack("!H", 1005)), "close code 1005 on the wire"),
        (frame(OP_CLOSE, struct.pack("!H", 999)), "close code below 1000"),
        (frame(OP_CLOSE, struct.pack("!H", 2999)), "reserved close code"),
    ],
)
def test_protocol_breaches_are_1002(data: bytes, why: str) -> None:
    assert code_of(data) == 1002, why


def test_close_frames_give_code_and_reason_and_stop_the_parse() -> None:
    close = frame(OP_CLOSE, struct.pack("!H", 4000) + "bye é".encode())
    assert feed(close + frame(OP_TEXT, b"after")) == [("close", (4000, "bye é"))]
    assert feed(frame(OP_CLOSE)) == [("close", (1005, ""))]
    assert code_of(frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff")) == 1007


def test_a_reader_keeps_only_the_unparsed_tail() -> None:
    reader = FrameReader(MAX)
    sink = Recorder()
    data = frame(OP_TEXT, b"hello")
    reader.feed(data + data[:3], sink)
    assert sink.seen == [("text", "hello")]
    reader.feed(data[3:], sink)
    assert sink.seen == [("text", "hello"), ("text", "hello")]
