"""One client connection, whatever its transport: everything that is not wire protocol.

A transport speaks its protocol (the handshake, reading and framing, its close frames) and
calls this layer for the rest, in this order:

1. `admit`: the token (looked up as `Handshake.token` says), then the node's admission
   (draining, backbone, connection limits): Refused 401, 503 or 429, answered before any
   upgrade.
2. `join`: the resume offset (Refused 400), the session, `node.join` (Refused 503 / 429).
   The result is a `ClientConnection`.
3. `ClientConnection.resume`, then `receive` for each client message: rate limit,
   `node.handle`, the ack or the error (counted), spelled by the transport's `Dialect`.
4. `close` (the session asked to close: the transport's close callable, bounded in time) and
   `finish` / `end` / `ended` (the client is gone: the session leaves the node).

Outbound frames do not pass through here: the session writes them to the transport's sink.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from service.codec import AckedProtocolError
from service.errors import BackboneUnavailable, CloseCode, ErrorCode, ProtocolError, Refused
from service.model import ClientMessage, Namespace, Principal
from service.ratelimit import RateLimiter, Verdict
from service.session import FrameEncoder, Session
from service.tasks import wait_ended
from service.transports.context import Gateway
from service.transports.handshake import Handshake, principal_for_token, resume_offset

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 5.0  # how long a closing handshake may take before the socket is aborted
ABORT_AFTER_S = 5.0  # how long unsent bytes may keep a closed client's socket open


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a transport's protocol spells the frames this layer sends to a client.

    `ack(namespace, ack, data)` answers a client event that asked for an ack;
    `error(namespace, code, message, ack)` reports a failed one (`ack` None: none asked for).
    """

    name: str  # the transport's name: session.transport and the metrics' `transport` label
    ack: Callable[[Namespace, int, Any], bytes]
    error: Callable[[Namespace, ErrorCode, str, int | None], bytes]


CloseClient = Callable[[int, str], Awaitable[None]]  # the transport closes a client: code, reason


def admit(gateway: Gateway, handshake: Handshake) -> Principal:
    """The client's principal, if the node admits it now: Refused 401, 503 or 429."""
    principal = principal_for_token(gateway, handshake.token, handshake.namespace)
    gateway.node.check_admission(principal, handshake.namespace)
    return principal


async def join(
    gateway: Gateway,
    handshake: Handshake,
    principal: Principal,
    dialect: Dialect,
    close: CloseClient,
    *,
    encoder: FrameEncoder | None = None,
) -> ClientConnection:
    """The admitted client's connection, joined to the node with its bindings in place.

    Refused 400 for a bad resume offset (only /notifications resumes), 503 or 429 from
    `node.join`. `close` is how the transport closes this client; `encoder`: see Session.
    """
    namespace = handshake.namespace
    since: int | None = None
    if namespace is Namespace.NOTIFICATIONS and (value := handshake.since) is not None:
        since = resume_offset(value)
    node = gateway.node
    session = node.new_session(principal, namespace, dialect.name, encoder=encoder)
    try:
        await node.join(session)
    except BackboneUnavailable as exc:
        raise Refused(503, "unavailable", str(exc)) from None
    return ClientConnection(gateway, session, dialect, close, since)


def count_refusal(gateway: Gateway, namespace: str, transport: str, refusal: Refused) -> None:
    """Count a refused handshake (`gateway_refusals_total`)."""
    gateway.metrics.refusals.labels(namespace, transport, str(refusal.status)).inc()


class ClientConnection:
    """A joined client on any transport: its session, rate limit, replies and close."""

    __slots__ = (
        "_close",
        "_closing",
        "_dialect",
        "_finished",
        "_frames_in",
        "_gateway",
        "_limiter",
        "session",
        "since",
    )

    def __init__(
        self,
        gateway: Gateway,
        session: Session,
        dialect: Dialect,
        close: CloseClient,
        since: int | None = None,
    ) -> None:
        config = gateway.config
        self._gateway = gateway
        self.session = session
        self._dialect = dialect
        self._close = close
        self._limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)
        self._frames_in = gateway.metrics.frames_in.labels(session.namespace, dialect.name)
        self._closing: asyncio.Task[None] | None = None
        self._finished = False
        self.since = since  # the resume asked for in the handshake, until `resume` serves it

    @property
    def finished(self) -> bool:
        """True once the session left the node."""
        return self._finished

    @contextlib.contextmanager
    def bound(self) -> Iterator[None]:
        """Log lines inside carry the connection's id, user, namespace and transport."""
        session = self.session
        with structlog.contextvars.bound_contextvars(
            conn_id=session.id,
            user_id=session.user_id,
            namespace=str(session.namespace),
            transport=self._dialect.name,
        ):
            yield

    # -- client messages --------------------------------------------------------------------

    async def resume(self) -> None:
        """Serve the resume asked for in the handshake, if any: the replay, then `resumed`."""
        since, self.since = self.since, None
        if since is None:
            return
        try:
            await self._gateway.node.resume(self.session, since)
        except ProtocolError as exc:  # the client asked with a `resume` event first: it stands
            self.reply_error(exc.code, exc.message)
        except Exception:
            log.exception("resume_failed", since=since)

    async def receive(self, decode: Callable[[], ClientMessage], ack: int | None = None) -> None:
        """Handle one client message: rate limit, `decode()`, `node.handle`, then the reply.

        `decode` raises ProtocolError for a message the client should not have sent (an
        AckedProtocolError carries the ack it read); `ack` is the ack id when the protocol
        carries it outside the message (Socket.IO).
        """
        self._frames_in.inc()
        session = self.session
        verdict = self._limiter.check()
        if verdict is Verdict.DISCONNECT:
            session.close(CloseCode.RATE_LIMITED, "rate limit exceeded repeatedly")
            return
        event: str | None = None
        try:
            message = decode()
            event = message.event
            if message.ack is not None:
                ack = message.ack
            if verdict is Verdict.LIMITED:
                raise ProtocolError(ErrorCode.RATE_LIMITED, "too many messages; slow down")
            result = await self._gateway.node.handle(session, message)
        except AckedProtocolError as exc:
            self.reply_error(exc.code, exc.message, exc.ack)
            return
        except ProtocolError as exc:
            self.reply_error(exc.code, exc.message, ack)
            return
        except Exception:
            log.exception("handler_failed", event=event)
            self.reply_error(ErrorCode.INTERNAL, "internal error", ack)
            return
        if ack is not None:
            session.push(self._dialect.ack(session.namespace, ack, result))

    def reject(self, code: ErrorCode, message: str) -> None:
        """A client frame the protocol cannot take (not rate limited): count it, answer it."""
        self._frames_in.inc()
        self.reply_error(code, message)

    def reply_error(self, code: ErrorCode, message: str, ack: int | None = None) -> None:
        """Send the client an error (the answer to event `ack`, if given), counted."""
        self._gateway.metrics.client_errors.labels(str(code)).inc()
        session = self.session
        session.push(self._dialect.error(session.namespace, code, message, ack))

    # -- close --------------------------------------------------------------------------------

    def close_soon(self) -> None:
        """Start `close` in a task (a session's `on_close`); `end` waits for it."""
        self._closing = asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        """Close the client with the session's close code and reason, in bounded time."""
        session = self.session
        code = int(session.close_code or CloseCode.NORMAL)
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S + 1):
                await self._close(code, session.close_reason)

    async def end(self, code: int = CloseCode.NORMAL, reason: str = "client closed") -> None:
        """The client is done: close the session (`code`, unless closed already), wait for
        the close `close_soon` started, then `finish`."""
        self.session.close(code, reason)
        try:
            if self._closing is not None:
                await wait_ended(self._closing)
        finally:  # a cancelled handler (peer gone) still leaves the node
            self.finish()

    def ended(self, code: int = CloseCode.NORMAL, reason: str = "client closed") -> None:
        """The transport's connection is gone (`end` without awaiting): the session is
        closed with `code` unless it was already, and leaves the node once the close that
        `close_soon` started, if any, is over."""
        self.session.close(code, reason)
        closing = self._closing
        if closing is not None and not closing.done():
            closing.add_done_callback(lambda _: self.finish())
        else:
            self.finish()

    def abandon(self) -> None:
        """The client left before its connection went live: the session leaves the node
        without a close code, so no disconnect is counted (idempotent)."""
        if self._finished:
            return
        self._finished = True
        self._gateway.node.leave(self.session)

    def finish(self, code: int = CloseCode.NORMAL, reason: str = "client closed") -> None:
        """The session leaves the node (idempotent); closed with `code` if it was not yet."""
        if self._finished:
            return
        self._finished = True
        session = self.session
        session.close(code, reason)
        final = int(session.close_code or CloseCode.NORMAL)
        self._gateway.node.leave(session, final)
        with self.bound():
            log.info("disconnected", code=final, reason=session.close_reason)
