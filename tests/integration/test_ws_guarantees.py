"""What the native WebSocket transport guarantees on the wire, pinned down black-box.

Every test talks to a gateway over a real TCP socket with `tests.rawws` (hand-built frames,
hand-read answers), so it holds for any server behind `GET /ws/{namespace}`. Written against
aiohttp's `WebSocketResponse` and kept for the protocol that replaced it
(`service/transports/ws_socket.py`), which also fixes what aiohttp did against the RFC: it
closed TCP before the client answered a server close (the client got an RST), and it took
unmasked client frames and close code 1006. Close codes are the contract's (section 3) or
RFC 6455's (1002 protocol error).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import trustme

from tests.broker import TcpProxy
from tests.conftest import Gateway, GatewayFactory, mint, receive, request
from tests.rawws import (
    Op,
    RawWebSocket,
    close_payload,
    encode_frame,
    fragments,
)

PROTOCOL_ERROR = 1002  # RFC 6455 7.4.1; the contract has no code of its own for it
PROMPT_S = 1.0  # how soon "promptly" is: the server closes TCP within this
HEARTBEAT_S = 0.4
MARGIN_S = 0.6  # scheduling slack on a shared 2-core machine, on top of the contract's times

RawConnect = Callable[..., Awaitable[RawWebSocket]]


@pytest.fixture
async def raw(gateway: Gateway) -> AsyncIterator[RawConnect]:
    """Factory: `await raw(namespace="dashboard", user="1")` → a RawWebSocket to the default
    test gateway (see `RawClients.connect`). Every socket is dropped at teardown."""
    async with RawClients(gateway) as connect:
        yield connect


class RawClients:
    """`async with RawClients(gateway) as connect`: RawWebSockets to `gateway`, all aborted
    on exit."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.opened: list[RawWebSocket] = []

    async def connect(
        self,
        namespace: str = "dashboard",
        *,
        user: str = "1",
        early: bytes = b"",
    ) -> RawWebSocket:
        """A RawWebSocket to `/ws/{namespace}` with a bearer token for `user`; `early`: bytes
        sent in the same write as the upgrade request."""
        headers = {"Authorization": f"Bearer {mint(user)}"}
        host, port = address(self.gateway)
        ws = await RawWebSocket.connect(
            host, port, f"/ws/{namespace}", headers=headers, early=early
        )
        self.opened.append(ws)
        return ws

    async def __aenter__(self) -> RawConnect:
        return self.connect

    async def __aexit__(self, *exc: object) -> None:
        for ws in self.opened:
            await ws.abort()


def address(gateway: Gateway) -> tuple[str, int]:
    """The host and port the gateway listens on."""
    client = gateway.client
    assert client.port is not None
    return client.host, client.port


def event(name: str, data: Any = None, ack: int = 1) -> bytes:
    """A client event as JSON bytes."""
    return orjson.dumps({"event": name, "data": data, "ack": ack})


def padded_event(size: int, ack: int = 1) -> bytes:
    """An `unsubscribe` event (always acked) padded to exactly `size` bytes of JSON."""
    head = b'{"event":"unsubscribe","ack":%d,"data":{"topics":["sales"]},"pad":"' % ack
    body = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(body) == size
    return body


async def assert_ack(ws: RawWebSocket, ack: int = 1) -> None:
    """The next frame is the ack of `ack`."""
    answer = await ws.recv_json()
    assert (answer["event"], answer["ack"]) == ("ack", ack), answer


async def assert_fails(ws: RawWebSocket, code: int) -> None:
    """The server closes with `code`, then closes TCP promptly (FIN, or RST when it left
    the rest of a bad write unread)."""
    assert (await ws.expect_close())[0] == code
    await ws.expect_eof(PROMPT_S)


# -- closing handshake ---------------------------------------------------------------------


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (4000, "bye for now")])
async def test_client_close_is_answered_then_tcp_closes(
    raw: RawConnect, code: int, reason: str
) -> None:
    ws = await raw()
    await ws.send_close(code, reason)
    answered, _ = await ws.expect_close()
    # RFC 6455 5.5.1: the answer typically echoes the code; aiohttp answers 1000.
    assert answered in (1000, code)
    assert await ws.expect_eof(PROMPT_S) == "eof"


async def test_empty_client_close_is_answered_then_tcp_closes(raw: RawConnect) -> None:
    ws = await raw()
    await ws.send_close(None)
    answered, _ = await ws.expect_close()
    assert answered in (None, 1000)
    assert await ws.expect_eof(PROMPT_S) == "eof"


ServerClose = Callable[[Gateway], asyncio.Task[None] | None]  # starts it; the task, if any


def _expire(gateway: Gateway) -> None:
    gateway.node.expire_tokens(time.time() + 7200)  # the test token lives an hour


def _drain(gateway: Gateway) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(gateway.node.drain(0, settle_s=1))


SERVER_CLOSES = [
    pytest.param(_expire, 4001, id="expiry-4001"),
    pytest.param(_drain, 1001, id="drain-1001"),
]


@pytest.mark.parametrize(("trigger", "code"), SERVER_CLOSES)
async def test_server_close_carries_the_code_then_tcp_closes(
    gateway: Gateway, raw: RawConnect, trigger: ServerClose, code: int
) -> None:
    ws = await raw("notifications", user="42")
    assert (await ws.request("notification_read", {"id": "n-1"}))["event"] == "ack"
    started = trigger(gateway)
    closed, reason = await ws.expect_close()
    assert closed == code
    assert reason  # the contract's codes come with a human-readable reason
    await ws.send_close(closed)
    assert await ws.expect_eof(PROMPT_S) == "eof"  # a FIN after the answer, not an RST
    if started is not None:
        await started


@pytest.mark.parametrize(("trigger", "code"), SERVER_CLOSES)
async def test_server_waits_for_the_close_answer_before_closing_tcp(
    gateway: Gateway, raw: RawConnect, trigger: ServerClose, code: int
) -> None:
    ws = await raw("notifications", user="42")
    started = trigger(gateway)
    try:
        assert (await ws.expect_close())[0] == code
        assert await ws.stays_open(0.3)
        await ws.send_close(code)
        assert await ws.expect_eof(PROMPT_S) == "eof"
    finally:
        if started is not None:
            await started


# -- message size --------------------------------------------------------------------------

LIMIT = 2048


@pytest.fixture
async def small(start_gateway: GatewayFactory) -> AsyncIterator[RawConnect]:
    """Raw clients of a gateway whose GATEWAY_MAX_MESSAGE_BYTES is LIMIT."""
    async with RawClients(await start_gateway(max_message_bytes=LIMIT)) as connect:
        yield connect


async def test_frame_of_exactly_the_limit_is_accepted(small: RawConnect) -> None:
    ws = await small()
    await ws.send(Op.TEXT, padded_event(LIMIT))
    await assert_ack(ws)


async def test_frame_one_byte_over_the_limit_closes_1009(small: RawConnect) -> None:
    ws = await small()
    await ws.send(Op.TEXT, padded_event(LIMIT + 1))
    await assert_fails(ws, 1009)


async def test_fragmented_message_of_exactly_the_limit_is_accepted(small: RawConnect) -> None:
    ws = await small()
    await ws.write(b"".join(fragments(Op.TEXT, padded_event(LIMIT), [700, 700])))
    await assert_ack(ws)


async def test_fragmented_message_over_the_limit_closes_1009(small: RawConnect) -> None:
    ws = await small()
    # each fragment is well under the limit; their sum is one byte over it
    await ws.write(b"".join(fragments(Op.TEXT, padded_event(LIMIT + 1), [700, 700])))
    await assert_fails(ws, 1009)


# -- UTF-8 ---------------------------------------------------------------------------------


async def test_invalid_utf8_in_a_text_frame_closes_1007(raw: RawConnect) -> None:
    ws = await raw()
    await ws.send(Op.TEXT, b'{"event": "\xff\xfe"}')
    await assert_fails(ws, 1007)


async def test_invalid_utf8_split_across_fragments_closes_1007(raw: RawConnect) -> None:
    ws = await raw()
    # the first fragment ends with the lead byte of a 2-byte sequence; "(" cannot continue it
    body = b'{"event": "x\xc3(", "ack": 1}'
    await ws.write(b"".join(fragments(Op.TEXT, body, [body.index(b"\xc3") + 1])))
    await assert_fails(ws, 1007)


async def test_valid_utf8_character_split_across_fragments_is_accepted(raw: RawConnect) -> None:
    ws = await raw()
    body = event("unsubscribe", {"topics": ["sal€s"]})
    split = body.index("€".encode()) + 1  # inside the 3-byte sequence
    await ws.write(b"".join(fragments(Op.TEXT, body, [split, 1])))
    await assert_ack(ws)


async def test_invalid_utf8_in_the_close_reason_closes_1007(raw: RawConnect) -> None:
    ws = await raw()
    await ws.send(Op.CLOSE, close_payload(1000) + b"\xff")
    await assert_fails(ws, 1007)


# -- fragmentation, ping and pong ----------------------------------------------------------


async def test_fragmented_message_with_a_ping_between_fragments(raw: RawConnect) -> None:
    ws = await raw()
    body = event("subscribe", {"topics": ["sales"]}, ack=7)
    first, middle, last = fragments(Op.TEXT, body, [5, 10])
    await ws.write(first)
    await ws.send(Op.PING, b"between")
    await ws.write(middle + last)
    data, control = await ws.recv_split(2)
    assert [(f.opcode, f.payload, f.fin) for f in control] == [(Op.PONG, b"between", True)]
    assert [(f.json()["event"], f.json()["ack"]) for f in data] == [("ack", 7)]


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))], ids=["0", "5", "125"])
async def test_ping_is_answered_by_a_pong_with_the_same_payload(
    raw: RawConnect, payload: bytes
) -> None:
    ws = await raw()
    await ws.send(Op.PING, payload)
    pong = await ws.recv()
    assert (pong.opcode, pong.payload, pong.fin, pong.masked) == (Op.PONG, payload, True, False)


async def test_unsolicited_pong_is_ignored(raw: RawConnect) -> None:
    ws = await raw()
    await ws.send(Op.PONG, b"nobody asked")
    # the ack is the very next frame: the pong got no answer and did not close anything
    assert (await ws.request("subscribe", {"topics": ["sales"]}))["event"] == "ack"


# -- protocol errors: 1002 -----------------------------------------------------------------

TEXT = event("subscribe", {"topics": ["sales"]})


def _text(**kwargs: Any) -> bytes:
    return encode_frame(Op.TEXT, TEXT, **kwargs)


PROTOCOL_ERRORS = [
    pytest.param(_text(rsv=0b100), id="rsv1"),
    pytest.param(_text(rsv=0b010), id="rsv2"),
    pytest.param(_text(rsv=0b001), id="rsv3"),
    pytest.param(encode_frame(0x3, TEXT), id="reserved-data-opcode-3"),
    pytest.param(encode_frame(0xB, b""), id="reserved-control-opcode-11"),
    pytest.param(encode_frame(Op.CONTINUATION, TEXT), id="continuation-without-start"),
    pytest.param(_text(fin=False) + _text(), id="text-while-fragmented-message-open"),
    pytest.param(
        _text(fin=False) + encode_frame(Op.BINARY, b"x"), id="binary-while-fragmented-open"
    ),
    pytest.param(encode_frame(Op.PING, b"p" * 126), id="ping-payload-126"),
    pytest.param(encode_frame(Op.PONG, b"p" * 126), id="pong-payload-126"),
    pytest.param(encode_frame(Op.PING, b"p", fin=False), id="fragmented-ping"),
    pytest.param(encode_frame(Op.CLOSE, b"\x03"), id="close-payload-1-byte"),
    pytest.param(encode_frame(Op.CLOSE, close_payload(1000, "r" * 124)), id="close-payload-126"),
    pytest.param(encode_frame(Op.CLOSE, close_payload(999)), id="close-code-999"),
    pytest.param(encode_frame(Op.CLOSE, close_payload(1004)), id="close-code-1004"),
    pytest.param(encode_frame(Op.CLOSE, close_payload(1005)), id="close-code-1005"),
    pytest.param(encode_frame(Op.CLOSE, close_payload(1015)), id="close-code-1015"),
    pytest.param(encode_frame(Op.CLOSE, close_payload(2999)), id="close-code-2999"),
    pytest.param(
        encode_frame(Op.CLOSE, close_payload(1006)),
        id="close-code-1006",
    ),
    pytest.param(
        _text(masked=False),
        id="unmasked-client-frame",
    ),
]


@pytest.mark.parametrize("wire", PROTOCOL_ERRORS)
async def test_protocol_error_closes_1002(raw: RawConnect, wire: bytes) -> None:
    ws = await raw()
    await ws.write(wire)
    await assert_fails(ws, PROTOCOL_ERROR)


@pytest.mark.parametrize("code", [3000, 4000, 4999])
async def test_registered_and_private_close_codes_are_valid(raw: RawConnect, code: int) -> None:
    ws = await raw()
    await ws.send_close(code)
    assert (await ws.expect_close())[0] in (1000, code)
    assert await ws.expect_eof(PROMPT_S) == "eof"


# -- binary frames -------------------------------------------------------------------------


async def test_binary_frame_gets_bad_request_and_the_socket_stays_usable(raw: RawConnect) -> None:
    ws = await raw()
    await ws.send(Op.BINARY, TEXT)
    error = await ws.recv_json()
    assert error["event"] == "error"
    assert error["error"]["code"] == "bad_request"
    assert "ack" not in error or error["ack"] is None
    assert (await ws.request("subscribe", {"topics": ["sales"]}, ack=2))["event"] == "ack"


async def test_fragmented_binary_message_gets_bad_request_too(raw: RawConnect) -> None:
    ws = await raw()
    await ws.write(b"".join(fragments(Op.BINARY, TEXT, [3])))
    assert (await ws.recv_json())["error"]["code"] == "bad_request"
    assert (await ws.request("subscribe", {"topics": ["sales"]}, ack=2))["event"] == "ack"


# -- heartbeat -----------------------------------------------------------------------------


@pytest.fixture
async def beating(start_gateway: GatewayFactory) -> AsyncIterator[RawConnect]:
    """Raw clients of a gateway whose GATEWAY_HEARTBEAT_SECONDS is HEARTBEAT_S."""
    async with RawClients(await start_gateway(heartbeat_s=HEARTBEAT_S)) as connect:
        yield connect


async def test_server_pings_after_heartbeat_seconds_of_silence(beating: RawConnect) -> None:
    ws = await beating()
    assert (await ws.request("subscribe", {"topics": ["sales"]}))["event"] == "ack"
    silent_since = time.monotonic()
    ping = await ws.recv(HEARTBEAT_S + MARGIN_S)
    waited = time.monotonic() - silent_since
    assert (ping.opcode, ping.fin, ping.masked) == (Op.PING, True, False)
    assert waited >= HEARTBEAT_S * 0.8, f"pinged after {waited:.2f} s of silence"


async def test_peer_that_never_answers_pings_is_closed_within_one_and_a_half_heartbeats(
    beating: RawConnect,
) -> None:
    ws = await beating()
    assert (await ws.request("subscribe", {"topics": ["sales"]}))["event"] == "ack"
    silent_since = time.monotonic()
    frames = await ws.frames_until_eof(1.5 * HEARTBEAT_S + MARGIN_S)
    waited = time.monotonic() - silent_since
    # a ping first; a close frame before the TCP close is allowed (aiohttp sends none)
    assert [f.opcode for f in frames][:1] == [Op.PING], frames
    assert {f.opcode for f in frames} <= {Op.PING, Op.CLOSE}, frames
    assert waited >= 1.5 * HEARTBEAT_S * 0.8, f"closed after only {waited:.2f} s"


async def test_peer_that_answers_pings_stays_open_across_heartbeats(beating: RawConnect) -> None:
    ws = await beating()
    pings = 0
    deadline = time.monotonic() + 4 * HEARTBEAT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = await ws.recv(left)
        except TimeoutError:
            break
        assert frame.opcode == Op.PING, frame
        pings += 1
        await ws.send(Op.PONG, frame.payload)
    assert pings >= 2, f"only {pings} pings in {4 * HEARTBEAT_S} s"
    await ws.send_json({"event": "subscribe", "data": {"topics": ["sales"]}, "ack": 1})
    assert (await ws.recv_data(answer_pings=True)).json()["event"] == "ack"


async def test_peer_that_keeps_sending_is_not_closed(beating: RawConnect) -> None:
    ws = await beating()
    deadline = time.monotonic() + 4 * HEARTBEAT_S
    ack = 0
    while time.monotonic() < deadline:
        ack += 1
        await ws.send_json({"event": "subscribe", "data": {"topics": ["sales"]}, "ack": ack})
        # never answer a ping: the traffic alone proves the peer alive
        assert (await ws.recv_data(answer_pings=False)).json()["ack"] == ack
        # well inside one heartbeat, then the next message
        await asyncio.sleep(HEARTBEAT_S / 4)
    assert ack >= 4  # several heartbeats went by with the socket in use


# -- framing across TCP writes -------------------------------------------------------------


async def test_many_frames_in_one_write_are_all_parsed(raw: RawConnect) -> None:
    ws = await raw()
    count = 30
    wire = b"".join(
        encode_frame(Op.TEXT, event("subscribe", {"topics": ["sales"]}, ack=n))
        for n in range(1, count + 1)
    )
    await ws.write(wire + encode_frame(Op.PING, b"last"))
    data, control = await ws.recv_split(count + 1)
    assert [(f.json()["event"], f.json()["ack"]) for f in data] == [
        ("ack", n) for n in range(1, count + 1)
    ]
    assert [(f.opcode, f.payload) for f in control] == [(Op.PONG, b"last")]


async def test_frames_split_byte_by_byte_are_parsed(raw: RawConnect) -> None:
    ws = await raw()
    body = event("subscribe", {"topics": ["sales"], "pad": "p" * 200}, ack=3)
    assert len(body) > 125  # exercises the 16-bit extended length too
    await ws.write_bytewise(encode_frame(Op.PING, b"bytewise") + encode_frame(Op.TEXT, body))
    pong = await ws.recv()
    assert (pong.opcode, pong.payload) == (Op.PONG, b"bytewise")
    await assert_ack(ws, 3)


async def test_frames_in_the_same_write_as_the_upgrade_request_are_not_lost(
    raw: RawConnect,
) -> None:
    early = encode_frame(Op.TEXT, event("subscribe", {"topics": ["sales"]}, ack=1))
    early += encode_frame(Op.PING, b"early")
    ws = await raw(early=early)
    data, control = await ws.recv_split(2)
    assert [(f.json()["event"], f.json()["ack"]) for f in data] == [("ack", 1)]
    assert [(f.opcode, f.payload) for f in control] == [(Op.PONG, b"early")]


# -- behind a TLS-terminating proxy --------------------------------------------------------


class TlsProxy(TcpProxy):
    """Terminates TLS on 127.0.0.1:<port> and pipes the plain bytes to the gateway."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port)
        self._context = context

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self._context
        )
        self.port = self._server.sockets[0].getsockname()[1]


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A throwaway certificate authority."""
    return trustme.CA()


async def test_wss_through_a_tls_terminating_proxy(gateway: Gateway, tls_ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    tls_ca.configure_trust(client_context)
    proxy = TlsProxy(*address(gateway), server_context)
    await proxy.start()
    headers = {
        "Authorization": f"Bearer {mint('42')}",
        # what the proxy in front would add
        "X-Forwarded-For": "203.0.113.7, 10.0.0.1",
        "X-Forwarded-Proto": "https",
    }
    try:
        async with aiohttp.ClientSession() as session:
            url = f"wss://localhost:{proxy.port}/ws/notifications"
            async with session.ws_connect(url, ssl=client_context, headers=headers) as ws:
                answer = await request(ws, "notification_read", {"id": "n-1"})
                assert answer == {"event": "ack", "ack": 1, "data": {"id": "n-1"}}
                await gateway.publish("notification.user.42", {"title": "over tls"})
                delivered = await receive(ws)
                assert (delivered["event"], delivered["data"]) == (
                    "notification_new",
                    {"title": "over tls"},
                )
                await ws.close()
                assert ws.close_code == 1000
    finally:
        await proxy.cut()
    assert proxy.accepted == 1
