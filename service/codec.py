"""JSON on the gateway's hot paths, with orjson: client frames, server frames, backbone bodies.

Server frames are built once per event and the same bytes go to every target socket. (Cold
paths that read files, such as `config.py` reading a JWKS file, use the standard `json`.)
"""

from __future__ import annotations

from typing import Any

import orjson

from service.errors import ErrorCode, ProtocolError
from service.model import ClientMessage

MAX_EVENT_NAME = 64


def decode_backbone_body(body: bytes, default_event: str) -> tuple[str, Any]:
    """Decode a downstream message body `{"event": ..., "data": ...}` into (event, data).

    `event` may be omitted (then `default_event`); `data` may be omitted (then null).
    Raises ProtocolError(bad_request) for anything else.
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "body must be a JSON object")
    event = payload.get("event", default_event)
    if not isinstance(event, str) or not event or len(event) > MAX_EVENT_NAME:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'event' must be a non-empty string")
    return event, payload.get("data")


def encode_backbone_body(event: str, data: Any) -> bytes:
    """The body a service publishes downstream."""
    return orjson.dumps({"event": event, "data": data})


def encode_event(
    event: str,
    data: Any,
    message_id: str,
    ts: int,
    *,
    topic: str | None = None,
    offset: int | None = None,
) -> bytes:
    """A server→client event frame, serialised once for every target."""
    frame: dict[str, Any] = {"event": event, "data": data, "id": message_id, "ts": ts}
    if topic is not None:
        frame["topic"] = topic
    if offset is not None:
        frame["offset"] = offset
    return orjson.dumps(frame)


def encode_ack(ack: int, data: Any) -> bytes:
    """`{"event": "ack", "ack": n, "data": result}`."""
    return orjson.dumps({"event": "ack", "ack": ack, "data": data})


def encode_error(code: ErrorCode, message: str, ack: int | None = None) -> bytes:
    """`{"event": "error", ["ack": n,] "error": {"code": ..., "message": ...}}`."""
    frame: dict[str, Any] = {"event": "error"}
    if ack is not None:
        frame["ack"] = ack
    frame["error"] = {"code": str(code), "message": message}
    return orjson.dumps(frame)


def encode_plain(event: str, data: Any) -> bytes:
    """A control frame with only `event` and `data` (e.g. `resumed`)."""
    return orjson.dumps({"event": event, "data": data})


def frame_offset(frame: bytes) -> int | None:
    """The `offset` of a server→client frame built by `encode_event`, None when it has none."""
    if b'"offset":' not in frame:
        return None
    offset = orjson.loads(frame).get("offset")
    return offset if isinstance(offset, int) else None


def decode_client_frame(text: str | bytes) -> ClientMessage:
    """Decode one client frame; size is already bounded by the transport.

    Raises ProtocolError(bad_request) for non-JSON, non-object, a missing or non-string
    `event`, or an `ack` that is not a non-negative integer. When the object carried a valid
    `ack`, the raised error has it in `.ack` so the answer can name it.
    """
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame must be a JSON object")
    ack = payload.get("ack")
    if ack is not None and (not isinstance(ack, int) or isinstance(ack, bool) or ack < 0):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'ack' must be a non-negative integer")
    event = payload.get("event")
    if not isinstance(event, str) or not event or len(event) > MAX_EVENT_NAME:
        raise AckedProtocolError(ErrorCode.BAD_REQUEST, "'event' must be a non-empty string", ack)
    return ClientMessage(event=event, data=payload.get("data"), ack=ack)


class AckedProtocolError(ProtocolError):
    """A ProtocolError raised after the frame's `ack` was read, so the answer can carry it."""

    def __init__(self, code: ErrorCode, message: str, ack: int | None) -> None:
        super().__init__(code, message)
        self.ack = ack


def dumps(value: Any) -> bytes:
    """JSON-encode a value for HTTP bodies and upstream events."""
    return orjson.dumps(value)


def loads(raw: bytes | str) -> Any:
    """Decode JSON (raises ValueError subclasses on bad input)."""
    return orjson.loads(raw)


def socketio_event_packet(namespace: str, frame: bytes) -> bytes:
    """The Socket.IO EVENT packet for a native frame: `2/<namespace>,["<event>",<data>,<meta>]`.

    The original gateway emitted the publisher's payload itself, so the first argument is the
    frame's `data` (for an `error` frame, its `error` object, `{"code", "message"}`): a handler
    with one parameter reads its fields directly. The second argument is the metadata, every
    other field of the frame: `{"id", "ts", "offset"}` for notifications, `{"id", "ts",
    "topic"}` for dashboard updates, `{}` for `resumed` and `error`. Called once per event per
    namespace, not per socket. (Engine.IO adds its own `4` in front.)
    """
    meta = orjson.loads(frame)
    event = meta.pop("event", None)
    data = meta.pop("error" if event == "error" else "data", None)
    name = event if isinstance(event, str) else "message"
    return b"".join((b"2/", namespace.encode(), b",", orjson.dumps([name, data, meta])))


def socketio_ack_packet(namespace: str, ack: int, data: Any) -> bytes:
    """The Socket.IO ACK packet answering event `ack`: `3/<namespace>,<ack>[<data>]`."""
    return b"".join((b"3/", namespace.encode(), b",", str(ack).encode(), orjson.dumps([data])))
