"""`FrameReader`: RFC 6455 client frames sliced from the socket's bytes, for `ws_socket`.

What aiohttp's WebSocketReader guaranteed, kept here: client frames must be masked and carry
no reserved bits (no extension is negotiated); control frames are final and at most 125 bytes;
fragments follow the rules of section 5.4 and control frames may come between them; a message
whose size passes the limit is refused as soon as its header says so (1009), before its bytes
are buffered; text must be UTF-8 (1007); close codes are checked (section 7.4). Every breach
raises `FrameError` with the close code to send.

The reader keeps no object per frame: its state is three slots and the unparsed tail of the
last read. Payloads are unmasked by aiohttp's compiled `websocket_mask`.
"""

from __future__ import annotations

import struct
from typing import Protocol

from aiohttp._websocket.helpers import websocket_mask

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
TOO_BIG = 1009
NO_STATUS = 1005  # what a close frame without a code means; never on the wire (7.4.1)
CONTROL_MAX = 125
# Codes a peer may send (RFC 6455 7.4.1 and the IANA registry); 3000-4999 are applications'.
_PEER_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

_U16 = struct.Struct("!H").unpack_from
_U64 = struct.Struct("!Q").unpack_from


class FrameError(Exception):
    """A client broke the protocol: close the connection with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameSink(Protocol):
    """What the reader hands complete messages and control frames to."""

    def on_text(self, text: str) -> None:
        """A complete text message, UTF-8 checked."""

    def on_binary(self, data: bytes) -> None:
        """A complete binary message."""

    def on_ping(self, payload: bytes) -> None:
        """A ping: answer it with a pong carrying `payload`."""

    def on_pong(self, payload: bytes) -> None:
        """A pong."""

    def on_close(self, code: int, reason: str) -> None:
        """The peer's close frame (`code` 1005 when it carried none)."""


class FrameReader:
    """Parses the client's byte stream into messages for a `FrameSink`.

    `max_size` is the largest message accepted, in bytes (one more closes with 1009).
    """

    __slots__ = ("_fragments", "_max_size", "_opcode", "_tail")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._tail = b""  # bytes of a frame not complete yet
        self._opcode = 0  # the data opcode of the fragmented message being read, 0 if none
        self._fragments: list[bytes] | None = None  # that message's payloads so far

    def feed(self, data: bytes, sink: FrameSink) -> None:
        """Parse `data` (what the socket just read); raise FrameError on a breach.

        Stops early once the sink saw a close frame; what follows it is ignored.
        """
        if self._tail:
            data = self._tail + data
            self._tail = b""
        end = len(data)
        pos = 0
        while end - pos >= 2:
            first = data[pos]
            second = data[pos + 1]
            if first & 0x70:
                raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension negotiated)")
            if not second & 0x80:
                raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
            opcode = first & 0x0F
            fin = first & 0x80
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if end - start < 2:
                    break
                length = _U16(data, start)[0]
                start += 2
            elif length == 127:
                if end - start < 8:
                    break
                length = _U64(data, start)[0]
                start += 8
            if opcode >= OP_CLOSE:
                if not fin:
                    raise FrameError(PROTOCOL_ERROR, "fragmented control frame")
                if length > CONTROL_MAX:
                    raise FrameError(PROTOCOL_ERROR, "control frame longer than 125 bytes")
            else:
                self._check_size(length)
            stop = start + 4 + length
            if stop > end:
                break
            payload = data[start + 4 : stop]
            if length:
                unmasked = bytearray(payload)
                websocket_mask(data[start : start + 4], unmasked)
                payload = bytes(unmasked)
            pos = stop
            if opcode == OP_CLOSE:
                sink.on_close(*_close_payload(payload))
                return
            self._frame(opcode, bool(fin), payload, sink)
        if pos < end:
            self._tail = data[pos:]

    def _check_size(self, length: int) -> None:
        fragments = self._fragments
        size = length + (sum(map(len, fragments)) if fragments else 0)
        if size > self._max_size:
            raise FrameError(TOO_BIG, f"message larger than {self._max_size} bytes")

    def _frame(self, opcode: int, fin: bool, payload: bytes, sink: FrameSink) -> None:
        if opcode == OP_PING:
            sink.on_ping(payload)
        elif opcode == OP_PONG:
            sink.on_pong(payload)
        elif opcode == OP_CONTINUATION:
            fragments = self._fragments
            if fragments is None:
                raise FrameError(PROTOCOL_ERROR, "continuation frame without a message")
            fragments.append(payload)
            if fin:
                opcode, self._opcode, self._fragments = self._opcode, 0, None
                _deliver(opcode, b"".join(fragments), sink)
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                raise FrameError(PROTOCOL_ERROR, "new message before the fragmented one ended")
            if fin:
                _deliver(opcode, payload, sink)
            else:
                self._opcode = opcode
                self._fragments = [payload]
        else:
            raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")


def _deliver(opcode: int, payload: bytes, sink: FrameSink) -> None:
    if opcode == OP_BINARY:
        sink.on_binary(payload)
        return
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "invalid UTF-8 in a text message") from None
    sink.on_text(text)


def _close_payload(payload: bytes) -> tuple[int, str]:
    if not payload:
        return NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = _U16(payload)[0]
    if code not in _PEER_CLOSE_CODES and not 3000 <= code <= 4999:
        raise FrameError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        return code, payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "invalid UTF-8 in a close reason") from None
