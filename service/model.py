"""Plain data passed between the hub, the node, the transports and the backbones."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Namespace(StrEnum):
    """WebSocket namespaces (the same names as the original socket.io gateway)."""

    DASHBOARD = "dashboard"
    NOTIFICATIONS = "notifications"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is on the other end of a connection, as the token (or its absence) says.

    `sub` is None for an anonymous client of a public namespace. `topics` is None when the
    token has no `topics` claim (every dashboard topic allowed). `exp` is a Unix time.
    """

    sub: str | None
    scopes: frozenset[str] = frozenset()
    topics: frozenset[str] | None = None
    exp: float | None = None

    def may_see(self, topic: str) -> bool:
        """Whether the token's `topics` claim allows this dashboard topic."""
        return self.topics is None or topic in self.topics


@dataclass(frozen=True, slots=True)
class Event:
    """One event carried by the backbone, as every instance sees it.

    `ts` is milliseconds since the epoch. `offset` is the backbone's position for
    notifications (recovery), None where the backbone gives none. `origin` is the connection
    id that caused the event, which must not receive it back (notification_read echo).
    """

    routing_key: str
    name: str
    data: Any
    id: str
    ts: int
    offset: int | None = None
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """One decoded client frame: `{"event": ..., "data": ..., "ack": n}`."""

    event: str
    data: Any
    ack: int | None = None
