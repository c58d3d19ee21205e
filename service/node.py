"""The coordinator: owns the hub, the bindings and the last-value cache, talks to the backbone.

Transports call the node's use cases (`join`, `leave`, `handle`, `publish`); the backbone
calls `on_event`. The node knows nothing of aiohttp or AMQP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from service import codec, routing
from service.backbone.base import Backbone, history_of
from service.bindings import Bindings
from service.errors import (
    AuthError,
    BackboneUnavailable,
    CloseCode,
    ErrorCode,
    ProtocolError,
    Refused,
)
from service.hub import WILDCARD, Hub
from service.lastvalue import LastValueCache
from service.metrics import BatchedHistogram, Metrics
from service.model import ClientMessage, Event, Namespace, Principal
from service.recovery import Recovery, Resumed, parse_since
from service.routing import KeyKind
from service.session import FrameEncoder, Outbox, Session
from service.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

PUBLISH_SCOPE = "dashboard:publish"
MAX_TOPICS_PER_CALL = 100
MAX_NOTIFICATION_ID = 200
EXPIRY_SWEEP_S = 1.0

Verifier = Callable[[str], Principal]
Handler = Callable[[Session, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-process limits, injected so tests can set them small."""

    max_connections: int = 0
    max_connections_per_user: int = 20
    send_queue_bytes: int = 1 << 20
    bind_timeout_s: float = 10.0
    conflate: bool = True  # dashboard conflation for slow clients (GATEWAY_CONFLATE)


def now_ms() -> int:
    """Milliseconds since the epoch."""
    return int(time.time() * 1000)


class Node:
    """See the module docstring."""

    def __init__(
        self,
        backbone: Backbone,
        bindings: Bindings,
        *,
        instance_id: str,
        verify: Verifier,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
        hub: Hub | None = None,
        lastvalue: LastValueCache | None = None,
        recovery: Recovery | None = None,
    ) -> None:
        self.backbone = backbone
        self.bindings = bindings
        self.instance_id = instance_id
        self.limits = limits or Limits()
        self.metrics = metrics or Metrics()
        self.hub = hub or Hub()
        self.lastvalue = lastvalue or LastValueCache()
        # Flushes sink sessions once per loop iteration; counts conflated frames.
        self.outbox = Outbox(on_conflated=self._count_conflated)
        self.recovery = recovery or Recovery(
            history_of(backbone),
            metrics=self.metrics,
            max_replay_bytes=self.limits.send_queue_bytes // 2,
        )
        self._verify = verify
        # Labelled metric children, looked up once: `labels()` costs more than the fan-out
        # of a notification to one socket.
        self._events_of = {kind: self.metrics.events.labels(kind) for kind in KeyKind}
        self._deliveries_of = {kind: self.metrics.deliveries.labels(kind) for kind in KeyKind}
        self._slow_dropped = self.metrics.dropped.labels("slow_consumer")
        self._delivery_lag = BatchedHistogram(self.metrics.delivery_lag)
        self.draining = False
        self._idle = asyncio.Event()  # set while no session is registered
        self._counted: set[str] = set()  # sessions join() counted in the connections gauge
        self._idle.set()
        self._expiry: list[tuple[float, str]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._handlers: dict[tuple[Namespace, str], Handler] = {
            (Namespace.DASHBOARD, "subscribe"): self._on_subscribe,
            (Namespace.DASHBOARD, "unsubscribe"): self._on_unsubscribe,
            (Namespace.DASHBOARD, "dashboard_refresh"): self._on_refresh,
            (Namespace.DASHBOARD, "dashboard_update"): self._on_client_update,
            (Namespace.NOTIFICATIONS, "notification_read"): self._on_notification_read,
            (Namespace.NOTIFICATIONS, "resume"): self._on_resume,
            (Namespace.DASHBOARD, "auth"): self._on_auth,
            (Namespace.NOTIFICATIONS, "auth"): self._on_auth,
        }

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backbone, the binding applier and the token-expiry sweeper."""
        await self.backbone.start(self.on_event)
        self.bindings.start()
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_expired(), name="token-expiry"
        )

    async def close(self) -> None:
        """Stop background work and the backbone."""
        if self._sweeper is not None:
            await cancel_and_wait(self._sweeper)
        await self.recovery.close()
        await self.bindings.close()
        await self.backbone.close()

    @property
    def ready(self) -> bool:
        """True when the backbone is connected and the node is not draining."""
        return self.backbone.ready and not self.draining

    @property
    def not_ready_reason(self) -> str:
        """Why `ready` is False."""
        if self.draining:
            return "draining"
        return self.backbone.reason or ""

    def begin_drain(self) -> None:
        """Refuse new connections from now on; `/readyz` turns 503.

        Safe in a signal handler (SIGTERM): the flag flips there and then, and `drain_started`
        is logged from the event loop, since a log write inside a handler could re-enter the
        write it interrupted.
        """
        if self.draining:
            return
        self.draining = True
        started = functools.partial(log.info, "drain_started", connections=len(self.hub))
        try:
            asyncio.get_running_loop().call_soon_threadsafe(started)
        except RuntimeError:  # no loop running: log now
            started()

    async def drain(self, seconds: float, *, settle_s: float = 3.0) -> None:
        """Close every session with 1001, spread evenly over `seconds`, then wait for them."""
        self.begin_drain()
        sessions = self.hub.sessions()
        loop = asyncio.get_running_loop()
        start = loop.time()
        count = len(sessions)
        for index, session in enumerate(sessions, start=1):
            # The i-th of n closes is due at i/n of the window: the last one at its end, so
            # the listener keeps answering 503 to new upgrades for the whole window.
            due = start + seconds * index / count
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            session.close(CloseCode.GOING_AWAY, "server draining")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settle_s):
                await self._idle.wait()
        log.info("drain_finished", closed=count, left=len(self.hub))

    # -- connections ----------------------------------------------------------------------

    def check_admission(self, principal: Principal, namespace: Namespace) -> None:
        """Raise Refused (503 / 429) when this connection may not be opened now."""
        if self.draining:
            raise Refused(503, "unavailable", "server is draining; reconnect elsewhere")
        if not self.backbone.ready:
            raise Refused(503, "unavailable", f"backbone unavailable: {self.backbone.reason}")
        limit = self.limits.max_connections
        if limit and len(self.hub) >= limit:
            raise Refused(503, "unavailable", "server is at its connection limit")
        user = principal.sub
        if user is not None and (
            self.hub.connections_of(user) >= self.limits.max_connections_per_user
        ):
            raise Refused(429, "too_many_connections", "too many connections for this user")

    def new_session(
        self,
        principal: Principal,
        namespace: Namespace,
        transport: str = "ws",
        *,
        encoder: FrameEncoder | None = None,
    ) -> Session:
        """A session with this node's outbound buffer limit (`encoder`: see Session)."""
        return Session(
            principal=principal,
            namespace=namespace,
            send_queue_bytes=self.limits.send_queue_bytes,
            transport=transport,
            outbox=self.outbox,
            encoder=encoder,
            conflate=self.limits.conflate and namespace is Namespace.DASHBOARD,
        )

    def _count_conflated(self, transport: str, count: int) -> None:
        self.metrics.frames_conflated.labels(transport).inc(count)

    async def join(self, session: Session) -> None:
        """Admit and register a session; returns once its bindings are in place.

        Raises Refused: 503 / 429 from the limits, and 503 when the bindings it needs cannot
        be put in place in time (backbone down), so the transport answers before any upgrade.
        """
        self.check_admission(session.principal, session.namespace)
        self.recovery.on_join(session)  # held before the hub can deliver to it
        change = self.hub.add(session)
        self._idle.clear()
        self.bindings.add(change.added)
        if session.principal.exp is not None:
            heapq.heappush(self._expiry, (session.principal.exp, session.id))
        try:
            await self.bindings.need(self.hub.keys_of(session), self.limits.bind_timeout_s)
        except BackboneUnavailable as exc:
            self.leave(session)
            raise Refused(503, "unavailable", f"backbone unavailable: {exc}") from None
        except BaseException:
            self.leave(session)
            raise
        self.metrics.connections.labels(session.namespace, session.transport).inc()
        self.metrics.connects.labels(session.namespace, session.transport).inc()
        self._counted.add(session.id)

    def leave(self, session: Session, code: int | None = None) -> None:
        """Unregister a session (idempotent)."""
        was_counted = session.id in self._counted
        self._counted.discard(session.id)
        change = self.hub.remove(session)
        self.recovery.on_leave(session)
        self.bindings.remove(change.removed)
        if not len(self.hub):
            self._idle.set()
        if not was_counted:
            return
        # Counted as open once join() returned: a session abandoned before it went live (no
        # close code) leaves the gauge too, it just counts no disconnect.
        self.metrics.connections.labels(session.namespace, session.transport).dec()
        if code is not None:
            self.metrics.disconnects.labels(session.namespace, session.transport, str(code)).inc()
            if code == CloseCode.SLOW_CONSUMER:
                self.metrics.slow_consumers.inc()

    # -- downstream -----------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Fan one backbone event out to the local sessions that want it (sync)."""
        route = routing.parse(event.routing_key)
        if route is None:
            self.metrics.dropped.labels("unroutable").inc()
            log.warning("event_unroutable", routing_key=event.routing_key, message_id=event.id)
            return
        key = None  # conflation key: only a dashboard_update replaces a waiting one
        if route.kind is KeyKind.TOPIC:
            frame = codec.encode_event(
                event.name, event.data, event.id, event.ts, topic=route.target
            )
            if event.name == "dashboard_update":
                self.lastvalue.put(route.target, frame)
                key = route.target
        else:
            frame = codec.encode_event(
                event.name, event.data, event.id, event.ts, offset=event.offset
            )
        delivered, dropped = self.hub.fanout(route, frame, exclude=event.origin, key=key)
        self._events_of[route.kind].inc()
        if delivered:
            self._deliveries_of[route.kind].inc(delivered)
        if dropped:
            self._slow_dropped.inc(dropped)
        lag_s = time.time() - event.ts / 1000
        if lag_s >= 0:
            self._delivery_lag.observe(lag_s)

    async def publish(
        self,
        routing_key: str,
        data: Any,
        *,
        event: str | None = None,
        message_id: str | None = None,
        origin: str | None = None,
    ) -> str:
        """Publish downstream through the backbone; returns the id sockets will see.

        Raises ProtocolError(bad_request) for a routing key outside the contract and
        BackboneUnavailable when the backbone cannot take it.
        """
        try:
            _, name = routing.downstream(routing_key, event)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from None
        ident = message_id or uuid.uuid4().hex
        try:
            await self.backbone.publish(
                Event(routing_key, name, data, ident, now_ms(), origin=origin)
            )
        except BackboneUnavailable:
            self.metrics.published.labels("unavailable").inc()
            raise
        self.metrics.published.labels("ok").inc()
        return ident

    # -- client messages ------------------------------------------------------------------

    async def handle(self, session: Session, message: ClientMessage) -> Any:
        """Run one client event; returns the ack data or raises ProtocolError."""
        self.recovery.on_message(session, message.event)
        handler = self._handlers.get((session.namespace, message.event))
        if handler is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_EVENT,
                f"unknown event '{message.event}' in namespace {session.namespace}",
            )
        return await handler(session, message.data)

    async def _on_subscribe(self, session: Session, data: Any) -> Any:
        topics = self._topics_arg(session, data)
        change = self.hub.subscribe(session, topics)
        return await self._apply_subscription(session, change.added, change.removed)

    async def _on_unsubscribe(self, session: Session, data: Any) -> Any:
        topics = self._topics_arg(session, data)
        change = self.hub.unsubscribe(session, topics)
        return await self._apply_subscription(session, change.added, change.removed)

    async def _apply_subscription(
        self, session: Session, added: list[str], removed: list[str]
    ) -> Any:
        self.bindings.add(added)
        self.bindings.remove(removed)
        try:
            await self.bindings.need(self.hub.keys_of(session), self.limits.bind_timeout_s)
        except BackboneUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from None
        return {"topics": self.hub.subscriptions(session)}

    def _topics_arg(self, session: Session, data: Any) -> list[str]:
        topics = data.get("topics") if isinstance(data, dict) else None
        if (
            not isinstance(topics, list)
            or not topics
            or len(topics) > MAX_TOPICS_PER_CALL
            or not all(isinstance(t, str) for t in topics)
        ):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"data.topics must be a list of 1 to {MAX_TOPICS_PER_CALL} topic names",
            )
        for topic in topics:
            if topic == WILDCARD:
                continue
            self._check_topic(session, topic)
        return topics

    @staticmethod
    def _check_topic(session: Session, topic: Any) -> str:
        if not isinstance(topic, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "topic must be a string")
        problem = routing.id_problem(topic)
        if problem is not None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"topic {topic!r} {problem}")
        if not session.principal.may_see(topic):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"topic {topic!r} is not allowed by the token")
        return topic

    async def _on_refresh(self, session: Session, data: Any) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "data must be an object")
        if data.get("topic") is not None:
            topics = [self._check_topic(session, data["topic"])]
        else:
            topics = [t for t in self.lastvalue.topics() if self.hub.receives(session, t)]
        sent = []
        for topic in topics:
            frame = self.lastvalue.get(topic)
            if frame is not None and session.push(frame, topic):
                sent.append(topic)
        await self._upstream(session, "dashboard_refresh", data)
        return {"topics": sent}

    async def _on_client_update(self, session: Session, data: Any) -> Any:
        if PUBLISH_SCOPE not in session.principal.scopes:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"dashboard_update needs the '{PUBLISH_SCOPE}' scope"
            )
        if not isinstance(data, dict) or "topic" not in data:
            raise ProtocolError(ErrorCode.BAD_REQUEST, 'data must be {"topic": ..., "data": ...}')
        topic = self._check_topic(session, data["topic"])
        try:
            ident = await self.publish(routing.topic_key(topic), data.get("data"))
        except BackboneUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from None
        return {"id": ident}

    async def _on_notification_read(self, session: Session, data: Any) -> Any:
        ident = data.get("id") if isinstance(data, dict) else None
        if not isinstance(ident, str) or not ident or len(ident) > MAX_NOTIFICATION_ID:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"data.id must be a notification id of 1 to {MAX_NOTIFICATION_ID} characters",
            )
        user = session.user_id
        if user is None:  # the notifications namespace always has a token
            raise ProtocolError(ErrorCode.FORBIDDEN, "notification_read needs a user")
        await self._upstream(session, "notification_read", {"id": ident})
        try:
            await self.publish(
                routing.user_key(user),
                {"id": ident},
                event="notification_read",
                origin=session.id,
            )
        except BackboneUnavailable:
            # Upstream has it (the ack is true); only the other devices' echo is lost.
            log.warning("notification_read_echo_lost", notification_id=ident)
        return {"id": ident}

    async def resume(self, session: Session, since: int) -> Resumed:
        """Replay what a notifications session missed after `since` (contract §3, recovery)."""
        return await self.recovery.resume(session, since)

    async def _on_resume(self, session: Session, data: Any) -> Any:
        since = data.get("since") if isinstance(data, dict) else None
        if since is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, 'data must be {"since": <offset>}')
        return (await self.resume(session, parse_since(since))).as_data()

    async def _on_auth(self, session: Session, data: Any) -> Any:
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "data.token must be a JWT string")
        try:
            principal = self._verify(token)
        except AuthError as exc:
            raise ProtocolError(ErrorCode.FORBIDDEN, exc.reason) from None
        if principal.sub != session.principal.sub:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the new token must have the same sub")
        # The topics claim stays as it was at connect: subscriptions were checked against it.
        session.principal = replace(session.principal, exp=principal.exp, scopes=principal.scopes)
        if principal.exp is not None:
            heapq.heappush(self._expiry, (principal.exp, session.id))
        return {"exp": principal.exp}

    async def _upstream(self, session: Session, event: str, data: Any) -> None:
        body = codec.dumps(
            {
                "event": event,
                "data": data,
                "user_id": session.user_id,
                "namespace": str(session.namespace),
                "connection_id": session.id,
                "instance": self.instance_id,
                "ts": now_ms(),
            }
        )
        try:
            await self.backbone.publish_upstream(f"{session.namespace}.{event}", body)
        except BackboneUnavailable as exc:
            self.metrics.upstream.labels("unavailable").inc()
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, f"upstream unavailable, event not sent: {exc}"
            ) from None
        self.metrics.upstream.labels("confirmed").inc()

    # -- token expiry ---------------------------------------------------------------------

    def expire_tokens(self, now: float) -> int:
        """Close (4001) every session whose token expired by `now`; returns how many."""
        closed = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, session_id = heapq.heappop(self._expiry)
            session = self.hub.get(session_id)
            exp = session.principal.exp if session is not None else None
            if session is not None and exp is not None and exp <= now and not session.closed:
                session.close(CloseCode.TOKEN_EXPIRED, "token expired")
                closed += 1
        return closed

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_S)
            self.expire_tokens(time.time())
