"""The raw WebSocket test client's own framing (tests/rawws.py), checked against RFC 6455."""

from __future__ import annotations

import asyncio

import pytest

from tests.rawws import (
    Frame,
    Op,
    accept_key,
    close_payload,
    encode_frame,
    fragments,
    parse_close,
    read_frame,
)


async def decode(wire: bytes) -> list[Frame]:
    reader = asyncio.StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    frames: list[Frame] = []
    while not reader.at_eof():
        frames.append(await read_frame(reader))
    return frames


def test_accept_key_is_the_rfc_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 1.3


def test_rfc_examples_encode_byte_for_byte() -> None:
    # RFC 6455 5.7: an unmasked "Hello", and a 256-byte binary frame's header
    assert encode_frame(Op.TEXT, b"Hello", masked=False) == bytes.fromhex("810548656c6c6f")
    assert encode_frame(Op.BINARY, bytes(256), masked=False)[:4] == bytes.fromhex("827e0100")
    big = encode_frame(Op.BINARY, bytes(65536), masked=False)
    assert big[:10] == bytes.fromhex("827f0000000000010000")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
@pytest.mark.parametrize("masked", [True, False])
async def test_frames_round_trip(size: int, masked: bool) -> None:
    payload = bytes(i % 251 for i in range(size))
    wire = encode_frame(Op.TEXT, payload, fin=False, rsv=0b101, masked=masked)
    assert await decode(wire) == [Frame(Op.TEXT, payload, False, 0b101, masked)]


async def test_fragments_start_with_the_opcode_and_end_with_fin() -> None:
    frames = await decode(b"".join(fragments(Op.TEXT, b"abcdefgh", [3, 2])))
    assert [(f.opcode, f.payload, f.fin) for f in frames] == [
        (Op.TEXT, b"abc", False),
        (Op.CONTINUATION, b"de", False),
        (Op.CONTINUATION, b"fgh", True),
    ]


def test_close_payload_round_trips() -> None:
    assert parse_close(close_payload(4001, "token expired")) == (4001, "token expired")
    assert parse_close(b"") == (None, "")
