"""service.codec: every decode error, and server frames byte for byte."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service import codec
from service.codec import AckedProtocolError
from service.errors import ErrorCode, ProtocolError
from service.model import ClientMessage

# -- downstream bodies ------------------------------------------------------------------------


def test_backbone_body_with_event_and_data() -> None:
    body = b'{"event": "notification_new", "data": {"title": "hi"}}'
    assert codec.decode_backbone_body(body, "x") == ("notification_new", {"title": "hi"})


def test_backbone_body_event_defaults() -> None:
    assert codec.decode_backbone_body(b'{"data": [1, 2]}', "dashboard_update") == (
        "dashboard_update",
        [1, 2],
    )


def test_backbone_body_data_defaults_to_null() -> None:
    assert codec.decode_backbone_body(b'{"event": "ping"}', "x") == ("ping", None)
    assert codec.decode_backbone_body(b"{}", "dflt") == ("dflt", None)


def test_backbone_body_round_trip() -> None:
    data = {"n": 1, "s": "é", "l": [None, True, 1.5]}
    body = codec.encode_backbone_body("dashboard_update", data)
    assert body == b'{"event":"dashboard_update","data":{"n":1,"s":"\xc3\xa9","l":[null,true,1.5]}}'
    assert codec.decode_backbone_body(body, "x") == ("dashboard_update", data)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not JSON"),
        (b"not json", "not JSON"),
        (b'{"event": "x"', "not JSON"),
        (b"\xff\xfe", "not JSON"),  # invalid UTF-8
        (b"[]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"42", "JSON object"),
        (b"null", "JSON object"),
        (b'{"event": 1}', "'event'"),
        (b'{"event": null}', "'event'"),
        (b'{"event": ""}', "'event'"),
        (b'{"event": ["x"]}', "'event'"),
        (b'{"event": "' + b"e" * (codec.MAX_EVENT_NAME + 1) + b'"}', "'event'"),
    ],
)
def test_backbone_body_errors(body: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode_backbone_body(body, "dashboard_update")
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert fragment in info.value.message


def test_backbone_body_event_name_at_the_limit() -> None:
    name = "e" * codec.MAX_EVENT_NAME
    assert codec.decode_backbone_body(orjson.dumps({"event": name}), "x") == (name, None)


# -- client frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"event": "subscribe", "data": {"topics": ["a"]}, "ack": 7}',
         ClientMessage("subscribe", {"topics": ["a"]}, 7)),
        ('{"event": "subscribe"}', ClientMessage("subscribe", None, None)),
        ('{"event": "x", "ack": 0}', ClientMessage("x", None, 0)),
        ('{"event": "x", "ack": null}', ClientMessage("x", None, None)),
        ('{"event": "x", "data": 3, "extra": "ignored"}', ClientMessage("x", 3, None)),
        ('{"event": "x", "ack": 18446744073709551615}', ClientMessage("x", None, 2**64 - 1)),
    ],
)  # fmt: skip
def test_client_frame_decodes(text: str, expected: ClientMessage) -> None:
    assert codec.decode_client_frame(text) == expected
    assert codec.decode_client_frame(text.encode()) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("{'event': 'x'}", "not valid JSON"),
        ('{"event": "x", "data": NaN}', "not valid JSON"),
        ('"\\ud800"', "not valid JSON"),  # a lone surrogate
        ("[]", "JSON object"),
        ('["event", "x"]', "JSON object"),
        ("1", "JSON object"),
        ("null", "JSON object"),
        ('"event"', "JSON object"),
        ('{"event": "x", "ack": -1}', "'ack'"),
        ('{"event": "x", "ack": 1.0}', "'ack'"),
        ('{"event": "x", "ack": 1.5}', "'ack'"),
        ('{"event": "x", "ack": true}', "'ack'"),
        ('{"event": "x", "ack": "1"}', "'ack'"),
        ('{"event": "x", "ack": [1]}', "'ack'"),
        ('{"event": "x", "ack": 18446744073709551616}', "'ack'"),  # beyond u64: a float
    ],
)
def test_client_frame_errors_without_ack(text: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode_client_frame(text)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert fragment in info.value.message
    assert getattr(info.value, "ack", None) is None


def test_client_frame_invalid_utf8_bytes_is_bad_request() -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode_client_frame(b'{"event": "\xff"}')
    assert info.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("payload", "ack"),
    [
        ({"data": 1, "ack": 5}, 5),
        ({"event": "", "ack": 0}, 0),
        ({"event": 3, "ack": 9}, 9),
        ({"event": None, "ack": 2}, 2),
        ({"event": ["x"]}, None),
        ({"event": "e" * (codec.MAX_EVENT_NAME + 1), "ack": 4}, 4),
    ],
)
def test_client_frame_bad_event_keeps_the_ack(payload: dict[str, Any], ack: int | None) -> None:
    with pytest.raises(AckedProtocolError) as info:
        codec.decode_client_frame(orjson.dumps(payload))
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "'event'" in info.value.message
    assert info.value.ack == ack
    assert isinstance(info.value, ProtocolError)


def test_client_frame_event_name_at_the_limit() -> None:
    name = "e" * codec.MAX_EVENT_NAME
    assert codec.decode_client_frame(orjson.dumps({"event": name})).event == name


# -- server frames, byte for byte -------------------------------------------------------------


def test_event_frame_notification() -> None:
    frame = codec.encode_event("notification_new", {"t": "hi"}, "m-1", 1700000000123)
    assert frame == (
        b'{"event":"notification_new","data":{"t":"hi"},"id":"m-1","ts":1700000000123}'
    )


def test_event_frame_dashboard_has_topic() -> None:
    frame = codec.encode_event("dashboard_update", [1], "m-2", 5, topic="sales")
    assert frame == b'{"event":"dashboard_update","data":[1],"id":"m-2","ts":5,"topic":"sales"}'


def test_event_frame_with_offset() -> None:
    frame = codec.encode_event("notification_read", {"id": "n"}, "m-3", 6, offset=42)
    assert frame == (
        b'{"event":"notification_read","data":{"id":"n"},"id":"m-3","ts":6,"offset":42}'
    )


def test_event_frame_offset_zero_and_null_data_are_kept() -> None:
    frame = codec.encode_event("e", None, "i", 0, topic="t", offset=0)
    assert frame == b'{"event":"e","data":null,"id":"i","ts":0,"topic":"t","offset":0}'


def test_event_frame_fields() -> None:
    frame = orjson.loads(codec.encode_event("dashboard_update", {"v": 1}, "id9", 77, topic="ops"))
    assert frame == {"event": "dashboard_update", "data": {"v": 1}, "id": "id9", "ts": 77,
                     "topic": "ops"}  # fmt: skip
    assert "offset" not in frame


def test_event_frame_is_utf8_json_without_escapes() -> None:
    frame = codec.encode_event("e", "é ✓", "i", 1)
    assert "é ✓".encode() in frame
    frame.decode("utf-8")


def test_ack_frame() -> None:
    assert codec.encode_ack(3, {"topics": ["*"]}) == (
        b'{"event":"ack","ack":3,"data":{"topics":["*"]}}'
    )
    assert codec.encode_ack(0, None) == b'{"event":"ack","ack":0,"data":null}'


def test_error_frame_with_ack() -> None:
    frame = codec.encode_error(ErrorCode.FORBIDDEN, "no", 12)
    assert frame == b'{"event":"error","ack":12,"error":{"code":"forbidden","message":"no"}}'


def test_error_frame_without_ack() -> None:
    frame = codec.encode_error(ErrorCode.BAD_REQUEST, "binary frames are not accepted")
    assert frame == (
        b'{"event":"error","error":{"code":"bad_request",'
        b'"message":"binary frames are not accepted"}}'
    )


def test_error_frame_ack_zero_is_kept() -> None:
    assert orjson.loads(codec.encode_error(ErrorCode.INTERNAL, "x", 0))["ack"] == 0


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_frame_for_every_code(code: ErrorCode) -> None:
    frame = orjson.loads(codec.encode_error(code, "m", 1))
    assert frame["error"]["code"] == code.value
    assert set(frame) == {"event", "ack", "error"}


def test_contract_error_codes() -> None:
    assert {c.value for c in ErrorCode} == {
        "bad_request",
        "unknown_event",
        "forbidden",
        "rate_limited",
        "unavailable",
        "internal",
    }


def test_plain_frame() -> None:
    assert codec.encode_plain("resumed", {"recovered": True, "replayed": 2}) == (
        b'{"event":"resumed","data":{"recovered":true,"replayed":2}}'
    )


def test_dumps_and_loads() -> None:
    assert codec.dumps({"a": [1, None]}) == b'{"a":[1,null]}'
    assert codec.loads(b'{"a":[1,null]}') == {"a": [1, None]}
    assert codec.loads('{"a":1}') == {"a": 1}
    with pytest.raises(ValueError):
        codec.loads(b"{")
