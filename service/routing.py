"""The AMQP routing-key grammar of the contract, and nothing else.

Routing keys services publish to:

- `dashboard.<topic>`
- `notification.user.<user_id>`
- `notification.broadcast`

User ids and topics are data, never patterns. They are validated, not escaped: an id or
topic that contains `*` or `#`, whitespace or control characters, a lone surrogate, an empty
dot-separated word (`a..b`, `.a`, `a.`), or more than MAX_ID_BYTES of UTF-8 is refused where
it enters the gateway (token, subscribe, publish). Dots inside a valid id are fine: bindings
are exact keys, so `notification.user.a.b` never matches anything but itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

from service.codec import MAX_EVENT_NAME

MAX_ID_BYTES = 200
DASHBOARD_PREFIX = "dashboard."
USER_PREFIX = "notification.user."
BROADCAST_KEY = "notification.broadcast"
DASHBOARD_ALL = "dashboard.#"
USERS_ALL = "notification.user.#"
NOTIFICATIONS_ALL = "notification.#"
DEFAULT_DASHBOARD_EVENT = "dashboard_update"
DEFAULT_NOTIFICATION_EVENT = "notification_new"
BAD_KEY = (
    "routing_key must be dashboard.<topic>, notification.user.<user_id> or "
    "notification.broadcast (ids without '*', '#', spaces or empty words)"
)


class KeyKind(StrEnum):
    """What a downstream routing key addresses."""

    TOPIC = "topic"
    USER = "user"
    BROADCAST = "broadcast"


@dataclass(frozen=True, slots=True)
class Route:
    """A parsed downstream routing key. `target` is the topic or user id ('' for broadcast)."""

    kind: KeyKind
    target: str


def id_problem(value: str) -> str | None:
    """Why `value` cannot be a user id or topic, or None when it can."""
    if not value:
        return "must not be empty"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no AMQP key can carry it
        return "must be valid UTF-8 (no lone surrogates)"
    if size > MAX_ID_BYTES:
        return f"must be at most {MAX_ID_BYTES} bytes"
    if "*" in value or "#" in value:
        return "must not contain '*' or '#' (AMQP wildcards)"
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "must not contain whitespace or control characters"
    if "" in value.split("."):
        return "must not start or end with '.' or contain '..'"
    return None


def is_valid_id(value: str) -> bool:
    """True when `value` is usable as a user id or topic."""
    return id_problem(value) is None


def topic_key(topic: str) -> str:
    """`dashboard.<topic>` for a valid topic."""
    return DASHBOARD_PREFIX + topic


def user_key(user_id: str) -> str:
    """`notification.user.<id>` for a valid user id."""
    return USER_PREFIX + user_id


@functools.lru_cache(maxsize=16384)
def parse(routing_key: str) -> Route | None:
    """Parse a downstream routing key; None when it is outside the contract.

    Memoised: every delivery parses its key (backbone and node), and keys repeat; a Route
    is immutable, so sharing one is safe.
    """
    if routing_key == BROADCAST_KEY:
        return Route(KeyKind.BROADCAST, "")
    if routing_key.startswith(USER_PREFIX):
        target = routing_key[len(USER_PREFIX) :]
        return Route(KeyKind.USER, target) if is_valid_id(target) else None
    if routing_key.startswith(DASHBOARD_PREFIX):
        target = routing_key[len(DASHBOARD_PREFIX) :]
        return Route(KeyKind.TOPIC, target) if is_valid_id(target) else None
    return None


def matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic-exchange matching: `*` is exactly one word, `#` zero or more words."""
    return _match(pattern.split("."), routing_key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])


def default_event(kind: KeyKind) -> str:
    """The event name of a downstream message that omitted `event`."""
    return DEFAULT_DASHBOARD_EVENT if kind is KeyKind.TOPIC else DEFAULT_NOTIFICATION_EVENT


def downstream(routing_key: str, event: str | None) -> tuple[Route, str]:
    """Check what an operator or a client publishes downstream: its route and event name.

    Raises ValueError with the reason a `bad_request` answer gives.
    """
    route = parse(routing_key)
    if route is None:
        raise ValueError(BAD_KEY)
    name = event or default_event(route.kind)
    if len(name) > MAX_EVENT_NAME:
        raise ValueError(f"'event' must be a string of 1 to {MAX_EVENT_NAME} characters")
    return route, name
