"""What a client presents to open a connection, read the same way on every transport.

The transport copies what its handshake carries into a `Handshake`; the lookup order of the
token and of the resume offset, and what a missing or bad one means, are decided here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.auth import bearer_token
from service.config import Config
from service.errors import AuthError, ProtocolError, Refused
from service.model import Namespace, Principal
from service.recovery import parse_since
from service.transports.context import Gateway


def check_origin(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """A request without Origin is not a browser; a browser's Origin must be listed."""
    if origin is None:
        return True
    return "*" in allowed or origin.rstrip("/").lower() in allowed


def find_namespace(config: Config, name: str) -> Namespace | None:
    """The configured namespace called `name`, or None (the transport answers 404)."""
    if name not in Namespace.__members__.values() or name not in config.namespaces:
        return None
    return Namespace(name)


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a client sent to open a connection to `namespace`.

    `authorization` is the Authorization header, `query` the request's query string, `auth`
    the protocol's own handshake payload (Socket.IO's CONNECT data; None on native sockets).
    """

    namespace: Namespace
    authorization: str | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    auth: Any = None

    @property
    def token(self) -> str | None:
        """The token: `auth.token`, then `Authorization: Bearer`, then `?access_token`."""
        token = self.auth.get("token") if isinstance(self.auth, dict) else None
        if isinstance(token, str) and token:
            return token
        return bearer_token(self.authorization) or self.query.get("access_token")

    @property
    def since(self) -> object | None:
        """The resume offset asked for (`auth.since`, then `?since`), unparsed; None if none."""
        value = self.auth.get("since") if isinstance(self.auth, dict) else None
        return value if value is not None else self.query.get("since")


def principal_for_token(gateway: Gateway, token: str | None, namespace: Namespace) -> Principal:
    """The principal a handshake token names (any transport); Refused(401) when it names none."""
    if not token:
        if namespace in gateway.config.public_namespaces:
            return Principal(sub=None)
        raise Refused(401, "unauthorized", "a token is required")
    if not gateway.auth.configured:
        raise Refused(401, "unauthorized", "this gateway accepts no tokens")
    try:
        return gateway.auth.verify(token)
    except AuthError as exc:
        raise Refused(401, exc.code, exc.reason) from None


def resume_offset(value: object) -> int:
    """A handshake's `since` (recovery); Refused(400) when it is not an offset."""
    try:
        return parse_since(value)
    except ProtocolError as exc:
        raise Refused(400, str(exc.code), exc.message) from None
