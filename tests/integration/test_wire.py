"""End to end: the bytes a client reads are the frames aiohttp itself would have sent."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct

import orjson

from tests.conftest import Gateway, mint
from tests.unit.test_wire import aiohttp_bytes

WITHIN_S = 5.0


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One server frame: (its raw bytes, its payload). Server frames are never masked."""
    head = await reader.readexactly(2)
    assert head[1] & 0x80 == 0, "a server frame must not be masked"
    length = head[1] & 0x7F
    ext = b""
    if length == 126:
        ext = await reader.readexactly(2)
        (length,) = struct.unpack("!H", ext)
    elif length == 127:
        ext = await reader.readexactly(8)
        (length,) = struct.unpack("!Q", ext)
    payload = await reader.readexactly(length)
    return head + ext + payload, payload


async def test_delivered_bytes_equal_aiohttp_frames(gateway: Gateway) -> None:
    port = gateway.client.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws/dashboard?access_token={mint('wire')} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        async with asyncio.timeout(WITHIN_S):
            status = await reader.readuntil(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101"), status
        # Small, medium (16-bit length) and large (64-bit length) events, published
        # back to back so the gateway coalesces some of them into one write.
        sizes = [20, 300, 70_000]
        for n in sizes:
            await gateway.publish("dashboard.sales", {"blob": "é" * n})
        raw = bytearray()
        payloads = []
        async with asyncio.timeout(WITHIN_S):
            for _ in sizes:
                frame, payload = await read_frame(reader)
                raw += frame
                payloads.append(payload)
        assert [len(orjson.loads(p)["data"]["blob"]) for p in payloads] == sizes
        assert bytes(raw) == b"".join([await aiohttp_bytes(p) for p in payloads])
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
