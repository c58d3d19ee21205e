"""service.node driven directly, with the embedded backbone and real Bindings, no aiohttp.

A test plays the transport: it makes sessions with `node.new_session`, joins them, calls
`node.handle` with decoded client messages, and reads what the node queued for each session
the way a writer task would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import orjson
import pytest

from service import codec
from service.auth import Authenticator
from service.backbone.memory import MemoryBackbone, UpstreamRecord
from service.bindings import BindingMode, Bindings
from service.errors import BackboneUnavailable, CloseCode, ErrorCode, ProtocolError, Refused
from service.metrics import Metrics
from service.model import ClientMessage, Event, Namespace, Principal
from service.node import MAX_NOTIFICATION_ID, MAX_TOPICS_PER_CALL, PUBLISH_SCOPE, Limits, Node
from service.session import Session

SECRET = "node-unit-test-secret-" + "x" * 32
WAIT_S = 3.0
DASH, NOTE = Namespace.DASHBOARD, Namespace.NOTIFICATIONS
HOUR_FROM_NOW = time.time() + 3600  # far enough that the real expiry sweeper never fires


class FlakyBackbone(MemoryBackbone):
    """The embedded backbone whose bind calls can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.bind_fails = False
        self._changed = asyncio.Event()

    async def bind(self, keys: Collection[str]) -> None:
        if self.bind_fails:
            raise BackboneUnavailable("broker down")
        await super().bind(keys)
        self._changed.set()

    async def unbind(self, keys: Collection[str]) -> None:
        await super().unbind(keys)
        self._changed.set()

    async def until(self, predicate: Callable[[frozenset[str]], bool]) -> None:
        """Wait until `predicate(bindings)` holds, re-checked after every bind and unbind."""
        async with asyncio.timeout(WAIT_S):
            while not predicate(self.bindings):
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def backbone() -> FlakyBackbone:
    return FlakyBackbone()


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(secret=SECRET)


NodeFactory = Callable[..., Node]


@pytest.fixture
async def make_node(backbone: FlakyBackbone, auth: Authenticator) -> AsyncIterator[NodeFactory]:
    """Factory for a started node; `limits` and `mode` can be set. Closed after the test."""
    nodes: list[Node] = []

    def factory(mode: BindingMode = BindingMode.DYNAMIC, **limits: Any) -> Node:
        limits.setdefault("bind_timeout_s", WAIT_S)
        bindings = Bindings(backbone, mode=mode, grace_s=0.0)
        node = Node(
            backbone,
            bindings,
            instance_id="unit-1",
            verify=auth.verify,
            limits=Limits(**limits),
            metrics=Metrics(),
        )
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        await node.close()


@pytest.fixture
async def node(make_node: NodeFactory) -> Node:
    started = make_node()
    await started.start()
    return started


async def join(
    node: Node,
    namespace: Namespace,
    sub: str | None = "42",
    *,
    topics: Collection[str] | None = None,
    scopes: Collection[str] = (),
    exp: float | None = HOUR_FROM_NOW,
) -> Session:
    principal = Principal(
        sub=sub,
        scopes=frozenset(scopes),
        topics=None if topics is None else frozenset(topics),
        exp=exp,
    )
    session = node.new_session(principal, namespace)
    await node.join(session)
    return session


async def handle(node: Node, session: Session, event: str, data: Any = None) -> Any:
    return await node.handle(session, ClientMessage(event=event, data=data, ack=1))


async def refused(node: Node, session: Session, event: str, data: Any = None) -> ErrorCode:
    """The error code `handle` answers with (fails the test when it succeeds)."""
    with pytest.raises(ProtocolError) as info:
        await handle(node, session, event, data)
    return info.value.code


async def frames(session: Session) -> list[dict[str, Any]]:
    """Everything queued for the session, decoded, taken as its writer would."""
    if session.pending_bytes == 0:
        return []
    async with asyncio.timeout(WAIT_S):
        batch = await session.next_batch()
    return [orjson.loads(frame) for frame in batch or []]


async def publish(node: Node, key: str, data: Any, **kwargs: Any) -> str:
    return await node.publish(key, data, **kwargs)


def sample(node: Node, name: str, **labels: str) -> float:
    value = node.metrics.registry.get_sample_value(f"realtime_gateway_{name}", labels)
    return 0.0 if value is None else value


def upstream(backbone: MemoryBackbone) -> list[tuple[str, dict[str, Any]]]:
    return [(r.routing_key, orjson.loads(r.body)) for r in backbone.upstream]


# -- lifecycle and admission ------------------------------------------------------------------


async def test_ready_follows_backbone_and_draining(node: Node, backbone: FlakyBackbone) -> None:
    assert node.ready
    assert node.not_ready_reason == ""
    backbone.set_available(False)
    assert not node.ready
    assert node.not_ready_reason == "backbone unavailable"
    backbone.set_available(True)
    node.begin_drain()
    assert not node.ready
    assert node.not_ready_reason == "draining"


async def test_join_registers_and_binds_before_returning(
    node: Node, backbone: FlakyBackbone
) -> None:
    session = await join(node, NOTE, "42")
    assert session in node.hub
    assert {"notification.user.42", "notification.broadcast"} <= backbone.bindings
    assert sample(node, "connections", gateway_namespace="notifications", transport="ws") == 1
    assert sample(node, "connects_total", gateway_namespace="notifications", transport="ws") == 1


async def test_new_session_uses_the_send_queue_limit(make_node: NodeFactory) -> None:
    node = make_node(send_queue_bytes=10)
    await node.start()
    session = await join(node, NOTE)
    assert session.push(b"0123456789")
    assert not session.push(b"x")
    assert session.close_code == CloseCode.SLOW_CONSUMER


async def test_leave_unregisters_and_counts_the_close(node: Node) -> None:
    session = await join(node, NOTE, "42")
    session.close(CloseCode.SLOW_CONSUMER, "slow")
    node.leave(session, CloseCode.SLOW_CONSUMER)
    assert session not in node.hub
    assert sample(node, "connections", gateway_namespace="notifications", transport="ws") == 0
    assert (
        sample(
            node,
            "disconnects_total",
            gateway_namespace="notifications",
            transport="ws",
            code="4008",
        )
        == 1
    )
    assert sample(node, "slow_consumer_closes_total") == 1
    node.leave(session, CloseCode.SLOW_CONSUMER)  # idempotent: counted once
    assert (
        sample(
            node,
            "disconnects_total",
            gateway_namespace="notifications",
            transport="ws",
            code="4008",
        )
        == 1
    )


async def test_a_session_abandoned_before_it_went_live_leaves_the_gauge_uncounted(
    node: Node,
) -> None:
    gauge = {"gateway_namespace": "notifications", "transport": "ws"}
    session = await join(node, NOTE, "42")
    assert sample(node, "connections", **gauge) == 1
    node.leave(session)  # no close code: the client went away during the upgrade
    node.leave(session)  # idempotent
    assert sample(node, "connections", **gauge) == 0
    assert sample(node, "disconnects_total", code="1000", **gauge) == 0


async def test_process_connection_limit_refuses_with_503(make_node: NodeFactory) -> None:
    node = make_node(max_connections=2)
    await node.start()
    await join(node, NOTE, "1")
    await join(node, DASH, "2")
    with pytest.raises(Refused) as info:
        await join(node, DASH, "3")
    assert (info.value.status, info.value.code) == (503, "unavailable")
    assert len(node.hub) == 2


async def test_user_limit_counts_both_namespaces_and_refuses_with_429(
    make_node: NodeFactory,
) -> None:
    node = make_node(max_connections_per_user=2)
    await node.start()
    first = await join(node, NOTE, "42")
    await join(node, DASH, "42")
    with pytest.raises(Refused) as info:
        await join(node, NOTE, "42")
    assert (info.value.status, info.value.code) == (429, "too_many_connections")
    with pytest.raises(Refused):
        await join(node, DASH, "42")
    await join(node, NOTE, "7")  # another user is not affected
    node.leave(first, CloseCode.NORMAL)
    await join(node, NOTE, "42")  # a slot is free again


async def test_anonymous_sessions_have_no_user_limit(make_node: NodeFactory) -> None:
    node = make_node(max_connections_per_user=1)
    await node.start()
    for _ in range(3):
        await join(node, DASH, None)
    assert len(node.hub) == 3


async def test_check_admission_refuses_before_anything_is_registered(
    make_node: NodeFactory,
) -> None:
    node = make_node(max_connections_per_user=1)
    await node.start()
    await join(node, NOTE, "42")
    with pytest.raises(Refused):
        node.check_admission(Principal(sub="42"), DASH)
    node.check_admission(Principal(sub="7"), DASH)


async def test_draining_refuses_new_connections(node: Node) -> None:
    node.begin_drain()
    with pytest.raises(Refused) as info:
        await join(node, NOTE, "42")
    assert (info.value.status, info.value.code) == (503, "unavailable")
    assert "draining" in info.value.message
    assert len(node.hub) == 0


async def test_join_whose_bindings_fail_is_refused_with_503_and_undone(
    make_node: NodeFactory, backbone: FlakyBackbone
) -> None:
    node = make_node(bind_timeout_s=0.05)
    await node.start()
    backbone.bind_fails = True
    with pytest.raises(Refused) as info:
        await join(node, NOTE, "42")
    assert (info.value.status, info.value.code) == (503, "unavailable")
    assert len(node.hub) == 0
    assert node.hub.connections_of("42") == 0
    assert sample(node, "connections", gateway_namespace="notifications", transport="ws") == 0


# -- downstream -------------------------------------------------------------------------------


async def test_notification_reaches_every_session_of_the_user_only(node: Node) -> None:
    mine = [await join(node, NOTE, "42"), await join(node, NOTE, "42")]
    other = await join(node, NOTE, "7")
    ident = await publish(node, "notification.user.42", {"t": "hi"})
    for session in mine:
        (frame,) = await frames(session)
        assert frame["event"] == "notification_new"
        assert frame["data"] == {"t": "hi"}
        assert frame["id"] == ident
        assert isinstance(frame["ts"], int)
        assert isinstance(frame["offset"], int)
        assert "topic" not in frame
    assert await frames(other) == []


async def test_a_dotted_user_gets_nothing_of_the_prefix_user(node: Node) -> None:
    a, ab = await join(node, NOTE, "a"), await join(node, NOTE, "a.b")
    await publish(node, "notification.user.a", 1)
    await publish(node, "notification.user.a.b", 2)
    assert [f["data"] for f in await frames(a)] == [1]
    assert [f["data"] for f in await frames(ab)] == [2]


async def test_broadcast_reaches_every_notifications_session(node: Node) -> None:
    one, two = await join(node, NOTE, "1"), await join(node, NOTE, "2")
    dash = await join(node, DASH, "1")
    await publish(node, "notification.broadcast", "all", message_id="b-1")
    assert [f["id"] for f in await frames(one)] == ["b-1"]
    assert [f["id"] for f in await frames(two)] == ["b-1"]
    assert await frames(dash) == []


async def test_dashboard_frames_carry_the_topic(node: Node) -> None:
    session = await join(node, DASH, "1")
    ident = await publish(node, "dashboard.sales", {"v": 1})
    (frame,) = await frames(session)
    assert frame == {
        "event": "dashboard_update",
        "data": {"v": 1},
        "id": ident,
        "ts": frame["ts"],
        "topic": "sales",
    }


async def test_on_event_with_an_unroutable_key_is_dropped_and_counted(node: Node) -> None:
    session = await join(node, DASH, "1")
    node.on_event(Event("dashboard.#", "dashboard_update", 1, "x", 0))
    assert await frames(session) == []
    assert sample(node, "dropped_total", reason="unroutable") == 1


async def test_on_event_closes_a_slow_consumer_and_counts_it(make_node: NodeFactory) -> None:
    def event(index: int) -> Event:
        return Event("dashboard.t", "dashboard_update", "x" * 60, f"m{index}", 1)

    size = len(codec.encode_event("dashboard_update", "x" * 60, "m0", 1, topic="t"))
    node = make_node(send_queue_bytes=2 * size)
    await node.start()
    slow, fast = await join(node, DASH, "1"), await join(node, DASH, "2")
    for index in range(3):
        node.on_event(event(index))
        assert len(await frames(fast)) == 1  # the fast reader takes every frame
    assert slow.close_code == CloseCode.SLOW_CONSUMER
    assert not fast.closed
    assert sample(node, "dropped_total", reason="slow_consumer") == 1
    assert sample(node, "deliveries_total", kind="topic") == 5


async def test_publish_checks_the_routing_key_and_event(node: Node) -> None:
    for key in ["", "dashboard.#", "notification.user.*", "other.x", "dashboard.a..b"]:
        with pytest.raises(ProtocolError) as info:
            await publish(node, key, 1)
        assert info.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(ProtocolError):
        await publish(node, "dashboard.a", 1, event="e" * 65)


async def test_publish_keeps_the_given_id_and_event(node: Node) -> None:
    session = await join(node, NOTE, "42")
    assert await publish(node, "notification.user.42", 1, event="custom", message_id="m") == "m"
    (frame,) = await frames(session)
    assert (frame["event"], frame["id"]) == ("custom", "m")


async def test_publish_while_the_backbone_is_down(node: Node, backbone: FlakyBackbone) -> None:
    backbone.set_available(False)
    with pytest.raises(BackboneUnavailable):
        await publish(node, "dashboard.a", 1)
    assert sample(node, "published_total", result="unavailable") == 1


# -- handle(): dispatch -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "event"),
    [
        (DASH, "nope"),
        (DASH, "notification_read"),
        (DASH, "notification_new"),
        (NOTE, "subscribe"),
        (NOTE, "unsubscribe"),
        (NOTE, "dashboard_refresh"),
        (NOTE, "dashboard_update"),
        (NOTE, "ack"),
    ],
)
async def test_unknown_events(node: Node, namespace: Namespace, event: str) -> None:
    session = await join(node, namespace, "42")
    assert await refused(node, session, event, {}) is ErrorCode.UNKNOWN_EVENT


# -- subscribe / unsubscribe ------------------------------------------------------------------


async def test_subscribe_binds_before_the_ack_and_narrows_delivery(
    node: Node, backbone: FlakyBackbone
) -> None:
    session = await join(node, DASH, "1")
    assert await handle(node, session, "subscribe", {"topics": ["sales"]}) == {"topics": ["sales"]}
    assert node.bindings.is_covered("dashboard.sales")
    await backbone.until(lambda bound: bound == {"dashboard.sales"})
    await publish(node, "dashboard.sales", 1)
    await publish(node, "dashboard.ops", 2)
    assert [f["topic"] for f in await frames(session)] == ["sales"]


async def test_never_subscribed_gets_every_topic(node: Node) -> None:
    session = await join(node, DASH, "1")
    await publish(node, "dashboard.sales", 1)
    await publish(node, "dashboard.ops", 2)
    assert [f["topic"] for f in await frames(session)] == ["sales", "ops"]


async def test_subscribe_star_and_unsubscribe(node: Node) -> None:
    session = await join(node, DASH, "1")
    await handle(node, session, "subscribe", {"topics": ["sales"]})
    assert await handle(node, session, "subscribe", {"topics": ["*"]}) == {"topics": ["*"]}
    assert await handle(node, session, "unsubscribe", {"topics": ["*"]}) == {"topics": []}
    await publish(node, "dashboard.sales", 1)
    assert await frames(session) == []


async def test_star_is_bounded_by_the_topics_claim(node: Node) -> None:
    session = await join(node, DASH, "1", topics=["sales", "ops"])
    assert await handle(node, session, "subscribe", {"topics": ["*"]}) == {
        "topics": ["ops", "sales"]
    }
    await publish(node, "dashboard.hr", 1)
    await publish(node, "dashboard.ops", 2)
    assert [f["topic"] for f in await frames(session)] == ["ops"]


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        [],
        "sales",
        {"topics": "sales"},
        {"topics": []},
        {"topics": [1]},
        {"topics": ["sales", None]},
        {"topics": ["a#"]},
        {"topics": ["a.*"]},
        {"topics": ["a..b"]},
        {"topics": [" sales"]},
        {"topics": [""]},
        {"topics": ["t"] * (MAX_TOPICS_PER_CALL + 1)},
    ],
)
@pytest.mark.parametrize("event", ["subscribe", "unsubscribe"])
async def test_subscribe_bad_requests(node: Node, event: str, data: Any) -> None:
    session = await join(node, DASH, "1")
    assert await refused(node, session, event, data) is ErrorCode.BAD_REQUEST
    assert node.hub.subscriptions(session) == ["*"]  # nothing changed


async def test_subscribe_accepts_the_maximum_number_of_topics(node: Node) -> None:
    session = await join(node, DASH, "1")
    topics = [f"t{i}" for i in range(MAX_TOPICS_PER_CALL)]
    assert await handle(node, session, "subscribe", {"topics": topics}) == {
        "topics": sorted(topics)
    }


async def test_subscribe_outside_the_claim_is_forbidden(node: Node) -> None:
    session = await join(node, DASH, "1", topics=["sales"])
    assert await refused(node, session, "subscribe", {"topics": ["sales", "hr"]}) is (
        ErrorCode.FORBIDDEN
    )
    assert node.hub.subscriptions(session) == ["sales"]


async def test_subscribe_while_bindings_cannot_be_applied_is_unavailable(
    make_node: NodeFactory, backbone: FlakyBackbone
) -> None:
    node = make_node(bind_timeout_s=0.05)
    await node.start()
    session = await join(node, DASH, "1")
    await handle(node, session, "subscribe", {"topics": ["ops"]})
    await backbone.until(lambda bound: "dashboard.#" not in bound)
    backbone.bind_fails = True
    assert await refused(node, session, "subscribe", {"topics": ["sales"]}) is (
        ErrorCode.UNAVAILABLE
    )


# -- dashboard_refresh ------------------------------------------------------------------------


async def test_refresh_answers_from_the_last_value_cache(
    node: Node, backbone: FlakyBackbone
) -> None:
    await join(node, DASH, "watcher")  # binds dashboard.#, so updates reach this instance
    await publish(node, "dashboard.sales", {"v": 1})
    last_sales = await publish(node, "dashboard.sales", {"v": 2})
    await publish(node, "dashboard.ops", {"v": 3})
    await publish(node, "dashboard.sales", "not cached", event="other_event")
    session = await join(node, DASH, "5")
    await handle(node, session, "subscribe", {"topics": ["sales", "hr"]})

    assert await handle(node, session, "dashboard_refresh", {}) == {"topics": ["sales"]}
    (frame,) = await frames(session)
    assert (frame["event"], frame["topic"], frame["id"]) == (
        "dashboard_update",
        "sales",
        last_sales,
    )
    assert frame["data"] == {"v": 2}

    key, body = upstream(backbone)[-1]
    assert key == "dashboard.dashboard_refresh"
    assert body["event"] == "dashboard_refresh"
    assert body["data"] == {}
    assert (body["user_id"], body["namespace"], body["connection_id"]) == (
        "5",
        "dashboard",
        session.id,
    )
    assert body["instance"] == "unit-1"
    assert isinstance(body["ts"], int)


async def test_refresh_of_one_topic(node: Node, backbone: FlakyBackbone) -> None:
    await join(node, DASH, "watcher")
    await publish(node, "dashboard.ops", {"v": 3})
    session = await join(node, DASH, "5")
    await handle(node, session, "subscribe", {"topics": ["sales"]})
    assert await handle(node, session, "dashboard_refresh", {"topic": "ops"}) == {"topics": ["ops"]}
    assert [f["data"] for f in await frames(session)] == [{"v": 3}]
    assert await handle(node, session, "dashboard_refresh", {"topic": "hr"}) == {"topics": []}
    assert await frames(session) == []
    assert upstream(backbone)[-1][1]["data"] == {"topic": "hr"}


async def test_refresh_without_data_means_every_received_topic(node: Node) -> None:
    await join(node, DASH, "watcher")
    await publish(node, "dashboard.a", 1)
    await publish(node, "dashboard.b", 2)
    session = await join(node, DASH, "5")
    result = await handle(node, session, "dashboard_refresh", None)
    assert sorted(result["topics"]) == ["a", "b"]
    assert sorted(f["topic"] for f in await frames(session)) == ["a", "b"]


async def test_refresh_respects_the_topics_claim(node: Node) -> None:
    await join(node, DASH, "watcher")
    await publish(node, "dashboard.a", 1)
    await publish(node, "dashboard.b", 2)
    session = await join(node, DASH, "5", topics=["a"])
    assert await handle(node, session, "dashboard_refresh", {}) == {"topics": ["a"]}
    assert await refused(node, session, "dashboard_refresh", {"topic": "b"}) is (
        ErrorCode.FORBIDDEN
    )


@pytest.mark.parametrize("data", [[], "sales", 1, {"topic": 1}, {"topic": "a#"}, {"topic": ""}])
async def test_refresh_bad_requests(node: Node, data: Any) -> None:
    session = await join(node, DASH, "5")
    assert await refused(node, session, "dashboard_refresh", data) is ErrorCode.BAD_REQUEST


async def test_refresh_while_upstream_is_down_is_unavailable(
    node: Node, backbone: FlakyBackbone
) -> None:
    session = await join(node, DASH, "5")
    backbone.set_available(False)
    assert await refused(node, session, "dashboard_refresh", {}) is ErrorCode.UNAVAILABLE
    assert sample(node, "upstream_publishes_total", result="unavailable") == 1


# -- client dashboard_update ------------------------------------------------------------------


async def test_client_update_needs_the_publish_scope(node: Node, backbone: FlakyBackbone) -> None:
    watcher = await join(node, DASH, "1")
    session = await join(node, DASH, "2", scopes=["dashboard:read"])
    data = {"topic": "sales", "data": 1}
    assert await refused(node, session, "dashboard_update", data) is ErrorCode.FORBIDDEN
    assert await frames(watcher) == []


async def test_client_update_goes_through_the_backbone_to_every_subscriber(node: Node) -> None:
    sales, ops = await join(node, DASH, "1"), await join(node, DASH, "2")
    await handle(node, sales, "subscribe", {"topics": ["sales"]})
    await handle(node, ops, "subscribe", {"topics": ["ops"]})
    publisher = await join(node, DASH, "3", scopes=[PUBLISH_SCOPE])
    result = await handle(node, publisher, "dashboard_update", {"topic": "sales", "data": {"v": 9}})
    (frame,) = await frames(sales)
    assert frame == {
        "event": "dashboard_update",
        "data": {"v": 9},
        "id": result["id"],
        "ts": frame["ts"],
        "topic": "sales",
    }
    assert await frames(ops) == []
    assert node.lastvalue.get("sales") is not None  # refreshable like any update


@pytest.mark.parametrize(
    "data", [None, [], {}, {"data": 1}, {"topic": 1}, {"topic": "a#"}, {"topic": "a b"}]
)
async def test_client_update_bad_requests(node: Node, data: Any) -> None:
    session = await join(node, DASH, "3", scopes=[PUBLISH_SCOPE])
    assert await refused(node, session, "dashboard_update", data) is ErrorCode.BAD_REQUEST


async def test_client_update_outside_the_claim_is_forbidden(node: Node) -> None:
    session = await join(node, DASH, "3", scopes=[PUBLISH_SCOPE], topics=["sales"])
    data = {"topic": "ops", "data": 1}
    assert await refused(node, session, "dashboard_update", data) is ErrorCode.FORBIDDEN


async def test_client_update_while_the_backbone_is_down_is_unavailable(
    node: Node, backbone: FlakyBackbone
) -> None:
    session = await join(node, DASH, "3", scopes=[PUBLISH_SCOPE])
    backbone.set_available(False)
    data = {"topic": "sales", "data": 1}
    assert await refused(node, session, "dashboard_update", data) is ErrorCode.UNAVAILABLE


# -- notification_read ------------------------------------------------------------------------


async def test_notification_read_goes_upstream_with_the_token_user_and_echoes(
    node: Node, backbone: FlakyBackbone
) -> None:
    sender, other_device = await join(node, NOTE, "42"), await join(node, NOTE, "42")
    stranger = await join(node, NOTE, "7")
    data = {"id": "n-1", "user_id": "7"}  # the payload names another user
    assert await handle(node, sender, "notification_read", data) == {"id": "n-1"}

    ((key, body),) = upstream(backbone)
    assert key == "notifications.notification_read"
    assert body["user_id"] == "42"
    assert body["data"] == {"id": "n-1"}
    assert (body["event"], body["namespace"]) == ("notification_read", "notifications")
    assert (body["connection_id"], body["instance"]) == (sender.id, "unit-1")

    (echo,) = await frames(other_device)
    assert (echo["event"], echo["data"]) == ("notification_read", {"id": "n-1"})
    assert isinstance(echo["offset"], int)
    assert await frames(sender) == []
    assert await frames(stranger) == []


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        [],
        "n-1",
        {"id": ""},
        {"id": 5},
        {"id": None},
        {"id": "x" * (MAX_NOTIFICATION_ID + 1)},
    ],
)
async def test_notification_read_bad_requests(
    node: Node, backbone: FlakyBackbone, data: Any
) -> None:
    session = await join(node, NOTE, "42")
    assert await refused(node, session, "notification_read", data) is ErrorCode.BAD_REQUEST
    assert list(backbone.upstream) == []


async def test_notification_read_id_at_the_limit(node: Node) -> None:
    session = await join(node, NOTE, "42")
    ident = "x" * MAX_NOTIFICATION_ID
    assert await handle(node, session, "notification_read", {"id": ident}) == {"id": ident}


async def test_notification_read_while_upstream_is_down_sends_nothing(
    node: Node, backbone: FlakyBackbone
) -> None:
    sender, other_device = await join(node, NOTE, "42"), await join(node, NOTE, "42")
    backbone.set_available(False)
    assert await refused(node, sender, "notification_read", {"id": "n"}) is (ErrorCode.UNAVAILABLE)
    assert list(backbone.upstream) == []
    assert await frames(other_device) == []


async def test_notification_read_is_acked_after_upstream_took_it(
    node: Node, backbone: FlakyBackbone
) -> None:
    seen: list[UpstreamRecord] = []
    remove = backbone.on_upstream(seen.append)
    session = await join(node, NOTE, "42")
    await handle(node, session, "notification_read", {"id": "n"})
    remove()
    assert len(seen) == 1


# -- auth refresh and expiry ------------------------------------------------------------------


async def test_auth_refresh_with_the_same_sub_extends_the_session(
    node: Node, auth: Authenticator
) -> None:
    session = await join(node, NOTE, "42", exp=HOUR_FROM_NOW, topics=["kept"])
    token = auth.mint("42", ttl_s=7200, scopes=["a", "b"], topics=["other"])
    result = await handle(node, session, "auth", {"token": token})
    new_exp = session.principal.exp
    assert new_exp is not None
    assert result == {"exp": new_exp}
    assert new_exp > HOUR_FROM_NOW
    assert session.principal.scopes == {"a", "b"}
    assert session.principal.topics == {"kept"}  # checked at connect; unchanged
    assert node.expire_tokens(HOUR_FROM_NOW) == 0
    assert not session.closed
    assert node.expire_tokens(new_exp) == 1
    assert session.close_code == CloseCode.TOKEN_EXPIRED


@pytest.mark.parametrize("namespace", [DASH, NOTE])
async def test_auth_refresh_with_another_sub_is_forbidden(
    node: Node, auth: Authenticator, namespace: Namespace
) -> None:
    session = await join(node, namespace, "42")
    token = auth.mint("7", ttl_s=7200)
    assert await refused(node, session, "auth", {"token": token}) is ErrorCode.FORBIDDEN
    assert session.principal.exp == HOUR_FROM_NOW


async def test_auth_refresh_of_an_anonymous_session_is_forbidden(
    node: Node, auth: Authenticator
) -> None:
    session = await join(node, DASH, None, exp=None)
    assert await refused(node, session, "auth", {"token": auth.mint("42")}) is (ErrorCode.FORBIDDEN)


async def test_auth_refresh_with_a_bad_token_is_forbidden(node: Node, auth: Authenticator) -> None:
    session = await join(node, NOTE, "42")
    expired = auth.mint("42", ttl_s=-10)
    forged = Authenticator(secret="another-secret-" + "y" * 32).mint("42")
    for token in (expired, forged, "not-a-jwt"):
        assert await refused(node, session, "auth", {"token": token}) is ErrorCode.FORBIDDEN


@pytest.mark.parametrize("data", [None, {}, [], "jwt", {"token": ""}, {"token": 1}])
async def test_auth_refresh_bad_requests(node: Node, data: Any) -> None:
    session = await join(node, NOTE, "42")
    assert await refused(node, session, "auth", data) is ErrorCode.BAD_REQUEST


async def test_expire_tokens_closes_with_4001(node: Node) -> None:
    soon = await join(node, NOTE, "1", exp=HOUR_FROM_NOW)
    later = await join(node, NOTE, "2", exp=HOUR_FROM_NOW + 60)
    forever = await join(node, DASH, None, exp=None)
    assert node.expire_tokens(HOUR_FROM_NOW - 1) == 0
    assert node.expire_tokens(HOUR_FROM_NOW) == 1
    assert soon.close_code == CloseCode.TOKEN_EXPIRED == 4001
    assert soon.close_reason == "token expired"
    assert not later.closed
    assert node.expire_tokens(HOUR_FROM_NOW + 3600) == 1
    assert later.close_code == CloseCode.TOKEN_EXPIRED
    assert not forever.closed


async def test_expire_tokens_skips_sessions_that_left_or_closed(node: Node) -> None:
    gone = await join(node, NOTE, "1", exp=HOUR_FROM_NOW)
    closed = await join(node, NOTE, "2", exp=HOUR_FROM_NOW)
    node.leave(gone, CloseCode.NORMAL)
    closed.close(CloseCode.GOING_AWAY, "server draining")
    assert node.expire_tokens(HOUR_FROM_NOW) == 0
    assert closed.close_code == CloseCode.GOING_AWAY


# -- drain ------------------------------------------------------------------------------------


TASKS: set[asyncio.Task[None]] = set()


def play_transports(node: Node, sessions: list[Session]) -> dict[str, float]:
    """Stand in for the transports: when a session is closed, record when and leave."""
    loop = asyncio.get_running_loop()
    closed_at: dict[str, float] = {}

    async def transport(session: Session) -> None:
        await session.wait_closed()
        closed_at[session.id] = loop.time()
        node.leave(session, session.close_code)

    for session in sessions:
        task = loop.create_task(transport(session))
        TASKS.add(task)
        task.add_done_callback(TASKS.discard)
    return closed_at


async def test_drain_closes_every_session_with_1001_spread_over_the_window(node: Node) -> None:
    sessions = [await join(node, NOTE, str(i)) for i in range(5)]
    closed_at = play_transports(node, sessions)
    loop = asyncio.get_running_loop()
    window = 0.5
    started = loop.time()
    async with asyncio.timeout(window + WAIT_S):
        await node.drain(window, settle_s=WAIT_S)
    finished = loop.time()
    assert node.draining
    assert all(s.close_code == CloseCode.GOING_AWAY for s in sessions)
    assert len(node.hub) == 0
    times = sorted(closed_at.values())
    assert len(times) == 5
    # Evenly spaced: no close comes before its share of the window has passed (whether the
    # first one is due at once or after window / n), so they cannot all come at once.
    for index, at in enumerate(times):
        assert at - started >= window * index / 5 - 0.01
    assert finished - started < window + 1.0  # returned once every session had left


async def test_drain_refuses_joins_while_it_runs(node: Node) -> None:
    sessions = [await join(node, NOTE, str(i)) for i in range(2)]
    play_transports(node, sessions)
    task = asyncio.create_task(node.drain(0.2, settle_s=WAIT_S))
    await asyncio.sleep(0)
    with pytest.raises(Refused) as info:
        await join(node, NOTE, "late")
    assert info.value.status == 503
    async with asyncio.timeout(WAIT_S):
        await task


async def test_drain_with_no_sessions_returns_at_once(node: Node) -> None:
    async with asyncio.timeout(WAIT_S):
        await node.drain(30, settle_s=30)
    assert node.draining
    assert not node.ready


async def test_drain_does_not_wait_past_settle_for_sessions_that_never_leave(node: Node) -> None:
    session = await join(node, NOTE, "1")  # no transport plays along: it never leaves
    async with asyncio.timeout(WAIT_S):
        await node.drain(0, settle_s=0.05)
    assert session.close_code == CloseCode.GOING_AWAY
    assert session in node.hub
