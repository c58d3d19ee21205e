"""The HTTP requests each Engine.IO session has in flight, so a closed client's can be ended."""

from __future__ import annotations

import asyncio
from typing import cast


class InFlight:
    """The TCP transports of the HTTP requests each Engine.IO session has in flight.

    A client that stops reading leaves a request handler waiting on its socket forever (a
    long-poll response or a WebSocket send the peer never drains); aborting the transport
    ends it.
    """

    def __init__(self) -> None:
        self._sid_of: dict[asyncio.BaseTransport, str | None] = {}
        self._by_sid: dict[str, set[asyncio.BaseTransport]] = {}

    def add(self, transport: asyncio.BaseTransport, sid: str | None) -> None:
        """A request arrived on `transport` (for Engine.IO session `sid`, when it names one)."""
        self._sid_of[transport] = sid
        if sid is not None:
            self._by_sid.setdefault(sid, set()).add(transport)

    def assign(self, transport: asyncio.BaseTransport, sid: str) -> None:
        """The request in flight on `transport` turned out to be session `sid`'s WebSocket."""
        if transport in self._sid_of and self._sid_of[transport] is None:
            self.add(transport, sid)

    def discard(self, transport: asyncio.BaseTransport) -> None:
        """The request on `transport` is done."""
        sid = self._sid_of.pop(transport, None)
        transports = self._by_sid.get(sid) if sid is not None else None
        if transports is not None:
            transports.discard(transport)
            if not transports:
                del self._by_sid[cast(str, sid)]

    def abort(self, sid: str) -> int:
        """Abort every request of `sid` still in flight; returns how many."""
        transports = self._by_sid.pop(sid, set())
        for transport in transports:
            self._sid_of.pop(transport, None)
            if not transport.is_closing():
                cast(asyncio.Transport, transport).abort()
        return len(transports)

    def __len__(self) -> int:
        return len(self._sid_of)
