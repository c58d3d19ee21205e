"""The WebSocket upgrade, answered by hand so aiohttp can let the connection go after it.

aiohttp parses the HTTP request and runs the handler; the handler checks the handshake
(`accept_key`), answers `101 Switching Protocols` itself and takes the transport from aiohttp
(`take_over`). From then on the socket belongs to `ws_socket.WebSocket`, and aiohttp keeps
nothing of it: no request, no handler task, no parser, no place in its connection manager.
That is most of what an idle socket used to cost (docs/performance.md, S1).

The handover uses three things aiohttp does not document: the request's protocol is its
`RequestHandler`, whose `transport` it closes on `connection_lost` unless it is None; the
bytes the client sent after the upgrade request wait in its `_message_tail`; and after
`connection_lost` the handler's task ends on its own once the handler returns.
tests/unit/test_upgrade.py checks each against the installed aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib

from aiohttp import web
from aiohttp.http import WS_KEY

from service.errors import Refused

_VERSIONS = frozenset({"13", "8", "7"})  # as aiohttp accepted them


def accept_key(request: web.Request) -> str:
    """The `Sec-WebSocket-Accept` answering this upgrade request; Refused(400) if it is none.

    The checks are aiohttp's (`WebSocketResponse._handshake`): `Upgrade: websocket`,
    `Connection: upgrade`, a supported version, a 16-byte base64 key. No subprotocol and no
    extension is ever chosen.
    """
    headers = request.headers
    if headers.get("Upgrade", "").strip().lower() != "websocket" or not _has_upgrade_token(
        headers.get("Connection", "")
    ):
        raise Refused(400, "bad_request", "expected a WebSocket upgrade")
    if headers.get("Sec-WebSocket-Version", "") not in _VERSIONS:
        raise Refused(400, "bad_request", "expected a WebSocket upgrade (version 13)")
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError(key)
    except (binascii.Error, ValueError):
        raise Refused(400, "bad_request", "expected a WebSocket upgrade (bad key)") from None
    return base64.b64encode(hashlib.sha1(key.encode() + WS_KEY).digest()).decode()


def _has_upgrade_token(connection: str) -> bool:
    return any(token.strip().lower() == "upgrade" for token in connection.split(","))


def take_over(request: web.Request, accept: str) -> tuple[asyncio.Transport, bytes] | None:
    """Write the 101 and take the connection from aiohttp.

    Returns the transport and the bytes the client sent after its request, or None when the
    client is gone already. The caller must set the transport's new protocol before it
    returns to the loop; the handler then returns `switched()`.
    """
    transport = request.transport  # not an isinstance check: uvloop's is no subclass
    handler = request.protocol
    if transport is None or transport.is_closing():
        return None
    transport.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
    )
    tail = bytes(getattr(handler, "_message_tail", b""))
    handler._message_tail = b""
    handler.transport = None  # so aiohttp closes nothing it no longer owns ...
    handler.connection_lost(None)  # ... and forgets the connection: manager, timers, parser
    return transport, tail


def switched() -> web.Response:
    """What the handler returns after `take_over`: aiohttp logs it (status 101) and, finding
    no transport to write it to, ends the request."""
    return web.Response(status=101)
