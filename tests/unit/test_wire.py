"""The WebSocket fast path writes exactly the bytes aiohttp's own writer would send."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.http_websocket import WebSocketWriter

from service.transports.wire import WireFramer, text_frame

wire = WireFramer().wire

SIZES = [0, 1, 2, 125, 126, 127, 200, 1000, 65535, 65536, 65537, 200_000]


class CaptureTransport:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: Any) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False


class IdleProtocol:
    _paused = False


async def aiohttp_bytes(payload: bytes) -> bytes:
    """What aiohttp's server-side writer (no mask, no compression) puts on the wire."""
    transport = CaptureTransport()
    writer = WebSocketWriter(
        IdleProtocol(),  # type: ignore[arg-type]
        transport,  # type: ignore[arg-type]
        use_mask=False,
        limit=1 << 30,
        compress=0,
    )
    await writer.send_frame(payload, WSMsgType.TEXT)
    return bytes(transport.data)


def payload_of(size: int) -> bytes:
    text = ('{"event":"dashboard_update","data":"' + "é€x" * size)[: max(size, 0)]
    raw = text.encode()[:size]
    return raw.ljust(size, b"x")


@pytest.mark.parametrize("size", SIZES)
async def test_text_frame_is_byte_identical_to_aiohttp(size: int) -> None:
    payload = payload_of(size)
    expected = await aiohttp_bytes(payload)
    assert text_frame(payload) == expected
    assert wire(payload) == expected
    assert wire(payload) == expected  # memoised copy too


async def test_coalesced_frames_equal_aiohttp_frames_back_to_back() -> None:
    payloads = [payload_of(n) for n in (10, 300, 70_000, 0)]
    expected = b"".join([await aiohttp_bytes(p) for p in payloads])
    assert b"".join(wire(p) for p in payloads) == expected
