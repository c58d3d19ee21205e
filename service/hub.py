"""The local registry of sessions and the fan-out. Plain Python, and nothing here awaits.

The hub indexes sessions by namespace, by user and by dashboard topic, and counts how many
local sessions need each downstream routing key. Every mutation returns the keys whose count
went from zero to one (`added`) or from one to zero (`removed`); the node turns those into
backbone bindings. `fanout()` pushes one pre-built frame to every target synchronously, so
nothing can change the hub halfway through a delivery.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from service import routing
from service.model import Namespace
from service.routing import KeyKind, Route
from service.session import Session

WILDCARD = "*"


@dataclass(slots=True)
class KeyChange:
    """Routing keys that became needed or unneeded by this instance."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class Hub:
    """Local sessions and their interest; see the module docstring."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._by_namespace: dict[Namespace, set[Session]] = {ns: set() for ns in Namespace}
        self._by_user: dict[str, set[Session]] = {}
        self._connections_per_user: Counter[str] = Counter()
        self._by_topic: dict[str, set[Session]] = {}
        self._all_topics: set[Session] = set()
        self._key_refs: Counter[str] = Counter()

    # -- registry -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session: object) -> bool:
        return isinstance(session, Session) and self._sessions.get(session.id) is session

    def sessions(self) -> list[Session]:
        """A snapshot of every session."""
        return list(self._sessions.values())

    def get(self, session_id: str) -> Session | None:
        """The session with this id, if it is here."""
        return self._sessions.get(session_id)

    def count(self, namespace: Namespace | None = None) -> int:
        """Sessions in one namespace, or in all."""
        if namespace is None:
            return len(self._sessions)
        return len(self._by_namespace[namespace])

    def connections_of(self, user_id: str) -> int:
        """Sessions of this user over both namespaces."""
        return self._connections_per_user.get(user_id, 0)

    def user_sessions(self, user_id: str) -> Iterator[Session]:
        """The notifications sessions of one user."""
        return iter(self._by_user.get(user_id, ()))

    def needed_keys(self) -> set[str]:
        """Every routing key some local session needs."""
        return set(self._key_refs)

    def local_users(self) -> int:
        """How many distinct users have a notifications session here."""
        return len(self._by_user)

    def add(self, session: Session) -> KeyChange:
        """Register a new session; a dashboard session starts with every allowed topic."""
        if session.id in self._sessions:
            raise ValueError(f"session {session.id} is already registered")
        self._sessions[session.id] = session
        self._by_namespace[session.namespace].add(session)
        user = session.user_id
        if user is not None:
            self._connections_per_user[user] += 1
        if session.namespace is Namespace.NOTIFICATIONS and user is not None:
            self._by_user.setdefault(user, set()).add(session)
        elif session.namespace is Namespace.DASHBOARD:
            claim = session.principal.topics
            session.explicit = False
            session.sub_all = claim is None
            session.topics = set(claim or ())
            self._index_topics(session)
        change = KeyChange()
        self._acquire(self.keys_of(session), change)
        return change

    def remove(self, session: Session) -> KeyChange:
        """Forget a session (idempotent)."""
        change = KeyChange()
        if self._sessions.get(session.id) is not session:
            return change
        self._release(self.keys_of(session), change)
        del self._sessions[session.id]
        self._by_namespace[session.namespace].discard(session)
        user = session.user_id
        if user is not None:
            self._connections_per_user[user] -= 1
            if self._connections_per_user[user] <= 0:
                del self._connections_per_user[user]
            peers = self._by_user.get(user)
            if peers is not None:
                peers.discard(session)
                if not peers:
                    del self._by_user[user]
        self._unindex_topics(session)
        return change

    # -- dashboard subscriptions ----------------------------------------------------------

    def subscribe(self, session: Session, topics: Iterable[str]) -> KeyChange:
        """Add topics (`*` = every topic the token allows). Topics must already be checked."""
        sub_all, named = self._explicit_state(session)
        for topic in topics:
            if topic == WILDCARD:
                if session.principal.topics is None:
                    sub_all = True
                else:
                    named |= session.principal.topics
            else:
                named.add(topic)
        return self._resubscribe(session, sub_all, named)

    def unsubscribe(self, session: Session, topics: Iterable[str]) -> KeyChange:
        """Remove topics; `*` removes every subscription, the wildcard included."""
        sub_all, named = self._explicit_state(session)
        for topic in topics:
            if topic == WILDCARD:
                sub_all = False
                named.clear()
            else:
                named.discard(topic)
        return self._resubscribe(session, sub_all, named)

    def subscriptions(self, session: Session) -> list[str]:
        """What the session receives: `["*"]` for every topic, else the sorted topic names."""
        return [WILDCARD] if session.sub_all else sorted(session.topics)

    def receives(self, session: Session, topic: str) -> bool:
        """Whether a dashboard update of `topic` reaches this session."""
        return session.sub_all or topic in session.topics

    def _explicit_state(self, session: Session) -> tuple[bool, set[str]]:
        if not session.explicit:
            # The first explicit call starts from nothing: the client now receives exactly
            # what it subscribes to (contract §3).
            return False, set()
        return session.sub_all, set(session.topics)

    def _resubscribe(self, session: Session, sub_all: bool, named: set[str]) -> KeyChange:
        change = KeyChange()
        if session not in self:
            session.explicit, session.sub_all, session.topics = True, sub_all, named
            return change
        old_keys = self.keys_of(session)
        self._unindex_topics(session)
        session.explicit, session.sub_all, session.topics = True, sub_all, named
        self._index_topics(session)
        new_keys = self.keys_of(session)
        self._acquire(new_keys - old_keys, change)
        self._release(old_keys - new_keys, change)
        return change

    def _index_topics(self, session: Session) -> None:
        if session.sub_all:
            self._all_topics.add(session)
            return
        for topic in session.topics:
            self._by_topic.setdefault(topic, set()).add(session)

    def _unindex_topics(self, session: Session) -> None:
        self._all_topics.discard(session)
        for topic in session.topics:
            members = self._by_topic.get(topic)
            if members is not None:
                members.discard(session)
                if not members:
                    del self._by_topic[topic]

    # -- interest -------------------------------------------------------------------------

    @staticmethod
    def keys_of(session: Session) -> set[str]:
        """The downstream routing keys this session needs bound."""
        if session.namespace is Namespace.NOTIFICATIONS:
            if session.user_id is None:
                return {routing.BROADCAST_KEY}
            return {routing.user_key(session.user_id), routing.BROADCAST_KEY}
        if session.sub_all:
            return {routing.DASHBOARD_ALL}
        return {routing.topic_key(topic) for topic in session.topics}

    def _acquire(self, keys: Iterable[str], change: KeyChange) -> None:
        for key in keys:
            self._key_refs[key] += 1
            if self._key_refs[key] == 1:
                change.added.append(key)

    def _release(self, keys: Iterable[str], change: KeyChange) -> None:
        for key in keys:
            self._key_refs[key] -= 1
            if self._key_refs[key] <= 0:
                del self._key_refs[key]
                change.removed.append(key)

    # -- delivery -------------------------------------------------------------------------

    def targets(self, route: Route, exclude: str | None = None) -> Iterator[Session]:
        """The sessions a downstream event on `route` goes to."""
        if route.kind is KeyKind.TOPIC:
            yield from self._all_topics
            yield from self._by_topic.get(route.target, ())
        elif route.kind is KeyKind.USER:
            for session in self._by_user.get(route.target, ()):
                if session.id != exclude:
                    yield session
        else:
            for session in self._by_namespace[Namespace.NOTIFICATIONS]:
                if session.id != exclude:
                    yield session

    def fanout(
        self, route: Route, frame: bytes, exclude: str | None = None, key: str | None = None
    ) -> tuple[int, int]:
        """Push `frame` to every target; returns (delivered, dropped by slow consumers).

        A session whose buffer overflows is closed with 4008 by `Session.push` itself.
        Sessions already closing (drain, expiry, overflow) are skipped, not counted.
        `key` (the topic of a `dashboard_update`) lets a conflating session replace a
        waiting frame of that topic (`Session.push`).
        """
        delivered = dropped = 0
        for session in self.targets(route, exclude):
            if session.close_code is not None:
                continue
            if session.push(frame, key):
                delivered += 1
            else:
                dropped += 1
        return delivered, dropped
