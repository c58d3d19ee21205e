"""The gateway on a real RabbitMQ: issue 3's "done means", one test (or more) each.

Services are played by a plain aio-pika client (`service` fixture) publishing to this test's
events exchange; gateways are full aiohttp apps on real ports (`start_amqp_gateway`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiohttp
import aiormq
import jwt
import pytest
from structlog.testing import capture_logs

from service import routing
from service.app import create_app
from service.backbone.amqp import publish_once
from service.errors import ConfigError, ProtocolError
from service.transports.context import GATEWAY
from tests.broker import (
    AmqpGateway,
    AmqpGatewayFactory,
    Broker,
    Names,
    Service,
    TcpProxy,
    make_backbone,
    next_message,
    until,
)
from tests.conftest import SECRET, make_config, nothing_arrives, receive, request

pytestmark = pytest.mark.amqp

RECOVERY_S = 30.0


def sample(gw: AmqpGateway, name: str, **labels: str) -> float:
    """A metric's current value on that gateway (0 when never touched)."""
    registry = gw.gateway.app[GATEWAY].metrics.registry
    return registry.get_sample_value(f"realtime_gateway_{name}", labels) or 0.0


# --- two instances ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dynamic", "auto"])
async def test_two_instances_deliver_by_user_and_broadcast(
    mode: str,
    start_amqp_gateway: AmqpGatewayFactory,
    service: Service,
    amqp_broker: Broker,
    amqp_names: Names,
) -> None:
    a = await start_amqp_gateway(bindings=mode)
    b = await start_amqp_gateway(bindings=mode)
    alice = await a.gateway.connect("notifications", user="alice")
    bob = await b.gateway.connect("notifications", user="bob")

    stamp = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    ident = await service.publish(
        "notification.user.alice", {"data": {"title": "hi"}}, timestamp=stamp
    )
    frame = await receive(alice)
    assert frame == {
        "event": "notification_new",
        "data": {"title": "hi"},
        "id": ident,
        "ts": int(stamp.timestamp() * 1000),
    }

    broadcast = await service.publish("notification.broadcast", {"data": "all"})
    for ws in (alice, bob):
        assert (await receive(ws))["id"] == broadcast
    # Bob's first frame was the broadcast: alice's notification, published before it, never
    # reached instance B at all (its queue is not bound to her key).
    assert sample(b, "events_total", kind="user") == 0
    assert sample(b, "events_total", kind="broadcast") == 1
    assert amqp_broker.bindings(b.queue, amqp_names.events) == {
        "notification.user.bob",
        "notification.broadcast",
    }
    assert amqp_broker.bindings(a.queue, amqp_names.events) == {
        "notification.user.alice",
        "notification.broadcast",
    }


async def test_wildcard_instances_receive_everything_and_deliver_only_to_targets(
    start_amqp_gateway: AmqpGatewayFactory,
    service: Service,
    amqp_broker: Broker,
    amqp_names: Names,
) -> None:
    a = await start_amqp_gateway(bindings="wildcard")
    b = await start_amqp_gateway(bindings="wildcard")
    alice = await a.gateway.connect("notifications", user="alice")
    bob = await b.gateway.connect("notifications", user="bob")
    ident = await service.publish("notification.user.alice", {"data": 1})
    assert (await receive(alice))["id"] == ident
    barrier = await service.publish("notification.user.bob", {"data": 2})
    assert (await receive(bob))["id"] == barrier
    assert sample(b, "events_total", kind="user") == 2  # B's queue got alice's too
    assert amqp_broker.bindings(b.queue, amqp_names.events) == {"dashboard.#", "notification.#"}


async def test_api_publish_on_one_instance_reaches_every_instance(
    start_amqp_gateway: AmqpGatewayFactory,
) -> None:
    a = await start_amqp_gateway()
    b = await start_amqp_gateway()
    on_a = await a.gateway.connect("dashboard", user="viewer-a")
    on_b = await b.gateway.connect("dashboard", user="viewer-b")
    ident = await a.gateway.publish("dashboard.sales", {"total": 3})
    for ws in (on_a, on_b):
        frame = await receive(ws)
        assert (frame["event"], frame["topic"], frame["data"], frame["id"]) == (
            "dashboard_update",
            "sales",
            {"total": 3},
            ident,
        )


async def test_auto_mode_collapses_user_bindings_above_the_maximum_and_back(
    start_amqp_gateway: AmqpGatewayFactory,
    service: Service,
    amqp_broker: Broker,
    amqp_names: Names,
) -> None:
    gw = await start_amqp_gateway(bindings="auto", user_bindings_max=2)
    node = gw.gateway.node
    sockets = {u: await gw.gateway.connect("notifications", user=u) for u in ("u1", "u2")}
    assert amqp_broker.bindings(gw.queue, amqp_names.events) == {
        "notification.user.u1",
        "notification.user.u2",
        "notification.broadcast",
    }

    sockets["u3"] = await gw.gateway.connect("notifications", user="u3")  # 3 > 2: collapse
    collapsed = {routing.USERS_ALL, routing.BROADCAST_KEY}
    await until(lambda: node.bindings.bound == collapsed, 5, "the per-user bindings to go")
    assert amqp_broker.bindings(gw.queue, amqp_names.events) == collapsed
    ident = await service.publish("notification.user.u3", {"data": "via #"})
    assert (await receive(sockets["u3"]))["id"] == ident

    for user in ("u2", "u3"):  # 1 < 0.8 x 2: back to one binding per user
        await sockets.pop(user).close()
    expanded = {"notification.user.u1", routing.BROADCAST_KEY}
    await until(lambda: node.bindings.bound == expanded, 5, "the per-user bindings to return")
    assert amqp_broker.bindings(gw.queue, amqp_names.events) == expanded
    ident = await service.publish("notification.user.u1", {"data": "direct"})
    assert (await receive(sockets["u1"]))["id"] == ident


# --- nothing published after the upgrade / the subscribe ack is missed ---------------------------


@pytest.mark.parametrize("mode", ["auto", "dynamic", "wildcard"])
async def test_a_message_published_right_after_the_upgrade_is_delivered(
    mode: str, start_amqp_gateway: AmqpGatewayFactory, service: Service
) -> None:
    gw = await start_amqp_gateway(bindings=mode)
    for user in ("first", "second", "third"):
        ws = await gw.gateway.connect("notifications", user=user)
        ident = await service.publish(f"notification.user.{user}", {"data": user})
        assert (await receive(ws))["id"] == ident


@pytest.mark.parametrize("mode", ["auto", "dynamic", "wildcard"])
async def test_a_message_published_right_after_the_subscribe_ack_is_delivered(
    mode: str, start_amqp_gateway: AmqpGatewayFactory, service: Service
) -> None:
    gw = await start_amqp_gateway(bindings=mode)
    ws = await gw.gateway.connect("dashboard", user="viewer")
    answer = await request(ws, "unsubscribe", {"topics": ["*"]})
    assert answer["event"] == "ack"
    if mode != "wildcard":  # wait until the all-topics binding is really gone
        await until(lambda: not gw.gateway.node.bindings.bound, 5, "dashboard.# to be unbound")
    answer = await request(ws, "subscribe", {"topics": ["sales"]}, ack=2)
    assert answer == {"event": "ack", "ack": 2, "data": {"topics": ["sales"]}}
    ident = await service.publish("dashboard.sales", {"data": {"v": 1}})
    frame = await receive(ws)
    assert (frame["topic"], frame["id"]) == ("sales", ident)


# --- unusable messages --------------------------------------------------------------------------


async def test_unusable_messages_are_dead_lettered_and_the_next_one_is_delivered(
    start_amqp_gateway: AmqpGatewayFactory, service: Service, amqp_names: Names
) -> None:
    gw = await start_amqp_gateway(bindings="wildcard")  # so unknown notification keys arrive
    ws = await gw.gateway.connect("notifications", user="erin")
    bad = {
        "not-json": ("notification.user.erin", b"{not json", "application/json"),
        "json-array": ("notification.user.erin", b"[1, 2]", "application/json"),
        "unknown-key": ("notification.other", b'{"data": 1}', "application/json"),
        "event-not-string": ("notification.user.erin", b'{"event": 5}', "application/json"),
        "text-plain": ("notification.user.erin", b'{"data": 1}', "text/plain"),
    }
    with capture_logs() as logs:
        for ident, (key, body, content_type) in bad.items():
            await service.publish(key, body, content_type=content_type, message_id=ident)
        good = await service.publish("notification.user.erin", {"data": "fine"})
        assert (await receive(ws))["id"] == good

    dead = await (await service.channel()).get_queue(amqp_names.dead)
    letters = [await next_message(dead) for _ in bad]
    assert [m.message_id for m in letters] == list(bad)
    assert all(m.headers["x-death"] for m in letters)  # type: ignore[index]
    logged = [e["message_id"] for e in logs if e["event"] == "message_dead_lettered"]
    assert logged == list(bad)
    assert sample(gw, "dead_lettered_total", reason="body") == 3
    assert sample(gw, "dead_lettered_total", reason="routing_key") == 1
    assert sample(gw, "dead_lettered_total", reason="content_type") == 1


# --- upstream -----------------------------------------------------------------------------------


async def test_notification_read_is_confirmed_upstream_before_the_ack_and_echoed(
    start_amqp_gateway: AmqpGatewayFactory, service: Service, amqp_names: Names
) -> None:
    tap = await service.tap(amqp_names.upstream, "notifications.#")
    a = await start_amqp_gateway()
    b = await start_amqp_gateway()
    phone = await a.gateway.connect("notifications", user="carol")
    laptop = await b.gateway.connect("notifications", user="carol")

    answer = await request(phone, "notification_read", {"id": "n-1"})
    assert answer == {"event": "ack", "ack": 1, "data": {"id": "n-1"}}
    # The ack came after the broker's confirm, so the event is already in the queue: no wait.
    message = await tap.get(no_ack=True, fail=False)
    assert message is not None, "acked before the upstream event was in the queue"
    assert message.routing_key == "notifications.notification_read"
    body = json.loads(message.body)
    assert body["event"] == "notification_read"
    assert body["data"] == {"id": "n-1"}
    assert (body["user_id"], body["namespace"]) == ("carol", "notifications")
    assert body["instance"] == a.backbone.instance_id
    assert isinstance(body["connection_id"], str)
    assert isinstance(body["ts"], int)

    echo = await receive(laptop)
    assert (echo["event"], echo["data"]) == ("notification_read", {"id": "n-1"})
    barrier = await service.publish("notification.user.carol", {"data": "after"})
    assert (await receive(phone))["id"] == barrier  # the sender got no echo of its own read


# --- broker outage ------------------------------------------------------------------------------


async def test_a_broker_outage_keeps_sockets_and_recovers_without_restart(
    start_amqp_gateway: AmqpGatewayFactory,
    service: Service,
    broker_proxy: TcpProxy,
    amqp_broker: Broker,
    amqp_names: Names,
) -> None:
    gw = await start_amqp_gateway(url=broker_proxy.url(amqp_broker.url), bindings="dynamic")
    client = gw.gateway.client
    ws = await gw.gateway.connect("notifications", user="dave")
    dashboard = await gw.gateway.connect("dashboard", user="wall")
    assert (await client.get("/readyz")).status == 200

    await broker_proxy.cut()
    await until(lambda: not gw.backbone.ready, 5, "the gateway to see the cut")
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["status"] == "unavailable"
    begin = time.monotonic()
    answer = await request(ws, "notification_read", {"id": "n-2"})
    assert answer["error"]["code"] == "unavailable"
    assert time.monotonic() - begin < 1.0  # at once, not after a timeout
    refused = await client.post(
        "/api/publish",
        json={"routing_key": "notification.user.dave", "data": 1},
        headers={"Authorization": "Bearer test-api-key"},
    )
    assert refused.status == 503
    assert not ws.closed
    assert not dashboard.closed

    await broker_proxy.restore()
    async with asyncio.timeout(RECOVERY_S):
        while (await client.get("/readyz")).status != 200:
            await gw.backbone.wait_ready(RECOVERY_S)
    assert sample(gw, "backbone_reconnects_total") == 1
    # Every binding is back: a message published after the outage reaches sockets from before.
    assert amqp_broker.bindings(gw.queue, amqp_names.events) == {
        "notification.user.dave",
        "notification.broadcast",
        "dashboard.#",
    }
    ident = await service.publish("notification.user.dave", {"data": "after"})
    assert (await receive(ws))["id"] == ident
    ident = await service.publish("dashboard.sales", {"data": 1})
    assert (await receive(dashboard))["id"] == ident
    answer = await request(ws, "notification_read", {"id": "n-3"}, ack=2)
    assert answer["event"] == "ack"


async def test_an_outage_longer_than_a_few_retries_still_recovers(
    start_amqp_gateway: AmqpGatewayFactory,
    service: Service,
    broker_proxy: TcpProxy,
    amqp_broker: Broker,
) -> None:
    gw = await start_amqp_gateway(
        url=broker_proxy.url(amqp_broker.url),
        backbone_options={"backoff_initial_s": 0.05, "backoff_max_s": 0.2},
    )
    ws = await gw.gateway.connect("notifications", user="frank")
    accepted = broker_proxy.accepted
    await broker_proxy.cut()
    await until(lambda: "attempt 3" in gw.backbone.reason, 5, "three failed reconnects")
    await broker_proxy.restore()
    await gw.backbone.wait_ready(RECOVERY_S)
    assert broker_proxy.accepted == accepted + 1
    ident = await service.publish("notification.user.frank", {"data": "back"})
    assert (await receive(ws))["id"] == ident


async def test_a_consumer_cancelled_by_the_broker_is_set_up_again(
    start_amqp_gateway: AmqpGatewayFactory, service: Service
) -> None:
    gw = await start_amqp_gateway()
    ws = await gw.gateway.connect("notifications", user="gina")
    # An operator deletes the instance queue: the broker cancels the consumer.
    link = gw.backbone._link
    assert link is not None
    await link.control.queue_delete(gw.queue)
    await until(lambda: sample(gw, "backbone_reconnects_total") == 1, RECOVERY_S, "a reconnect")
    ident = await service.publish("notification.user.gina", {"data": "again"})
    assert (await receive(ws))["id"] == ident


# --- start and stop -----------------------------------------------------------------------------


async def test_the_instance_queue_is_gone_after_a_clean_shutdown(
    aiohttp_client: Any, amqp_broker: Broker, amqp_names: Names
) -> None:
    instance = amqp_names.instance()
    config = make_config(
        amqp_url=amqp_broker.url,
        exchange=amqp_names.events,
        upstream_exchange=amqp_names.upstream,
        instance_id=instance,
    )
    client = await aiohttp_client(create_app(config))  # the backbone from_config builds
    assert (await client.get("/readyz")).status == 200
    queue = f"realtime.gateway.{instance}"
    connection = await aio_pika.connect(amqp_broker.url)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelLockedResource):
            await channel.declare_queue(queue, passive=True)  # exists, exclusive to the gateway
        await client.close()
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(queue, passive=True)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_LOG_LEVEL": "error", **env},
    )


@pytest.mark.slow
async def test_the_publish_command_goes_through_the_broker(
    start_amqp_gateway: AmqpGatewayFactory, amqp_broker: Broker, amqp_names: Names
) -> None:
    gw = await start_amqp_gateway()
    ws = await gw.gateway.connect("notifications", user="hank")
    done = await asyncio.to_thread(
        _cli,
        "publish",
        "notification.user.hank",
        '{"n": 1}',
        "--id",
        "cli-1",
        GATEWAY_AMQP_URL=amqp_broker.url,
        GATEWAY_EXCHANGE=amqp_names.events,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "cli-1"), done.stderr
    frame = await receive(ws)
    assert (frame["event"], frame["data"], frame["id"]) == ("notification_new", {"n": 1}, "cli-1")


async def test_publish_once_checks_the_routing_key_and_reports_the_broker(
    amqp_broker: Broker, amqp_names: Names
) -> None:
    config = make_config(amqp_url=amqp_broker.url, exchange=amqp_names.events)
    with pytest.raises(ProtocolError):
        await publish_once(config, "notification.user.a*", {})
    ident = await publish_once(config, "notification.broadcast", {"x": 1}, event="notice")
    assert len(ident) == 32


# --- ids are data, never patterns ----------------------------------------------------------------


async def test_a_dotted_user_id_is_its_own_key_and_never_a_prefix(
    start_amqp_gateway: AmqpGatewayFactory, service: Service
) -> None:
    gw = await start_amqp_gateway(bindings="dynamic")
    short = await gw.gateway.connect("notifications", user="a")
    dotted = await gw.gateway.connect("notifications", user="a.b")
    ident = await service.publish("notification.user.a.b", {"data": "for a.b"})
    assert (await receive(dotted))["id"] == ident
    barrier = await service.publish("notification.user.a", {"data": "for a"})
    assert (await receive(short))["id"] == barrier
    assert await nothing_arrives(dotted, within=0.2)


async def test_a_token_whose_sub_is_a_pattern_is_refused(
    start_amqp_gateway: AmqpGatewayFactory,
) -> None:
    gw = await start_amqp_gateway()
    for sub in ("#", "a.*"):
        token = jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, "HS256")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gw.gateway.connect("notifications", token=token)
        assert refused.value.status == 401
    assert gw.gateway.node.bindings.bound == frozenset()


async def test_a_mismatched_exchange_or_a_duplicate_instance_id_stops_the_start(
    amqp_broker: Broker, amqp_names: Names
) -> None:
    first = make_backbone(amqp_broker.url, amqp_names)
    await first.start(lambda event: None)
    try:
        twin = make_backbone(amqp_broker.url, amqp_names, instance_id=first.instance_id)
        with pytest.raises(ConfigError, match="RESOURCE_LOCKED"):
            await twin.start(lambda event: None)
    finally:
        await first.close()
    fresh = Names.new()  # the exchanges above exist now, as the gateway declares them
    connection = await aio_pika.connect(amqp_broker.url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(fresh.upstream, aio_pika.ExchangeType.FANOUT)
    other = make_backbone(amqp_broker.url, fresh)
    try:
        with pytest.raises(ConfigError, match="PRECONDITION_FAILED"):
            await other.start(lambda event: None)
    finally:
        await fresh.delete(amqp_broker.url)
