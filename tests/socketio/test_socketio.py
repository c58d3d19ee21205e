"""Socket.IO v4 compatibility (contract §5), driven by the real socket.io-client in Node.

Every test runs a gateway on a real port with the embedded backbone and talks to it with
socket.io-client v4 (tests/socketio/client.mjs), as the original gateway's web clients do.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from service.backbone.memory import MemoryBackbone, UpstreamRecord
from service.transports.socketio import SOCKETIO
from tests.broker import until
from tests.conftest import GatewayFactory, mint, receive
from tests.integration.recovery_helpers import last_offset_seen
from tests.socketio.conftest import NodeFactory, expect_replay


async def _wait_upgraded(clients: Any, name: str, opts: dict[str, Any]) -> None:
    """With default options, wait until the client moved from polling to the WebSocket."""
    if "transports" not in opts:
        line = await clients.expect(name=name, type="upgrade")
        assert line["transport"] == "websocket"


async def test_notification_new_reaches_both_transports(
    start_gateway: GatewayFactory, node_clients: NodeFactory, transport_opts: dict[str, Any]
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    await clients.connect("a", "notifications", auth={"token": mint("42")}, **transport_opts)

    ident = await gateway.publish("notification.user.42", {"title": "hi"})
    data, meta = await clients.event_meta("a", "notification_new")
    # What the publisher sent, then the metadata: id, ts, offset.
    assert data == {"title": "hi"}
    assert meta == {"id": ident, "ts": meta["ts"], "offset": meta["offset"]}
    assert isinstance(meta["ts"], int)
    assert isinstance(meta["offset"], int)

    await _wait_upgraded(clients, "a", transport_opts)
    await gateway.publish("notification.user.42", {"title": "after upgrade"})
    assert await clients.event("a", "notification_new") == {"title": "after upgrade"}
    await gateway.publish("notification.broadcast", {"title": "everyone"})
    assert await clients.event("a", "notification_new") == {"title": "everyone"}


async def test_dashboard_update_reaches_both_transports(
    start_gateway: GatewayFactory, node_clients: NodeFactory, transport_opts: dict[str, Any]
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    await clients.connect("d", "dashboard", auth={"token": mint("7")}, **transport_opts)

    ident = await gateway.publish("dashboard.sales", {"total": 12})
    data, meta = await clients.event_meta("d", "dashboard_update")
    assert data == {"total": 12}
    assert meta == {"id": ident, "ts": meta["ts"], "topic": "sales"}
    await _wait_upgraded(clients, "d", transport_opts)

    answer = await clients.emit("d", "subscribe", {"topics": ["ops"]}, ack=True)
    assert answer is not None
    assert answer["args"] == [{"topics": ["ops"]}]
    await gateway.publish("dashboard.sales", {"total": 13})
    await gateway.publish("dashboard.ops", {"load": 1})
    assert (await clients.event_meta("d", "dashboard_update"))[1]["topic"] == "ops"


async def test_notification_read_is_acked_published_upstream_and_echoed(
    start_gateway: GatewayFactory, node_clients: NodeFactory, transport_opts: dict[str, Any]
) -> None:
    backbone = MemoryBackbone()
    upstream: asyncio.Queue[UpstreamRecord] = asyncio.Queue()
    backbone.on_upstream(upstream.put_nowait)
    gateway = await start_gateway(backbone=backbone)
    clients = await node_clients(gateway)
    await clients.connect("phone", "notifications", auth={"token": mint("42")}, **transport_opts)
    await clients.connect("laptop", "notifications", auth={"token": mint("42")}, **transport_opts)
    native = await gateway.connect("notifications", user="42")

    answer = await clients.emit("phone", "notification_read", {"id": "n-1"}, ack=True)
    assert answer is not None
    assert answer["args"] == [{"id": "n-1"}]

    record = await asyncio.wait_for(upstream.get(), 5)
    assert record.routing_key == "notifications.notification_read"
    body = orjson.loads(record.body)
    assert body["event"] == "notification_read"
    assert body["data"] == {"id": "n-1"}
    assert body["user_id"] == "42"
    assert body["namespace"] == "notifications"
    socketio_ids = {s.id for s in gateway.node.hub.sessions() if s.transport == "socketio"}
    assert body["connection_id"] in socketio_ids

    # The user's other devices, on both transports, get the echo; the sender does not.
    echo, meta = await clients.event_meta("laptop", "notification_read")
    assert echo == {"id": "n-1"}
    assert set(meta) == {"id", "ts", "offset"}
    assert (await receive(native))["event"] == "notification_read"
    await gateway.publish("notification.user.42", {"title": "barrier"})
    first = await clients.expect(name="phone", type="event")
    assert first["event"] == "notification_new", first


async def test_native_and_socketio_clients_of_one_user_get_the_same_notification(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    await clients.connect("sio", "notifications", auth={"token": mint("42")})
    native = await gateway.connect("notifications", user="42")

    ident = await gateway.publish("notification.user.42", {"title": "both"})
    native_frame = await receive(native)
    data, meta = await clients.event_meta("sio", "notification_new")
    # The same event: the native frame's data, then every other field but the event name.
    assert native_frame.pop("event") == "notification_new"
    assert data == native_frame.pop("data")
    assert meta == native_frame
    assert meta["id"] == ident


async def test_multiplexed_namespaces_share_one_connection(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    """`io(host + "/dashboard")` and `io(host + "/notifications")` share one Manager."""
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    token = mint("42")
    await clients.connect("d", "dashboard", auth={"token": token}, forceNew=False)
    await clients.connect("n", "notifications", auth={"token": token}, forceNew=False)
    assert len(gateway.app[SOCKETIO].sio.eio.sockets) == 1

    await gateway.publish("dashboard.sales", {"total": 1})
    await gateway.publish("notification.user.42", {"title": "hi"})
    assert (await clients.event_meta("d", "dashboard_update"))[1]["topic"] == "sales"
    assert await clients.event("n", "notification_new") == {"title": "hi"}


@pytest.mark.parametrize(
    ("namespace", "auth", "code", "status"),
    [
        ("notifications", {"token": "not-a-jwt"}, "invalid_token", 401),
        ("notifications", None, "unauthorized", 401),
        ("dashboard", {"token": "x.y.z"}, "invalid_token", 401),
        ("chat", {"token": "valid"}, "not_found", 404),
    ],
)
async def test_refusals_are_connect_errors_with_the_contract_code(
    start_gateway: GatewayFactory,
    node_clients: NodeFactory,
    namespace: str,
    auth: dict[str, str] | None,
    code: str,
    status: int,
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    if auth is not None and auth["token"] == "valid":
        auth = {"token": mint("42")}
    opts = {"auth": auth} if auth is not None else {}
    line = await clients.connect("a", namespace, connected=False, **opts)
    assert line["type"] == "connect_error"
    assert line["data"] == {"code": code, "status": status}
    assert line["message"]
    assert len(gateway.node.hub) == 0


async def test_expired_token_is_refused_with_token_expired(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    token = mint("42", ttl_s=-60)
    line = await clients.connect("a", "notifications", connected=False, auth={"token": token})
    assert line["data"] == {"code": "token_expired", "status": 401}


async def test_token_from_the_access_token_query(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    await clients.connect("a", "notifications", query={"access_token": mint("42")})
    await gateway.publish("notification.user.42", {"title": "q"})
    assert await clients.event("a", "notification_new") == {"title": "q"}


async def test_public_dashboard_needs_no_token(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway(public_namespaces=frozenset({"dashboard"}))
    clients = await node_clients(gateway)
    await clients.connect("wallboard", "dashboard")
    await gateway.publish("dashboard.sales", {"total": 3})
    assert await clients.event("wallboard", "dashboard_update") == {"total": 3}


async def test_per_user_cap_counts_both_transports(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway(max_connections_per_user=2)
    clients = await node_clients(gateway)
    await gateway.connect("notifications", user="42")
    await clients.connect("a", "dashboard", auth={"token": mint("42")})
    line = await clients.connect("b", "notifications", connected=False, auth={"token": mint("42")})
    assert line["data"] == {"code": "too_many_connections", "status": 429}
    refused = await gateway.client.get("/metrics")
    assert (
        'realtime_gateway_refusals_total{gateway_namespace="notifications",status="429",'
        'transport="socketio"} 1.0'
    ) in await refused.text()


async def test_process_limit_and_draining_refuse_with_unavailable(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway(max_connections=1)
    clients = await node_clients(gateway)
    await clients.connect("a", "notifications", auth={"token": mint("1")})
    full = await clients.connect("b", "notifications", connected=False, auth={"token": mint("2")})
    assert full["data"] == {"code": "unavailable", "status": 503}

    gateway.node.begin_drain()
    await clients.close("a")
    draining = await clients.connect(
        "c", "notifications", connected=False, auth={"token": mint("3")}
    )
    assert draining["data"] == {"code": "unavailable", "status": 503}


async def test_errors_come_back_in_the_ack_or_as_an_error_event(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    await clients.connect("a", "notifications", auth={"token": mint("42")})

    answer = await clients.emit("a", "notification_read", {"id": 5}, ack=True)
    assert answer is not None
    assert answer["args"][0]["error"]["code"] == "bad_request"
    answer = await clients.emit("a", "dashboard_refresh", {}, ack=True)
    assert answer is not None
    assert answer["args"][0]["error"]["code"] == "unknown_event"

    await clients.emit("a", "no_such_event", {})
    error, meta = await clients.event_meta("a", "error")
    assert error == {"code": "unknown_event", "message": error["message"]}
    assert meta == {}

    # A binary attachment is refused like a native binary frame.
    blob = {"$binary": "AAEC"}
    answer = await clients.emit("a", "notification_read", {"id": "n", "blob": blob}, ack=True)
    assert answer is not None
    assert answer["args"][0]["error"]["code"] == "bad_request"


async def test_refresh_sends_last_values_before_the_ack(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    backbone = MemoryBackbone()
    upstream: asyncio.Queue[UpstreamRecord] = asyncio.Queue()
    backbone.on_upstream(upstream.put_nowait)
    gateway = await start_gateway(backbone=backbone)
    clients = await node_clients(gateway)
    await clients.connect("d", "dashboard", auth={"token": mint("7")})
    await gateway.publish("dashboard.sales", {"total": 1})
    await clients.event("d", "dashboard_update")

    answer = await clients.emit("d", "dashboard_refresh", {"topic": "sales"}, ack=True)
    assert answer is not None
    assert answer["args"] == [{"topics": ["sales"]}]
    replay = await clients.expect(name="d", type="event", event="dashboard_update")
    assert replay["args"][0] == {"total": 1}
    assert replay["seq"] < answer["seq"], "the last value must come before the ack"
    record = await asyncio.wait_for(upstream.get(), 5)
    assert record.routing_key == "dashboard.dashboard_refresh"


async def test_rate_limit_answers_then_disconnects(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway(rate_limit_per_s=0.01, rate_limit_burst=2)
    clients = await node_clients(gateway)
    await clients.connect("a", "notifications", auth={"token": mint("42")})
    codes = []
    for _ in range(40):
        answer = await clients.emit("a", "notification_read", {"id": "n"}, ack=False)
        assert answer is None
    line = await clients.expect(name="a", type="disconnect")
    assert line["reason"] == "io server disconnect"
    for entry in clients.seen:
        if entry.get("event") == "error":
            codes.append(entry["args"][0]["code"])
    assert codes
    assert set(codes) == {"rate_limited"}
    metrics = await (await gateway.client.get("/metrics")).text()
    assert (
        'realtime_gateway_disconnects_total{code="4029",gateway_namespace="notifications",'
        'transport="socketio"} 1.0'
    ) in metrics


async def test_expired_token_disconnects_the_namespace(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    await clients.connect("a", "notifications", auth={"token": mint("42", ttl_s=60)})
    assert gateway.node.expire_tokens(time.time() + 120) == 1
    line = await clients.expect(name="a", type="disconnect")
    assert line["reason"] == "io server disconnect"  # no automatic reconnect with that token
    assert len(gateway.node.hub) == 0


async def test_draining_closes_the_connection_so_clients_reconnect(
    start_gateway: GatewayFactory, node_clients: NodeFactory, transport_opts: dict[str, Any]
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    await clients.connect("d", "dashboard", auth={"token": mint("42")}, **transport_opts)
    await clients.connect("n", "notifications", auth={"token": mint("42")}, **transport_opts)
    await _wait_upgraded(clients, "d", transport_opts)

    await gateway.node.drain(0.1, settle_s=5)
    for name in ("d", "n"):
        line = await clients.expect(name=name, type="disconnect")
        assert line["reason"] == "transport close", line  # socket.io-client reconnects
    assert len(gateway.node.hub) == 0
    metrics = await (await gateway.client.get("/metrics")).text()
    assert (
        'realtime_gateway_disconnects_total{code="1001",gateway_namespace="dashboard",'
        'transport="socketio"} 1.0'
    ) in metrics


async def test_metrics_and_sessions_label_the_transport(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    await clients.connect("a", "notifications", auth={"token": mint("42")})
    await gateway.connect("notifications", user="43")
    await gateway.publish("notification.user.42", {"title": "hi"})
    await clients.event("a", "notification_new")

    text = await (await gateway.client.get("/metrics")).text()
    assert (
        'realtime_gateway_connections{gateway_namespace="notifications",transport="socketio"} 1.0'
    ) in text
    assert (
        'realtime_gateway_connections{gateway_namespace="notifications",transport="ws"} 1.0' in text
    )
    assert (
        "realtime_gateway_frames_out_total"
        '{gateway_namespace="notifications",transport="socketio"} 1.0'
    ) in text

    session = next(s for s in gateway.node.hub.sessions() if s.transport == "socketio")
    await clients.close("a")
    await asyncio.wait_for(session.wait_closed(), 5)  # leaves the hub in the same step
    assert len(gateway.node.hub) == 1
    text = await (await gateway.client.get("/metrics")).text()
    assert (
        'realtime_gateway_connections{gateway_namespace="notifications",transport="socketio"} 0.0'
    ) in text


async def test_origin_is_checked_before_engine_io(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway(allowed_origins=("https://app.example",))
    url = "/socket.io/?EIO=4&transport=polling"
    refused = await gateway.client.get(url, headers={"Origin": "https://evil.example"})
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "forbidden"

    allowed = await gateway.client.get(url, headers={"Origin": "https://app.example"})
    assert allowed.status == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    no_origin = await gateway.client.get(url)
    assert no_origin.status == 200


async def test_websocket_is_not_compressed(start_gateway: GatewayFactory) -> None:
    gateway = await start_gateway()
    ws = await gateway.client.ws_connect("/socket.io/?EIO=4&transport=websocket", compress=15)
    assert ws.compress == 0
    opened = await ws.receive_str(timeout=5)
    assert opened.startswith("0{")
    await ws.close()


async def test_packet_size_limit_is_inclusive(start_gateway: GatewayFactory) -> None:
    limit = 2048
    gateway = await start_gateway(max_message_bytes=limit)
    ws = await gateway.client.ws_connect("/socket.io/?EIO=4&transport=websocket")
    assert (await ws.receive_str(timeout=5)).startswith("0{")
    await ws.send_str("40/notifications," + orjson.dumps({"token": mint("42")}).decode())
    assert (await ws.receive_str(timeout=5)).startswith("40/notifications,")

    def packet(size: int) -> str:
        head, tail = '42/notifications,["notification_read",{"id":"', '"}]'
        return head + "x" * (size - len(head) - len(tail)) + tail

    await ws.send_str(packet(limit))  # accepted: answered with an error event (id too long)
    answer = await ws.receive_str(timeout=5)
    assert answer.startswith('42/notifications,["error",'), answer[:80]
    await ws.send_str(packet(limit + 1))
    closing = await ws.receive(timeout=5)
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == 1009


async def test_engine_sessions_must_join_a_namespace_in_time(
    start_gateway: GatewayFactory,
) -> None:
    gateway = await start_gateway()
    transport = gateway.app[SOCKETIO]
    transport.connect_timeout_s = 0.3
    base = "/socket.io/?EIO=4&transport=polling"
    idle = orjson.loads((await (await gateway.client.get(base)).text())[1:])["sid"]
    joined = orjson.loads((await (await gateway.client.get(base)).text())[1:])["sid"]
    connect = "40/notifications," + orjson.dumps({"token": mint("42")}).decode()
    await gateway.client.post(f"{base}&sid={joined}", data=connect)
    assert (await (await gateway.client.get(f"{base}&sid={joined}")).text()).startswith("40/")

    # The idle one's pending long-poll is answered with a CLOSE packet when the time is up.
    async with asyncio.timeout(5):
        closed = await (await gateway.client.get(f"{base}&sid={idle}")).text()
    assert closed == "1"
    assert idle not in transport.sio.eio.sockets or transport.sio.eio.sockets[idle].closed
    assert not transport.sio.eio.sockets[joined].closed
    assert len(gateway.node.hub) == 1


# -- slow consumers -----------------------------------------------------------------------
#
# One client stops reading while events keep coming. The healthy client is awaited event by
# event (the publisher goes at its pace), so the test shows that the stuck one never holds
# it up, and that the stuck one is closed with 4008 once its session's buffer overflows.


class RawPolling:
    """A long-polling Engine.IO client by hand, which can stop polling (stop reading)."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self._http = http
        self._base = base
        self.sid = ""

    async def open(self, namespace: str, token: str) -> None:
        """Handshake, CONNECT to the namespace, read the CONNECT answer."""
        async with self._http.get(f"{self._base}?EIO=4&transport=polling") as resp:
            opened = await resp.text()
        self.sid = orjson.loads(opened[1:])["sid"]
        packet = "40/" + namespace + "," + orjson.dumps({"token": token}).decode()
        async with self._http.post(self._url(), data=packet) as resp:
            assert resp.status == 200
        status, text = await self.poll()
        assert status == 200
        assert text.startswith(f"40/{namespace},")

    def _url(self) -> str:
        return f"{self._base}?EIO=4&transport=polling&sid={self.sid}"

    async def poll(self) -> tuple[int, str]:
        """One long-poll GET."""
        async with self._http.get(self._url()) as resp:
            return resp.status, await resp.text()


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for a condition that no event announces (a request handler has ended)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - nothing announces it but the condition
            await asyncio.sleep(0.02)


def _queued_bytes(socket: Any) -> int:
    """Bytes waiting in an Engine.IO socket's (unbounded) queue."""
    return sum(len(p.encode()) for p in list(socket.queue._queue) if p is not None)


async def _publish_until_closed(
    gateway: Any, clients: Any, slow: Any, size: int, limit: int
) -> tuple[int, float]:
    """Publish broadcasts in step with the healthy client until `slow` is closed.

    Returns (events sent, worst latency of the healthy client in seconds).
    """
    pad = "x" * size
    loop = asyncio.get_running_loop()
    sent, worst = 0, 0.0
    while not slow.closed and sent < limit:
        started = loop.time()
        await gateway.node.publish("notification.broadcast", {"n": sent, "pad": pad})
        data = await clients.event("healthy", "notification_new", within=5)
        worst = max(worst, loop.time() - started)
        assert data["n"] == sent
        sent += 1
    return sent, worst


async def test_polling_client_that_stops_reading_is_closed_without_slowing_others(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    budget = 16 * 1024
    gateway = await start_gateway(send_queue_bytes=budget)
    transport = gateway.app[SOCKETIO]
    clients = await node_clients(gateway)
    await clients.connect("healthy", "notifications", auth={"token": mint("1")})
    server = gateway.client.server
    async with aiohttp.ClientSession() as http:
        stuck = RawPolling(http, f"http://{server.host}:{server.port}/socket.io/")
        await stuck.open("notifications", mint("2"))
        slow = next(s for s in gateway.node.hub.sessions() if s.user_id == "2")
        engine = transport.sio.eio.sockets[stuck.sid]

        sent, worst = await _publish_until_closed(gateway, clients, slow, 1000, 200)
        assert slow.close_code == 4008
        assert sent * 1000 < 3 * budget, f"closed only after {sent} events"
        assert worst < 1.0, f"the healthy client waited {worst:.3f}s for an event"
        # Engine.IO held at most one batch for it (and the CLOSE packet), never the backlog.
        assert _queued_bytes(engine) <= budget + 10
        # Its next poll finds the session gone: socket.io-client reconnects on that.
        status, _ = await stuck.poll()
        assert status == 400
    metrics = await (await gateway.client.get("/metrics")).text()
    assert (
        'realtime_gateway_disconnects_total{code="4008",gateway_namespace="notifications",'
        'transport="socketio"} 1.0'
    ) in metrics


async def test_websocket_client_that_stops_reading_is_closed_without_slowing_others(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    budget = 256 * 1024
    gateway = await start_gateway(send_queue_bytes=budget)
    transport = gateway.app[SOCKETIO]
    transport.abort_after_s = 0.2
    clients = await node_clients(gateway)
    await clients.connect(
        "healthy", "notifications", auth={"token": mint("1")}, transports=["websocket"]
    )
    server = gateway.client.server

    def small_receive_buffer(addr_info: Any) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return sock

    connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
    async with aiohttp.ClientSession(connector=connector) as http:
        ws = await http.ws_connect(
            f"http://{server.host}:{server.port}/socket.io/?EIO=4&transport=websocket"
        )
        assert (await ws.receive_str(timeout=5)).startswith("0{")
        await ws.send_str("40/notifications," + orjson.dumps({"token": mint("2")}).decode())
        assert (await ws.receive_str(timeout=5)).startswith("40/notifications,")
        slow = next(s for s in gateway.node.hub.sessions() if s.user_id == "2")
        # From here on it reads nothing: the kernel's buffers fill, then the transport's
        # write buffer (the fast path writes there and counts it), and the budget overflows.
        sent, worst = await _publish_until_closed(gateway, clients, slow, 16 * 1024, 2000)
        assert slow.close_code == 4008, f"still open after {sent} events"
        assert worst < 1.0, f"the healthy client waited {worst:.3f}s for an event"

        # The stuck WebSocket is aborted: the client finds its connection gone after what
        # it had buffered, and the server's handler and Engine.IO socket end.
        async with asyncio.timeout(10):
            while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
        assert ws.closed
        await eventually(
            lambda: len(transport._inflight) == 1 and len(transport.sio.eio.sockets) == 1
        )


async def test_a_socketio_client_resumes_with_the_resume_event(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway()
    since = await last_offset_seen(gateway, "42")
    missed = [await gateway.publish("notification.user.42", {"n": n}) for n in (1, 2, 3)]
    clients = await node_clients(gateway)
    await clients.connect(
        "a", "notifications", auth={"token": mint("42")}, transports=["websocket"]
    )

    answer = await clients.emit("a", "resume", {"since": since}, ack=True)

    assert answer is not None
    assert answer["args"] == [{"recovered": True, "replayed": 3}]
    # In order: the replay, then `resumed` (the first four events the client got).
    await expect_replay(clients, "a", missed)


@pytest.mark.parametrize("where", ["auth", "query"])
async def test_a_socketio_client_resumes_with_since_on_connect(
    start_gateway: GatewayFactory,
    node_clients: NodeFactory,
    transport_opts: dict[str, Any],
    where: str,
) -> None:
    gateway = await start_gateway()
    since = await last_offset_seen(gateway, "42")
    missed = [await gateway.publish("notification.user.42", {"n": n}) for n in (1, 2, 3)]
    clients = await node_clients(gateway)
    auth: dict[str, Any] = {"token": mint("42")}
    if where == "auth":
        auth["since"] = since
    else:
        transport_opts["query"] = {"since": str(since)}

    await clients.connect("a", "notifications", auth=auth, **transport_opts)

    # In order: the replay, then `resumed`, then live traffic.
    await expect_replay(clients, "a", missed)
    live = await gateway.publish("notification.user.42", {"n": 4})
    assert (await clients.event_meta("a", "notification_new"))[1]["id"] == live
    # The connection has resumed: a second resume is refused in the ack.
    answer = await clients.emit("a", "resume", {"since": since}, ack=True)
    assert answer is not None
    assert answer["args"][0]["error"]["code"] == "bad_request"


async def test_a_since_that_is_not_an_offset_is_a_connect_error(
    start_gateway: GatewayFactory, node_clients: NodeFactory
) -> None:
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    auth = {"token": mint("42"), "since": "-1"}
    line = await clients.connect("a", "notifications", connected=False, auth=auth)
    assert line["type"] == "connect_error"
    assert line["data"] == {"code": "bad_request", "status": 400}
    assert len(gateway.node.hub) == 0
    # The dashboard has no offsets: `since` means nothing there and is ignored.
    await clients.connect("d", "dashboard", auth=auth)


async def test_on_a_websocket_frames_bypass_engine_io_in_order_with_acks(
    start_gateway: GatewayFactory, node_clients: NodeFactory, transport_opts: dict[str, Any]
) -> None:
    """Once on a WebSocket, a session writes straight to the transport (the fast path)."""
    gateway = await start_gateway()
    clients = await node_clients(gateway)
    await clients.connect("d", "dashboard", auth={"token": mint("7")}, **transport_opts)
    await _wait_upgraded(clients, "d", transport_opts)
    engine = next(iter(gateway.app[SOCKETIO].sio.eio.sockets.values()))
    await until(lambda: engine.upgraded, 5, "the server side of the upgrade")
    first = await gateway.publish("dashboard.sales", {"n": 0})
    assert (await clients.event_meta("d", "dashboard_update"))[1]["id"] == first
    outbox = gateway.node.outbox
    flushed = outbox.flushed_frames

    # Engine.IO took the first event: every frame after it goes through the session's sink.
    sent = [await gateway.publish("dashboard.sales", {"n": n}) for n in range(1, 4)]
    answer = await clients.emit("d", "subscribe", {"topics": ["ops"]}, ack=True)
    after = await gateway.publish("dashboard.ops", {"n": 4})

    got = [(await clients.event_meta("d", "dashboard_update"))[1]["id"] for _ in sent]
    assert got == sent
    assert answer is not None
    assert answer["args"] == [{"topics": ["ops"]}]
    assert (await clients.event_meta("d", "dashboard_update"))[1]["id"] == after
    assert outbox.flushed_frames - flushed == len(sent) + 2  # the events, the ack, `after`
    text = await (await gateway.client.get("/metrics")).text()
    assert (
        'realtime_gateway_frames_out_total{gateway_namespace="dashboard",transport="socketio"} 6.0'
    ) in text
