"""service.hub: registry, dashboard subscriptions, routing-key refcounts and fan-out."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from service import routing
from service.errors import CloseCode
from service.hub import WILDCARD, Hub, KeyChange
from service.model import Namespace, Principal
from service.routing import Route
from service.session import Session

DASH, NOTE = Namespace.DASHBOARD, Namespace.NOTIFICATIONS
WAIT_S = 2.0


def make(
    namespace: Namespace,
    sub: str | None = "42",
    *,
    topics: Iterable[str] | None = None,
    limit: int = 1 << 20,
) -> Session:
    principal = Principal(sub=sub, topics=None if topics is None else frozenset(topics))
    return Session(principal=principal, namespace=namespace, send_queue_bytes=limit)


def route(key: str) -> Route:
    parsed = routing.parse(key)
    assert parsed is not None
    return parsed


async def drain(session: Session) -> list[bytes]:
    """Take what is queued for the session, as its writer would ([] when nothing is)."""
    if session.pending_bytes == 0:
        return []
    async with asyncio.timeout(WAIT_S):
        return await session.next_batch() or []


def changed(change: KeyChange) -> tuple[set[str], set[str]]:
    return set(change.added), set(change.removed)


@pytest.fixture
def hub() -> Hub:
    return Hub()


# -- registry ---------------------------------------------------------------------------------


def test_add_and_remove_index_by_namespace_and_user(hub: Hub) -> None:
    note1, note2, dash = make(NOTE, "42"), make(NOTE, "42"), make(DASH, "42")
    other = make(NOTE, "7")
    for session in (note1, note2, dash, other):
        hub.add(session)
    assert len(hub) == 4
    assert hub.count() == 4
    assert hub.count(NOTE) == 3
    assert hub.count(DASH) == 1
    assert set(hub.user_sessions("42")) == {note1, note2}  # notifications sessions only
    assert set(hub.user_sessions("7")) == {other}
    assert list(hub.user_sessions("nobody")) == []
    assert hub.local_users() == 2
    assert note1 in hub
    assert hub.get(note1.id) is note1
    assert set(hub.sessions()) == {note1, note2, dash, other}

    hub.remove(note1)
    assert note1 not in hub
    assert hub.get(note1.id) is None
    assert set(hub.user_sessions("42")) == {note2}
    hub.remove(note2)
    assert list(hub.user_sessions("42")) == []
    assert hub.local_users() == 1  # user 42 only has a dashboard session left
    assert hub.count(NOTE) == 1


def test_adding_twice_is_an_error(hub: Hub) -> None:
    session = make(NOTE)
    hub.add(session)
    with pytest.raises(ValueError):
        hub.add(session)
    assert len(hub) == 1


def test_remove_is_idempotent_and_ignores_strangers(hub: Hub) -> None:
    session = make(NOTE)
    hub.add(session)
    assert changed(hub.remove(session)) == (
        set(),
        {"notification.user.42", "notification.broadcast"},
    )
    assert changed(hub.remove(session)) == (set(), set())
    assert changed(hub.remove(make(NOTE))) == (set(), set())
    assert len(hub) == 0


def test_a_different_session_with_the_same_id_is_not_removed(hub: Hub) -> None:
    session = make(NOTE)
    hub.add(session)
    impostor = Session(
        principal=session.principal, namespace=NOTE, send_queue_bytes=10, session_id=session.id
    )
    assert impostor not in hub
    assert changed(hub.remove(impostor)) == (set(), set())
    assert session in hub


def test_contains_is_false_for_non_sessions(hub: Hub) -> None:
    assert "x" not in hub
    assert None not in hub


def test_connections_per_user_count_both_namespaces(hub: Hub) -> None:
    sessions = [make(NOTE, "42"), make(DASH, "42"), make(DASH, "42"), make(NOTE, "7")]
    for session in sessions:
        hub.add(session)
    assert hub.connections_of("42") == 3
    assert hub.connections_of("7") == 1
    assert hub.connections_of("nobody") == 0
    hub.remove(sessions[1])
    assert hub.connections_of("42") == 2
    hub.remove(sessions[0])
    hub.remove(sessions[2])
    assert hub.connections_of("42") == 0


def test_anonymous_sessions_count_no_user(hub: Hub) -> None:
    anon = make(DASH, None)
    hub.add(anon)
    assert hub.local_users() == 0
    assert len(hub) == 1
    hub.remove(anon)
    assert len(hub) == 0


# -- dashboard subscriptions ------------------------------------------------------------------


def test_never_subscribed_without_claim_receives_every_topic(hub: Hub) -> None:
    session = make(DASH)
    change = hub.add(session)
    assert changed(change) == ({"dashboard.#"}, set())
    assert hub.subscriptions(session) == [WILDCARD]
    assert hub.receives(session, "sales")
    assert hub.receives(session, "anything")
    assert session.explicit is False


def test_never_subscribed_with_claim_receives_the_claimed_topics(hub: Hub) -> None:
    session = make(DASH, topics=["sales", "ops"])
    assert changed(hub.add(session)) == ({"dashboard.sales", "dashboard.ops"}, set())
    assert hub.subscriptions(session) == ["ops", "sales"]
    assert hub.receives(session, "sales")
    assert not hub.receives(session, "hr")


def test_empty_claim_receives_nothing(hub: Hub) -> None:
    session = make(DASH, topics=[])
    assert changed(hub.add(session)) == (set(), set())
    assert hub.subscriptions(session) == []
    assert not hub.receives(session, "sales")


def test_first_subscribe_narrows_to_exactly_the_subscriptions(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    change = hub.subscribe(session, ["sales"])
    assert changed(change) == ({"dashboard.sales"}, {"dashboard.#"})
    assert hub.subscriptions(session) == ["sales"]
    assert hub.receives(session, "sales")
    assert not hub.receives(session, "ops")
    assert session.explicit


def test_subscribe_adds_to_existing_subscriptions(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    hub.subscribe(session, ["sales"])
    assert changed(hub.subscribe(session, ["ops", "sales"])) == ({"dashboard.ops"}, set())
    assert hub.subscriptions(session) == ["ops", "sales"]


def test_subscribe_star_without_claim_is_every_topic(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    hub.subscribe(session, ["sales"])
    change = hub.subscribe(session, [WILDCARD])
    assert changed(change) == ({"dashboard.#"}, {"dashboard.sales"})
    assert hub.subscriptions(session) == [WILDCARD]
    assert hub.receives(session, "anything")


def test_subscribe_star_as_first_call_keeps_every_topic(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    assert changed(hub.subscribe(session, [WILDCARD])) == (set(), set())
    assert hub.subscriptions(session) == [WILDCARD]


def test_topics_claim_restricts_star(hub: Hub) -> None:
    session = make(DASH, topics=["sales", "ops"])
    hub.add(session)
    hub.subscribe(session, ["sales"])
    change = hub.subscribe(session, [WILDCARD])
    assert changed(change) == ({"dashboard.ops"}, set())
    assert hub.subscriptions(session) == ["ops", "sales"]
    assert not session.sub_all
    assert not hub.receives(session, "hr")
    assert "dashboard.#" not in hub.needed_keys()


def test_unsubscribe_a_topic(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    hub.subscribe(session, ["sales", "ops"])
    assert changed(hub.unsubscribe(session, ["sales"])) == (set(), {"dashboard.sales"})
    assert hub.subscriptions(session) == ["ops"]
    assert changed(hub.unsubscribe(session, ["not-subscribed"])) == (set(), set())


def test_unsubscribing_everything_receives_nothing(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    hub.subscribe(session, ["sales"])
    assert changed(hub.unsubscribe(session, ["sales"])) == (set(), {"dashboard.sales"})
    assert hub.subscriptions(session) == []
    assert not hub.receives(session, "sales")
    assert list(hub.targets(route("dashboard.sales"))) == []


def test_unsubscribe_star_removes_every_subscription(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    hub.subscribe(session, ["sales", "ops"])
    change = hub.unsubscribe(session, [WILDCARD])
    assert changed(change) == (set(), {"dashboard.sales", "dashboard.ops"})
    assert hub.subscriptions(session) == []


def test_unsubscribe_star_removes_the_wildcard_too(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    hub.subscribe(session, [WILDCARD])
    assert changed(hub.unsubscribe(session, [WILDCARD])) == (set(), {"dashboard.#"})
    assert not hub.receives(session, "sales")


def test_unsubscribe_as_first_call_starts_from_nothing(hub: Hub) -> None:
    """The first explicit call replaces the implicit 'every topic' (see the hub docstring)."""
    session = make(DASH)
    hub.add(session)
    assert changed(hub.unsubscribe(session, ["ops"])) == (set(), {"dashboard.#"})
    assert hub.subscriptions(session) == []


def test_named_topic_while_subscribed_to_every_topic_is_remembered(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    hub.subscribe(session, [WILDCARD, "sales"])
    assert hub.subscriptions(session) == [WILDCARD]
    assert hub.keys_of(session) == {"dashboard.#"}
    change = hub.unsubscribe(session, [WILDCARD])
    assert hub.subscriptions(session) == []
    assert changed(change) == (set(), {"dashboard.#"})


def test_subscribe_on_a_session_not_in_the_hub_changes_no_keys(hub: Hub) -> None:
    session = make(DASH)
    assert changed(hub.subscribe(session, ["sales"])) == (set(), set())
    assert session.topics == {"sales"}
    assert hub.needed_keys() == set()


def test_a_removed_session_leaves_no_topic_index_or_keys(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    hub.subscribe(session, ["sales"])
    hub.remove(session)
    assert list(hub.targets(route("dashboard.sales"))) == []
    assert hub.needed_keys() == set()


# -- key refcounts ----------------------------------------------------------------------------


def test_notification_keys_are_refcounted_over_sessions(hub: Hub) -> None:
    one, two, other = make(NOTE, "42"), make(NOTE, "42"), make(NOTE, "7")
    assert changed(hub.add(one)) == ({"notification.user.42", "notification.broadcast"}, set())
    assert changed(hub.add(two)) == (set(), set())
    assert changed(hub.add(other)) == ({"notification.user.7"}, set())
    assert changed(hub.remove(one)) == (set(), set())
    assert changed(hub.remove(two)) == (set(), {"notification.user.42"})
    assert changed(hub.remove(other)) == (set(), {"notification.user.7", "notification.broadcast"})
    assert hub.needed_keys() == set()


def test_anonymous_notifications_session_needs_only_broadcast(hub: Hub) -> None:
    anon = make(NOTE, None)
    assert changed(hub.add(anon)) == ({"notification.broadcast"}, set())
    assert hub.keys_of(anon) == {"notification.broadcast"}


def test_dashboard_keys_are_refcounted_over_sessions(hub: Hub) -> None:
    a, b, c = make(DASH, "1"), make(DASH, "2"), make(DASH, "3")
    assert changed(hub.add(a)) == ({"dashboard.#"}, set())
    assert changed(hub.add(b)) == (set(), set())
    hub.add(c)
    assert changed(hub.subscribe(a, ["sales"])) == ({"dashboard.sales"}, set())
    assert changed(hub.subscribe(b, ["sales", "ops"])) == ({"dashboard.ops"}, set())
    assert changed(hub.subscribe(c, ["sales"])) == (set(), {"dashboard.#"})
    assert hub.needed_keys() == {"dashboard.sales", "dashboard.ops"}
    assert changed(hub.unsubscribe(a, ["sales"])) == (set(), set())
    assert changed(hub.remove(c)) == (set(), set())
    assert changed(hub.remove(b)) == (set(), {"dashboard.sales", "dashboard.ops"})
    assert hub.needed_keys() == set()


def test_needed_keys_equal_the_union_of_every_sessions_keys(hub: Hub) -> None:
    sessions = [
        make(NOTE, "1"),
        make(NOTE, "2"),
        make(DASH, "3"),
        make(DASH, "4", topics=["a", "b"]),
        make(DASH, None),
    ]
    for session in sessions:
        hub.add(session)
    hub.subscribe(sessions[2], ["x"])
    hub.subscribe(sessions[3], ["a"])
    union: set[str] = set().union(*(hub.keys_of(s) for s in sessions))
    assert hub.needed_keys() == union
    assert union == {
        "notification.user.1",
        "notification.user.2",
        "notification.broadcast",
        "dashboard.x",
        "dashboard.a",
        "dashboard.#",
    }


def test_added_and_removed_replay_to_the_needed_set(hub: Hub) -> None:
    """Applying every KeyChange in order to an empty set reproduces needed_keys()."""
    mirror: set[str] = set()

    def apply(change: KeyChange) -> None:
        assert not set(change.added) & mirror, "added a key that was already needed"
        assert set(change.removed) <= mirror, "removed a key that was not needed"
        mirror.update(change.added)
        mirror.difference_update(change.removed)
        assert mirror == hub.needed_keys()

    sessions = [make(DASH, str(i % 3), topics=None if i % 2 else ["a", "b"]) for i in range(6)]
    sessions += [make(NOTE, str(i % 3)) for i in range(6)]
    for session in sessions:
        apply(hub.add(session))
    for index, session in enumerate(sessions[:6]):
        apply(hub.subscribe(session, ["a"] if index % 2 == 0 else [WILDCARD, "c"]))
        apply(hub.unsubscribe(session, ["a"]))
        apply(hub.subscribe(session, ["b", WILDCARD]))
    for session in sessions:
        apply(hub.remove(session))
    assert mirror == set()


# -- targets and fan-out ----------------------------------------------------------------------


def test_topic_targets(hub: Hub) -> None:
    everything, sales, ops, claimed = make(DASH), make(DASH), make(DASH), make(DASH, topics=["ops"])
    for session in (everything, sales, ops, claimed):
        hub.add(session)
    hub.subscribe(sales, ["sales"])
    hub.subscribe(ops, ["ops"])
    assert set(hub.targets(route("dashboard.sales"))) == {everything, sales}
    assert set(hub.targets(route("dashboard.ops"))) == {everything, ops, claimed}
    assert set(hub.targets(route("dashboard.hr"))) == {everything}


def test_topic_targets_yield_each_session_once(hub: Hub) -> None:
    session = make(DASH)
    hub.add(session)
    hub.subscribe(session, [WILDCARD, "sales"])
    assert list(hub.targets(route("dashboard.sales"))) == [session]


def test_user_targets_are_that_users_notifications_sessions(hub: Hub) -> None:
    mine1, mine2, dash = make(NOTE, "42"), make(NOTE, "42"), make(DASH, "42")
    other = make(NOTE, "7")
    for session in (mine1, mine2, dash, other):
        hub.add(session)
    assert set(hub.targets(route("notification.user.42"))) == {mine1, mine2}
    assert set(hub.targets(route("notification.user.7"))) == {other}
    assert list(hub.targets(route("notification.user.99"))) == []


def test_broadcast_targets_every_notifications_session(hub: Hub) -> None:
    sessions = [make(NOTE, "1"), make(NOTE, "2"), make(NOTE, None)]
    dash = make(DASH, "1")
    for session in [*sessions, dash]:
        hub.add(session)
    assert set(hub.targets(route("notification.broadcast"))) == set(sessions)


def test_exclude_skips_the_origin_session(hub: Hub) -> None:
    sender, other_device = make(NOTE, "42"), make(NOTE, "42")
    hub.add(sender)
    hub.add(other_device)
    assert set(hub.targets(route("notification.user.42"), exclude=sender.id)) == {other_device}
    assert set(hub.targets(route("notification.broadcast"), exclude=sender.id)) == {other_device}


async def test_a_dotted_user_never_receives_the_prefix_users_messages(hub: Hub) -> None:
    a, ab, abc = make(NOTE, "a"), make(NOTE, "a.b"), make(NOTE, "a.b.c")
    for session in (a, ab, abc):
        hub.add(session)
    hub.fanout(route("notification.user.a"), b"for-a")
    hub.fanout(route("notification.user.a.b"), b"for-ab")
    assert await drain(a) == [b"for-a"]
    assert await drain(ab) == [b"for-ab"]
    assert await drain(abc) == []


async def test_a_dotted_topic_never_receives_the_prefix_topics_messages(hub: Hub) -> None:
    a, ab = make(DASH), make(DASH)
    hub.add(a)
    hub.add(ab)
    hub.subscribe(a, ["a"])
    hub.subscribe(ab, ["a.b"])
    hub.fanout(route("dashboard.a"), b"for-a")
    hub.fanout(route("dashboard.a.b"), b"for-ab")
    assert await drain(a) == [b"for-a"]
    assert await drain(ab) == [b"for-ab"]


async def test_fanout_pushes_the_same_bytes_object_to_every_target(hub: Hub) -> None:
    sessions = [make(NOTE, "42") for _ in range(3)]
    for session in sessions:
        hub.add(session)
    frame = b'{"event":"notification_new"}'
    assert hub.fanout(route("notification.user.42"), frame) == (3, 0)
    for session in sessions:
        (queued,) = await drain(session)
        assert queued is frame


async def test_fanout_counts_and_closes_a_slow_consumer_without_affecting_others(hub: Hub) -> None:
    slow, fast = make(DASH, limit=10), make(DASH, limit=1 << 20)
    hub.add(slow)
    hub.add(fast)
    frames = [b"update-%02d" % index for index in range(5)]  # 9 bytes each
    results = [hub.fanout(route("dashboard.sales"), frame) for frame in frames]
    # The overflow is counted once; the closed session is then skipped, not counted again.
    assert results == [(2, 0), (1, 1)] + [(1, 0)] * 3
    assert slow.close_code == CloseCode.SLOW_CONSUMER
    assert await drain(fast) == frames
    assert await drain(slow) == []
    assert slow in hub  # the transport removes it when its socket is closed


async def test_fanout_with_exclude(hub: Hub) -> None:
    sender, other = make(NOTE, "42"), make(NOTE, "42")
    hub.add(sender)
    hub.add(other)
    assert hub.fanout(route("notification.user.42"), b"x", exclude=sender.id) == (1, 0)
    assert await drain(sender) == []
    assert await drain(other) == [b"x"]


def test_fanout_to_nobody(hub: Hub) -> None:
    assert hub.fanout(route("notification.user.42"), b"x") == (0, 0)
    assert hub.fanout(route("dashboard.sales"), b"x") == (0, 0)
    assert hub.fanout(route("notification.broadcast"), b"x") == (0, 0)


# -- properties -------------------------------------------------------------------------------

USERS = ["1", "2", "a", "a.b"]
TOPICS = ["sales", "ops", "hr", "eu.sales"]
CLAIMS: list[list[str] | None] = [None, [], ["sales"], ["sales", "ops"]]


class HubMachine(RuleBasedStateMachine):
    """Random add / remove / subscribe / unsubscribe sequences against the hub's invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.hub = Hub()
        self.mirror: set[str] = set()  # the keys the KeyChanges said are needed

    sessions = Bundle("sessions")

    def apply(self, change: KeyChange) -> None:
        assert not set(change.added) & self.mirror
        assert set(change.removed) <= self.mirror
        self.mirror |= set(change.added)
        self.mirror -= set(change.removed)

    @rule(
        target=sessions,
        namespace=st.sampled_from(list(Namespace)),
        user=st.sampled_from([None, *USERS]),
        claim=st.sampled_from(CLAIMS),
    )
    def add(self, namespace: Namespace, user: str | None, claim: list[str] | None) -> Session:
        session = make(namespace, user, topics=claim)
        self.apply(self.hub.add(session))
        return session

    @rule(session=sessions)
    def remove(self, session: Session) -> None:
        self.apply(self.hub.remove(session))

    @rule(
        session=sessions,
        topics=st.lists(st.sampled_from([WILDCARD, *TOPICS]), min_size=1, max_size=3),
        subscribe=st.booleans(),
    )
    def change_subscriptions(self, session: Session, topics: list[str], subscribe: bool) -> None:
        if session.namespace is not DASH:
            return
        # The node lets through only topics the claim allows (and `*`); the hub trusts it.
        allowed = [t for t in topics if t == WILDCARD or session.principal.may_see(t)]
        if not allowed:
            return
        before = set(self.hub.subscriptions(session))
        if subscribe:
            self.apply(self.hub.subscribe(session, allowed))
        else:
            self.apply(self.hub.unsubscribe(session, allowed))
            if WILDCARD in allowed:
                assert self.hub.subscriptions(session) == []
            elif session.explicit and before != {WILDCARD}:
                assert not set(allowed) & set(self.hub.subscriptions(session))

    @invariant()
    def needed_keys_are_the_union_of_every_sessions_keys(self) -> None:
        union: set[str] = set()
        for session in self.hub.sessions():
            union |= self.hub.keys_of(session)
        assert self.hub.needed_keys() == union == self.mirror

    @invariant()
    def targets_are_exactly_the_receiving_sessions(self) -> None:
        dashboards = [s for s in self.hub.sessions() if s.namespace is DASH]
        for topic in TOPICS:
            targets = list(self.hub.targets(route(routing.topic_key(topic))))
            assert len(targets) == len(set(targets))
            assert set(targets) == {s for s in dashboards if self.hub.receives(s, topic)}
            for session in targets:
                assert session.principal.may_see(topic), "`*` widened the topics claim"

    @invariant()
    def user_targets_and_counts(self) -> None:
        sessions = self.hub.sessions()
        for user in USERS:
            mine = {s for s in sessions if s.namespace is NOTE and s.user_id == user}
            assert set(self.hub.targets(route(routing.user_key(user)))) == mine
            assert self.hub.connections_of(user) == sum(s.user_id == user for s in sessions)
        notes = {s for s in sessions if s.namespace is NOTE}
        assert set(self.hub.targets(route(routing.BROADCAST_KEY))) == notes


TestHubMachine = HubMachine.TestCase
TestHubMachine.settings = settings(max_examples=150, stateful_step_count=30)
