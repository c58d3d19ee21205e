"""Socket.IO packets from native frames, and encoding once per transport. No I/O."""

from __future__ import annotations

import orjson

from service import codec, routing
from service.errors import ErrorCode
from service.hub import Hub
from service.model import Namespace, Principal
from service.session import Session
from service.transports.socketio_frames import PacketEncoder, SocketIOFrame, ws_wire
from service.transports.wire import text_frame


def _args(packet: bytes, prefix: bytes) -> object:
    assert packet.startswith(prefix), packet[:40]
    return orjson.loads(packet[len(prefix) :])


def test_event_packet_carries_the_data_then_the_metadata() -> None:
    frame = codec.encode_event("dashboard_update", {"sales": 1}, "id-1", 5, topic="sales")
    packet = codec.socketio_event_packet("dashboard", frame)
    meta = {"id": "id-1", "ts": 5, "topic": "sales"}
    assert _args(packet, b"2/dashboard,") == ["dashboard_update", {"sales": 1}, meta]


def test_notification_metadata_has_the_offset() -> None:
    frame = codec.encode_event("notification_new", {"title": "hi"}, "n-1", 7, offset=3)
    packet = codec.socketio_event_packet("notifications", frame)
    meta = {"id": "n-1", "ts": 7, "offset": 3}
    assert _args(packet, b"2/notifications,") == ["notification_new", {"title": "hi"}, meta]


def test_data_of_any_json_type_is_the_first_argument() -> None:
    for data in [None, "text", 12, [1, 2], {"nested": {"a": [True]}}]:
        frame = codec.encode_event("notification_new", data, "i", 1, offset=1)
        packet = codec.socketio_event_packet("notifications", frame)
        assert _args(packet, b"2/notifications,") == [
            "notification_new",
            data,
            {"id": "i", "ts": 1, "offset": 1},
        ]


def test_resumed_and_error_events_carry_their_object_and_empty_metadata() -> None:
    resumed = codec.encode_plain("resumed", {"recovered": True, "replayed": 2})
    assert _args(codec.socketio_event_packet("notifications", resumed), b"2/notifications,") == [
        "resumed",
        {"recovered": True, "replayed": 2},
        {},
    ]
    error = codec.encode_error(ErrorCode.UNKNOWN_EVENT, "no such event")
    assert _args(codec.socketio_event_packet("dashboard", error), b"2/dashboard,") == [
        "error",
        {"code": "unknown_event", "message": "no such event"},
        {},
    ]


def test_event_names_that_need_escaping_still_make_valid_packets() -> None:
    for name in ['say "hi"', "back\\slash", "é", "tab\t"]:
        frame = codec.encode_event(name, None, "i", 1)
        packet = codec.socketio_event_packet("notifications", frame)
        assert _args(packet, b"2/notifications,") == [name, None, {"id": "i", "ts": 1}]


def test_frames_not_built_by_the_codec_are_parsed() -> None:
    frame = orjson.dumps({"data": 1, "event": "late_key"})
    packet = codec.socketio_event_packet("dashboard", frame)
    assert _args(packet, b"2/dashboard,") == ["late_key", 1, {}]


def test_ack_packet() -> None:
    packet = codec.socketio_ack_packet("notifications", 12, {"id": "n"})
    assert packet == b'3/notifications,12[{"id":"n"}]'


def _session(encoder: PacketEncoder | None, user: str, budget: int = 1 << 20) -> Session:
    return Session(
        principal=Principal(sub=user),
        namespace=Namespace.NOTIFICATIONS,
        send_queue_bytes=budget,
        transport="socketio" if encoder else "ws",
        encoder=encoder,
    )


async def test_fanout_encodes_once_per_transport_not_once_per_socket() -> None:
    hub = Hub()
    encoder = PacketEncoder(Namespace.NOTIFICATIONS)
    sio = [_session(encoder, str(n)) for n in range(3)]
    native = _session(None, "native")
    for session in [*sio, native]:
        hub.add(session)
    route = routing.parse(routing.BROADCAST_KEY)
    assert route is not None
    frame = codec.encode_event("notification_new", {"n": 1}, "id", 1, offset=1)

    assert hub.fanout(route, frame) == (4, 0)

    assert encoder.encoded == 1
    batches = [await s.next_batch() for s in sio]
    assert all(b is not None and len(b) == 1 for b in batches)
    packets = [b[0] for b in batches if b]
    assert all(p is packets[0] for p in packets)  # one object shared by every socket
    assert isinstance(packets[0], SocketIOFrame)
    assert packets[0].packet.encode() == "4" + packets[0].decode()
    assert await native.next_batch() == [frame]


def test_the_budget_counts_the_encoded_packet() -> None:
    encoder = PacketEncoder(Namespace.NOTIFICATIONS)
    frame = codec.encode_event("notification_new", "x" * 100, "id", 1)
    encoded = len(codec.socketio_event_packet("notifications", frame))
    session = _session(encoder, "1", budget=encoded * 2)
    assert session.push(frame)
    assert session.pending_bytes == encoded
    assert session.push(frame)
    assert not session.push(frame)
    assert session.close_code == 4008


def test_socketio_frames_pass_through_the_encoder() -> None:
    encoder = PacketEncoder(Namespace.DASHBOARD)
    ack = SocketIOFrame.of(codec.socketio_ack_packet("dashboard", 1, None))
    assert encoder(ack) is ack
    assert encoder.encoded == 0


def test_the_websocket_wire_is_engine_ios_encoding_framed_once() -> None:
    for size in (10, 200, 70_000):  # the three WebSocket length encodings
        frame = codec.encode_event("notification_new", {"pad": "x" * size}, "i", 1)
        packet = SocketIOFrame.of(codec.socketio_event_packet("notifications", frame))
        wire = ws_wire(packet)
        # What Engine.IO's own writer would send for this packet, as one TEXT frame.
        assert wire == text_frame(packet.packet.encode().encode())
        assert ws_wire(packet) is wire  # framed once, kept on the shared frame
