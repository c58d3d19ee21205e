"""Downstream delivery: the right sockets get each event, and only them."""

from __future__ import annotations

import asyncio

import pytest

from service.backbone.memory import MemoryBackbone
from tests.conftest import Gateway, GatewayFactory, mint, nothing_arrives, receive, request


async def test_both_sockets_of_a_user_get_the_notification_and_nobody_else(
    gateway: Gateway,
) -> None:
    first = await gateway.connect("notifications", user="42")
    second = await gateway.connect("notifications", user="42")
    other = await gateway.connect("notifications", user="7")

    ident = await gateway.publish("notification.user.42", {"title": "build finished"})

    for ws in (first, second):
        frame = await receive(ws)
        assert frame["event"] == "notification_new"
        assert frame["data"] == {"title": "build finished"}
        assert frame["id"] == ident
        assert "topic" not in frame
    # A broadcast afterwards is the barrier: user 7's first frame must be the broadcast.
    await gateway.publish("notification.broadcast", {"all": True})
    frame = await receive(other)
    assert frame["data"] == {"all": True}


async def test_broadcast_reaches_every_notifications_socket(gateway: Gateway) -> None:
    sockets = [await gateway.connect("notifications", user=u) for u in ("1", "2", "3")]
    await gateway.publish("notification.broadcast", {"maintenance": "tonight"})
    for ws in sockets:
        assert (await receive(ws))["data"] == {"maintenance": "tonight"}


async def test_publisher_event_name_and_id_are_kept(gateway: Gateway) -> None:
    ws = await gateway.connect("notifications", user="42")
    await gateway.publish("notification.user.42", {"n": 1}, event="custom_event", ident="abc-1")
    frame = await receive(ws)
    assert (frame["event"], frame["id"]) == ("custom_event", "abc-1")


async def test_subscribed_client_gets_only_its_topics_and_unsubscribed_gets_all(
    gateway: Gateway,
) -> None:
    picky = await gateway.connect("dashboard", user="1")
    everything = await gateway.connect("dashboard", user="2")
    answer = await request(picky, "subscribe", {"topics": ["sales"]})
    assert answer == {"event": "ack", "ack": 1, "data": {"topics": ["sales"]}}

    await gateway.publish("dashboard.ops", {"cpu": 93})
    await gateway.publish("dashboard.sales", {"total": 10})

    ops, sales = await receive(everything), await receive(everything)
    assert (ops["topic"], ops["data"]) == ("ops", {"cpu": 93})
    assert (sales["topic"], sales["data"]) == ("sales", {"total": 10})
    assert ops["event"] == sales["event"] == "dashboard_update"
    frame = await receive(picky)
    assert (frame["topic"], frame["data"]) == ("sales", {"total": 10})


async def test_unsubscribing_from_everything_stops_delivery(gateway: Gateway) -> None:
    ws = await gateway.connect("dashboard", user="1")
    await request(ws, "subscribe", {"topics": ["sales", "ops"]}, ack=1)
    answer = await request(ws, "unsubscribe", {"topics": ["sales", "ops"]}, ack=2)
    assert answer["data"] == {"topics": []}
    await gateway.publish("dashboard.sales", {"total": 1})
    # Barrier: a fresh subscribe ack arrives after anything published before it.
    await request(ws, "subscribe", {"topics": ["late"]}, ack=3)
    assert await nothing_arrives(ws)


async def test_star_subscription_is_limited_by_the_topics_claim(gateway: Gateway) -> None:
    ws = await gateway.connect("dashboard", token=mint("1", topics=["sales"]))
    answer = await request(ws, "subscribe", {"topics": ["*"]})
    assert answer["data"] == {"topics": ["sales"]}
    forbidden = await request(ws, "subscribe", {"topics": ["ops"]}, ack=2)
    assert forbidden["event"] == "error"
    assert forbidden["error"]["code"] == "forbidden"
    await gateway.publish("dashboard.ops", {"cpu": 1})
    await gateway.publish("dashboard.sales", {"total": 2})
    frame = await receive(ws)
    assert frame["topic"] == "sales"


async def test_never_subscribed_client_with_a_claim_gets_only_claimed_topics(
    gateway: Gateway,
) -> None:
    ws = await gateway.connect("dashboard", token=mint("1", topics=["sales"]))
    await gateway.publish("dashboard.ops", {"cpu": 1})
    await gateway.publish("dashboard.sales", {"total": 2})
    assert (await receive(ws))["topic"] == "sales"


async def test_dashboard_refresh_answers_from_the_last_value_cache(gateway: Gateway) -> None:
    # The cache holds what this instance received: a client keeps the topics bound.
    watcher = await gateway.connect("dashboard", user="0")
    await gateway.publish("dashboard.sales", {"total": 1})
    last_id = await gateway.publish("dashboard.sales", {"total": 2})
    await gateway.publish("dashboard.ops", {"cpu": 5})
    for _ in range(3):
        await receive(watcher)
    ws = await gateway.connect("dashboard", user="1")

    await ws.send_json({"event": "dashboard_refresh", "data": {"topic": "sales"}, "ack": 9})
    update = await receive(ws)
    assert update["event"] == "dashboard_update"
    assert (update["topic"], update["data"], update["id"]) == ("sales", {"total": 2}, last_id)
    ack = await receive(ws)
    assert ack == {"event": "ack", "ack": 9, "data": {"topics": ["sales"]}}

    await ws.send_json({"event": "dashboard_refresh", "data": {}, "ack": 10})
    topics = {(await receive(ws))["topic"], (await receive(ws))["topic"]}
    assert topics == {"sales", "ops"}
    assert (await receive(ws))["ack"] == 10


async def test_dashboard_refresh_is_forwarded_upstream(start_gateway: GatewayFactory) -> None:
    backbone = MemoryBackbone()
    gateway = await start_gateway(backbone=backbone)
    ws = await gateway.connect("dashboard", user="5")
    answer = await request(ws, "dashboard_refresh", {"topic": "sales"})
    assert answer["event"] == "ack"
    record = backbone.upstream[-1]
    assert record.routing_key == "dashboard.dashboard_refresh"


@pytest.mark.parametrize("sub", ["#", "*", "a.#", "42.#"])
async def test_wildcard_like_subjects_never_widen_delivery(gateway: Gateway, sub: str) -> None:
    victim = await gateway.connect("notifications", user="42")
    resp = await gateway.client.get(
        "/ws/notifications", headers={"Authorization": f"Bearer {mint_raw(sub)}"}
    )
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_token"
    await gateway.publish("notification.user.42", {"secret": 1})
    assert (await receive(victim))["data"] == {"secret": 1}


async def test_dotted_user_ids_are_exact(gateway: Gateway) -> None:
    dotted = await gateway.connect("notifications", user="a.b")
    plain = await gateway.connect("notifications", user="a")
    await gateway.publish("notification.user.a.b", {"for": "a.b"})
    await gateway.publish("notification.user.a", {"for": "a"})
    assert (await receive(dotted))["data"] == {"for": "a.b"}
    assert (await receive(plain))["data"] == {"for": "a"}
    await gateway.publish("notification.broadcast", {"barrier": True})
    assert (await receive(dotted))["data"] == {"barrier": True}
    assert (await receive(plain))["data"] == {"barrier": True}


async def test_slow_consumer_is_closed_and_others_get_everything(
    start_gateway: GatewayFactory,
) -> None:
    # Without conflation every update of the one topic queues (with it, see
    # tests/integration/test_conflation.py, the slow client would keep only the newest).
    gateway = await start_gateway(send_queue_bytes=64 * 1024, conflate=False)
    slow = await gateway.connect("dashboard", user="slow")
    fast = await gateway.connect("dashboard", user="fast")
    payload = {"blob": "x" * 8000}
    slow_session = next(s for s in gateway.node.hub.sessions() if s.user_id == "slow")

    received = 0

    async def read_fast(expected: int) -> None:
        nonlocal received
        while received < expected:
            frame = await receive(fast)
            assert frame["data"]["seq"] == received
            received += 1

    sent = 0
    async with asyncio.timeout(60):
        # The slow client never reads: kernel and client buffers fill, then its
        # outbound queue overflows and the gateway closes it with 4008.
        while slow_session.close_code is None and sent < 20_000:
            await gateway.node.publish("dashboard.sales", {**payload, "seq": sent})
            sent += 1
            await read_fast(sent)
        assert slow_session.close_code == 4008, sent
        for _ in range(5):  # the fast client keeps receiving afterwards
            await gateway.node.publish("dashboard.sales", {**payload, "seq": sent})
            sent += 1
        await read_fast(sent)
        assert received == sent
        while True:  # the slow client finally reads: buffered frames, then the close
            msg = await slow.receive(timeout=10)
            if msg.type.name in ("CLOSE", "CLOSED", "CLOSING"):
                break
    assert slow.close_code == 4008


def mint_raw(sub: str) -> str:
    """A token whose sub skips the minting checks (to test the gateway's own checks)."""
    import time

    import jwt

    from tests.conftest import SECRET

    return jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
