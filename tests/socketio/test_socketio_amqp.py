"""Socket.IO v4 clients on gateways that consume a real RabbitMQ (contract §4 and §5).

Services are played by a plain aio-pika client publishing to this test's events exchange
(`service` fixture); each gateway is a full app on a real port with its own instance queue
(`start_amqp_gateway`), and the clients are the real socket.io-client v4 in Node.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.broker import AmqpGatewayFactory, Names, Service, StartRecovering
from tests.conftest import mint, receive
from tests.socketio.conftest import NodeFactory, expect_replay
from tests.socketio.original import run_unchanged_app

pytestmark = pytest.mark.amqp


async def test_events_published_to_rabbitmq_reach_socketio_clients(
    start_amqp_gateway: AmqpGatewayFactory,
    service: Service,
    node_clients: NodeFactory,
    transport_opts: dict[str, Any],
) -> None:
    gw = await start_amqp_gateway(bindings="dynamic")
    clients = await node_clients(gw.gateway)
    token = mint("alice")
    await clients.connect("dash", "dashboard", auth={"token": token}, **transport_opts)
    await clients.connect("inbox", "notifications", auth={"token": token}, **transport_opts)

    ident = await service.publish("dashboard.sales", {"data": {"total": 12}})
    update, meta = await clients.event_meta("dash", "dashboard_update")
    assert update == {"total": 12}
    assert meta == {"id": ident, "ts": meta["ts"], "topic": "sales"}

    ident = await service.publish("notification.user.alice", {"data": {"title": "hi"}})
    notification, meta = await clients.event_meta("inbox", "notification_new")
    assert notification == {"title": "hi"}
    assert meta["id"] == ident
    assert {"id", "ts"} <= set(meta) <= {"id", "ts", "offset"}  # offset: with a stream

    ident = await service.publish("notification.broadcast", {"data": {"title": "everyone"}})
    assert (await clients.event_meta("inbox", "notification_new"))[1]["id"] == ident
    # Only the user's own key and the broadcast are bound for this replica.
    bound = gw.gateway.node.bindings.bound
    assert "notification.user.alice" in bound
    assert not any(
        key.startswith("notification.user.") and key != "notification.user.alice" for key in bound
    )


async def test_the_original_app_runs_unchanged_on_a_rabbitmq_gateway(
    start_amqp_gateway: AmqpGatewayFactory,
    service: Service,
    original_apps: NodeFactory,
    transport_opts: dict[str, Any],
) -> None:
    gw = await start_amqp_gateway(bindings="dynamic")
    apps = await original_apps(gw.gateway)

    async def publish(routing_key: str, data: Any) -> str:
        return await service.publish(routing_key, {"data": data})

    await run_unchanged_app(apps, publish, transport_opts)


async def test_socketio_clients_on_two_replicas_get_only_their_own_notifications(
    start_amqp_gateway: AmqpGatewayFactory, service: Service, node_clients: NodeFactory
) -> None:
    a = await start_amqp_gateway(bindings="dynamic")
    b = await start_amqp_gateway(bindings="dynamic")
    on_a, on_b = await node_clients(a.gateway), await node_clients(b.gateway)
    await on_a.connect("alice", "notifications", auth={"token": mint("alice")})
    await on_b.connect("bob", "notifications", auth={"token": mint("bob")})

    for_bob = await service.publish("notification.user.bob", {"data": "for bob"})
    for_alice = await service.publish("notification.user.alice", {"data": "for alice"})
    assert (await on_b.event_meta("bob", "notification_new"))[1]["id"] == for_bob
    assert (await on_a.event_meta("alice", "notification_new"))[1]["id"] == for_alice
    # Alice's first event was her own, so bob's never reached her (and the other way round).
    received = [line["args"][1]["id"] for line in on_a.seen + on_b.seen if line["type"] == "event"]
    assert sorted(received) == sorted([for_bob, for_alice])


async def test_notification_read_is_acked_after_rabbitmq_has_it_and_echoed_across_replicas(
    start_amqp_gateway: AmqpGatewayFactory,
    service: Service,
    amqp_names: Names,
    node_clients: NodeFactory,
    transport_opts: dict[str, Any],
) -> None:
    tap = await service.tap(amqp_names.upstream, "notifications.#")
    a = await start_amqp_gateway()
    b = await start_amqp_gateway()
    clients = await node_clients(a.gateway)
    await clients.connect("phone", "notifications", auth={"token": mint("carol")}, **transport_opts)
    laptop = await b.gateway.connect("notifications", user="carol")  # native, other replica

    answer = await clients.emit("phone", "notification_read", {"id": "n-1"}, ack=True)
    assert answer is not None
    assert answer["args"] == [{"id": "n-1"}]
    # The ack callback ran after the broker's confirm: the event is already in the queue.
    message = await tap.get(no_ack=True, fail=False)
    assert message is not None, "acked before the upstream event was in the queue"
    assert message.routing_key == "notifications.notification_read"
    body = json.loads(message.body)
    assert body["event"] == "notification_read"
    assert body["data"] == {"id": "n-1"}
    assert (body["user_id"], body["namespace"]) == ("carol", "notifications")
    assert body["instance"] == a.backbone.instance_id
    sessions = {s.id: s.transport for s in a.gateway.node.hub.sessions()}
    assert sessions.get(body["connection_id"]) == "socketio"

    echo = await receive(laptop)
    assert (echo["event"], echo["data"]) == ("notification_read", {"id": "n-1"})
    barrier = await service.publish("notification.user.carol", {"data": "after"})
    first = await clients.expect(name="phone", type="event")
    assert (first["event"], first["args"][1]["id"]) == ("notification_new", barrier), first


async def test_a_native_and_a_socketio_client_of_one_user_get_the_same_notification(
    start_amqp_gateway: AmqpGatewayFactory, service: Service, node_clients: NodeFactory
) -> None:
    a = await start_amqp_gateway(bindings="dynamic")
    b = await start_amqp_gateway(bindings="dynamic")
    clients = await node_clients(a.gateway)
    await clients.connect("browser", "notifications", auth={"token": mint("dora")})
    same_replica = await a.gateway.connect("notifications", user="dora")
    other_replica = await b.gateway.connect("notifications", user="dora")

    ident = await service.publish("notification.user.dora", {"data": {"title": "both"}})
    data, meta = await clients.event_meta("browser", "notification_new")
    assert meta["id"] == ident
    # The same event: the native frame's data, then every other field but the event name.
    sio_frame = {"event": "notification_new", "data": data, **meta}
    assert await receive(same_replica) == sio_frame
    # Each replica stamps `ts` when it receives the message (the publisher set no timestamp).
    elsewhere = await receive(other_replica)
    assert {**elsewhere, "ts": None} == {**sio_frame, "ts": None}
    assert abs(elsewhere["ts"] - sio_frame["ts"]) < 5_000


async def test_a_socketio_client_resumes_on_another_replica_from_the_stream(
    start_recovering: StartRecovering,
    service: Service,
    node_clients: NodeFactory,
    transport_opts: dict[str, Any],
) -> None:
    a = await start_recovering()
    b = await start_recovering()
    on_a, on_b = await node_clients(a.gateway), await node_clients(b.gateway)
    token = mint("erin")
    await on_a.connect("tab", "notifications", auth={"token": token}, **transport_opts)
    first = await service.publish("notification.user.erin", {"data": {"n": 0}})
    _, meta = await on_a.event_meta("tab", "notification_new")
    assert meta["id"] == first
    since = meta["offset"]
    await on_a.close("tab")
    missed = [await service.publish("notification.user.erin", {"data": {"n": n}}) for n in (1, 2)]
    await service.publish("notification.user.frank", {"data": "not erin's"})
    history = b.backbone.history
    assert history is not None
    await asyncio.wait_for(history.wait_offset(since, 5), 6)

    # The load balancer sends the reconnect to the other replica: it replays from the stream.
    auth = {"token": token, "since": since}
    await on_b.connect("tab", "notifications", auth=auth, **transport_opts)
    await expect_replay(on_b, "tab", missed)
    live = await service.publish("notification.user.erin", {"data": {"n": 3}})
    assert (await on_b.event_meta("tab", "notification_new"))[1]["id"] == live


@pytest.mark.parametrize(
    ("auth", "code"),
    [({"token": "not-a-jwt"}, "invalid_token"), (None, "unauthorized")],
)
async def test_a_bad_token_is_a_connect_error_on_a_rabbitmq_gateway(
    start_amqp_gateway: AmqpGatewayFactory,
    node_clients: NodeFactory,
    auth: dict[str, str] | None,
    code: str,
) -> None:
    gw = await start_amqp_gateway(bindings="dynamic")
    clients = await node_clients(gw.gateway)
    opts = {"auth": auth} if auth is not None else {}
    line = await clients.connect("a", "notifications", connected=False, **opts)
    assert line["type"] == "connect_error"
    assert line["data"] == {"code": code, "status": 401}
    assert len(gw.gateway.node.hub) == 0
    assert not any(key.startswith("notification.user.") for key in gw.gateway.node.bindings.bound)
