"""A raw RFC 6455 client for black-box tests of the WebSocket server, on asyncio streams.

It speaks the handshake by hand and builds every frame itself, so tests can send what no
well-behaved client library would (unmasked frames, RSV bits, oversized control frames,
fragments split anywhere, frames in the same write as the upgrade request) and see exactly
what the server answers, frame by frame, down to the TCP close. It knows nothing of the
gateway's JSON protocol beyond `send_json` / `recv_json`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any

import orjson

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFAULT_WITHIN_S = 5.0


class Op(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as it came off the wire (payload unmasked)."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = False

    def close_status(self) -> tuple[int | None, str]:
        """The code and reason of a close frame (code None: an empty close frame)."""
        assert self.opcode == Op.CLOSE, f"not a close frame: {self!r}"
        return parse_close(self.payload)

    def json(self) -> Any:
        """The payload of a text frame, parsed as JSON."""
        assert self.opcode == Op.TEXT, f"expected a text frame, got {self!r}"
        return orjson.loads(self.payload)


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` a server must answer to `key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + ACCEPT_GUID).digest()).decode()


def apply_mask(key: bytes, data: bytes) -> bytes:
    """`data` XOR the repeated 4-byte `key` (masking and unmasking are the same)."""
    n = len(data)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
) -> bytes:
    """One frame's bytes. Anything goes: any opcode, RSV bits, control frames of any size."""
    first = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + apply_mask(key, payload)


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame: the code, big-endian, then the UTF-8 reason."""
    return struct.pack("!H", code) + reason.encode()


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """(code, reason) of a close payload; (None, "") for an empty one."""
    if not payload:
        return None, ""
    assert len(payload) >= 2, f"a close payload of one byte: {payload!r}"
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


def fragments(opcode: int, payload: bytes, sizes: list[int]) -> list[bytes]:
    """`payload` as one message in fragments of `sizes` bytes (the last takes the rest)."""
    parts: list[bytes] = []
    offset = 0
    for size in sizes:
        parts.append(payload[offset : offset + size])
        offset += size
    parts.append(payload[offset:])
    return [
        encode_frame(opcode if i == 0 else Op.CONTINUATION, part, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    ]


def upgrade_request(host: str, port: int, path: str, key: str, headers: dict[str, str]) -> bytes:
    """The HTTP/1.1 upgrade request, headers in order, ending with the blank line."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """The next frame from `reader` (IncompleteReadError at EOF)."""
    read = reader.readexactly
    first, second = await read(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await read(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await read(8))
    masked = bool(second & 0x80)
    key = await read(4) if masked else b""
    payload = await read(length)
    if masked:
        payload = apply_mask(key, payload)
    return Frame(first & 0xF, payload, bool(first & 0x80), (first >> 4) & 0x7, masked)


class HandshakeFailed(AssertionError):
    """The server did not answer the upgrade with a valid 101."""


class RawWebSocket:
    """A client connection after a successful handshake: write bytes, read frames."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        response_headers: dict[str, str],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.response_headers = response_headers

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        early: bytes = b"",
        within: float = DEFAULT_WITHIN_S,
    ) -> RawWebSocket:
        """Open TCP, upgrade, check the 101 and `Sec-WebSocket-Accept`.

        `early`: bytes (frames) sent in the same write as the request, right after its headers.
        """
        key = base64.b64encode(os.urandom(16)).decode()
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(upgrade_request(host, port, path, key, headers or {}) + early)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except BaseException:
                writer.transport.abort()
                raise
        status, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        response_headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        problem = None
        if status.split(" ")[1:2] != ["101"]:
            problem = f"status line {status!r}"
        elif response_headers.get("upgrade", "").lower() != "websocket":
            problem = f"Upgrade: {response_headers.get('upgrade')!r}"
        elif "upgrade" not in response_headers.get("connection", "").lower():
            problem = f"Connection: {response_headers.get('connection')!r}"
        elif response_headers.get("sec-websocket-accept") != accept_key(key):
            problem = f"Sec-WebSocket-Accept: {response_headers.get('sec-websocket-accept')!r}"
        if problem is not None:
            writer.transport.abort()
            raise HandshakeFailed(f"bad upgrade answer, {problem}: {head!r}")
        return cls(reader, writer, response_headers)

    # -- sending -----------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Raw bytes to the server, as one write."""
        self.writer.write(data)
        await self.writer.drain()

    async def write_bytewise(self, data: bytes) -> None:
        """Raw bytes one at a time, yielding to the loop between them (one segment each)."""
        for index in range(len(data)):
            self.writer.write(data[index : index + 1])
            await self.writer.drain()
            await asyncio.sleep(0)

    async def send(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv: int = 0,
        masked: bool = True,
    ) -> None:
        """One frame (see `encode_frame`)."""
        await self.write(encode_frame(opcode, payload, fin=fin, rsv=rsv, masked=masked))

    async def send_json(self, message: Any) -> None:
        """One text frame holding `message` as JSON."""
        await self.send(Op.TEXT, orjson.dumps(message))

    async def send_close(self, code: int | None = None, reason: str = "") -> None:
        """A close frame; `code` None sends an empty one."""
        await self.send(Op.CLOSE, b"" if code is None else close_payload(code, reason))

    # -- receiving ---------------------------------------------------------------------------

    async def recv(self, within: float = DEFAULT_WITHIN_S) -> Frame:
        """The next frame, whatever it is; fails after `within` seconds or at EOF."""
        async with asyncio.timeout(within):
            return await self._read_frame()

    async def _read_frame(self) -> Frame:
        return await read_frame(self.reader)

    async def recv_data(self, within: float = DEFAULT_WITHIN_S, *, answer_pings: bool) -> Frame:
        """The next data frame, passing over pings: answered with a pong, or ignored."""
        async with asyncio.timeout(within):
            while (frame := await self._read_frame()).opcode == Op.PING:
                if answer_pings:
                    await self.send(Op.PONG, frame.payload)
        return frame

    async def recv_split(
        self, count: int, within: float = DEFAULT_WITHIN_S
    ) -> tuple[list[Frame], list[Frame]]:
        """The next `count` frames as (data frames, control frames), each list in wire order.

        For answers whose relative order is not guaranteed: a pong may overtake the acks of
        messages that came before its ping.
        """
        data: list[Frame] = []
        control: list[Frame] = []
        async with asyncio.timeout(within):
            for _ in range(count):
                frame = await self._read_frame()
                (control if frame.opcode >= Op.CLOSE else data).append(frame)
        return data, control

    async def recv_json(self, within: float = DEFAULT_WITHIN_S) -> Any:
        """The next frame, which must be a text frame, parsed as JSON."""
        return (await self.recv(within)).json()

    async def request(
        self, event: str, data: Any = None, ack: int = 1, within: float = DEFAULT_WITHIN_S
    ) -> Any:
        """Send an event with an ack id; the next frame must be its answer (ack or error)."""
        await self.send_json({"event": event, "data": data, "ack": ack})
        answer = await self.recv_json(within)
        assert answer.get("ack") == ack, f"expected the answer to ack {ack}, got {answer!r}"
        return answer

    async def expect_close(self, within: float = DEFAULT_WITHIN_S) -> tuple[int | None, str]:
        """The next frame must be a close frame; returns its (code, reason)."""
        frame = await self.recv(within)
        assert frame.opcode == Op.CLOSE, f"expected a close frame, got {frame!r}"
        assert not frame.masked, "a server must not mask its frames"
        return frame.close_status()

    async def expect_eof(self, within: float = DEFAULT_WITHIN_S) -> str:
        """Wait until the server closes TCP; "eof" (FIN) or "reset" (RST).

        Fails on any byte that arrives instead, and after `within` seconds.
        """
        try:
            async with asyncio.timeout(within):
                data = await self.reader.read(65536)
        except ConnectionResetError:
            return "reset"
        assert data == b"", f"expected the server to close TCP, got bytes {data!r}"
        return "eof"

    async def frames_until_eof(self, within: float) -> list[Frame]:
        """Every frame the server sends until it closes TCP, which must happen in `within`."""
        frames: list[Frame] = []
        async with asyncio.timeout(within):
            while True:
                try:
                    frames.append(await self._read_frame())
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise AssertionError(f"TCP closed mid-frame after {exc.partial!r}") from exc
                    return frames
                except ConnectionResetError:
                    return frames

    async def stays_open(self, within: float) -> bool:
        """True when, for `within` seconds, the server neither sends a byte nor closes TCP."""
        try:
            async with asyncio.timeout(within):
                data = await self.reader.read(1)
        except TimeoutError:
            return True
        raise AssertionError(f"expected silence, got {data!r} (b'' is EOF)")

    async def abort(self) -> None:
        """Drop the TCP connection at once (no closing handshake)."""
        self.writer.transport.abort()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
