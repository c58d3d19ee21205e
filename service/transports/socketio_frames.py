"""Socket.IO v4 packets as the gateway builds and reads them (the transport's framing).

Outbound: each native event frame becomes one Socket.IO EVENT packet per namespace, shared by
every socket it goes to (`PacketEncoder`), with its Engine.IO packet and, on the fast path,
its WebSocket frame built once (`ws_wire`). Acks and errors answer in the same packets
(`DIALECT`). Inbound: a client event becomes a `ClientMessage` (`decode_event`).
"""

from __future__ import annotations

from typing import Any, cast

from engineio import packet as eio_packet

from service import codec
from service.errors import ErrorCode, ProtocolError
from service.model import ClientMessage, Namespace
from service.transports.connection import Dialect
from service.transports.wire import text_frame

TRANSPORT = "socketio"


class SocketIOFrame(bytes):
    """A Socket.IO packet as the session buffers it, with the Engine.IO packet to send.

    The bytes are the Socket.IO packet (what the session counts against its budget); `packet`
    is one `engineio.packet.Packet` shared by every socket the frame goes to, which encodes
    itself once and caches the result.
    """

    packet: Any
    wire: bytes  # its WebSocket frame, once the fast path framed it (see ws_wire)

    @classmethod
    def of(cls, text: bytes) -> SocketIOFrame:
        """Wrap a Socket.IO packet's UTF-8 text."""
        frame = cls(text)
        frame.packet = eio_packet.Packet(eio_packet.MESSAGE, data=text.decode())
        return frame


class PacketEncoder:
    """Native frame → Socket.IO frame for one namespace; the session's `encoder`.

    It remembers the last frame it saw: the fan-out pushes the same frame object to every
    target, so each event is encoded once for all Socket.IO sessions of the namespace.
    Frames that are already Socket.IO frames (acks) pass through.
    """

    __slots__ = ("_last_frame", "_last_packet", "_namespace", "encoded")

    def __init__(self, namespace: Namespace) -> None:
        self._namespace = str(namespace)
        self._last_frame: bytes | None = None
        self._last_packet = SocketIOFrame()
        self.encoded = 0  # how many frames were encoded (for tests and benchmarks)

    def __call__(self, frame: bytes) -> bytes:
        if frame is self._last_frame:
            return self._last_packet
        if isinstance(frame, SocketIOFrame):
            return frame
        packet = SocketIOFrame.of(codec.socketio_event_packet(self._namespace, frame))
        self._last_frame, self._last_packet = frame, packet
        self.encoded += 1
        return packet


def ws_wire(frame: bytes) -> bytes:
    """The WebSocket bytes of a SocketIOFrame, framed once and kept on the shared frame."""
    wire: bytes | None = getattr(frame, "wire", None)
    if wire is None:
        wire = text_frame(b"4" + frame)
        cast(SocketIOFrame, frame).wire = wire
    return wire


def _ack(namespace: Namespace, ack: int, data: Any) -> bytes:
    return SocketIOFrame.of(codec.socketio_ack_packet(str(namespace), ack, data))


def _error(namespace: Namespace, code: ErrorCode, message: str, ack: int | None) -> bytes:
    """An `error` event, or the ack of the failed event: `{"error": {"code", "message"}}`."""
    if ack is None:
        return codec.encode_error(code, message)  # the session's PacketEncoder makes it an EVENT
    return _ack(namespace, ack, {"error": {"code": str(code), "message": message}})


DIALECT = Dialect(TRANSPORT, _ack, _error)


def decode_event(event: Any, args: list[Any]) -> ClientMessage:
    """The client event `event(*args)`; ProtocolError(bad_request) when the gateway takes none.

    Only the first argument is the event's data; binary attachments are refused.
    """
    if not isinstance(event, str) or not event or len(event) > codec.MAX_EVENT_NAME:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the event name must be a string")
    data = args[0] if args else None
    if _contains_binary(data):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "binary data is not accepted")
    return ClientMessage(event, data)


def _contains_binary(value: Any) -> bool:
    """Whether a decoded Socket.IO argument holds binary attachments (bytes)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes | bytearray):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
