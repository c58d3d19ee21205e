"""Turns the hub's routing-key interest into backbone bindings (GATEWAY_BINDINGS).

Modes:

- `dynamic`: bind exactly the keys local sessions need.
- `wildcard`: bind `dashboard.#` and `notification.#` once; every instance gets everything.
- `auto`: like dynamic, but above `user_bindings_max` local users the per-user keys give way
  to one `notification.user.#`; they come back when the count falls below 80 % of the
  threshold (hysteresis, so a count hovering at the threshold does not flap).

One applier task does all bind/unbind calls, in batches, so the delivery path never waits on
them. `need()` returns once every key it names is covered by a binding in place, which is
what lets the node complete an upgrade or ack a `subscribe` only when nothing published from
then on can be missed. A key no longer needed lingers for `grace_s` before it is unbound, so
a reconnect storm does not churn bindings.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable, Collection, Iterable
from enum import StrEnum

import structlog

from service import routing
from service.backbone.base import Backbone
from service.errors import BackboneUnavailable
from service.metrics import Metrics
from service.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

HYSTERESIS = 0.8
RETRY_S = 1.0
MAX_BATCH = 500
UNBIND_BATCH = 100  # unbinds are one broker round trip each: keep runs short (see _run)


class BindingMode(StrEnum):
    """GATEWAY_BINDINGS values."""

    AUTO = "auto"
    DYNAMIC = "dynamic"
    WILDCARD = "wildcard"


WILDCARD_KEYS = frozenset({routing.DASHBOARD_ALL, routing.NOTIFICATIONS_ALL})


def covers(bound: Collection[str], key: str) -> bool:
    """Whether a routing key `key` is delivered by some binding in `bound`."""
    if key in bound:
        return True
    if key.startswith("notification."):
        if routing.NOTIFICATIONS_ALL in bound:
            return True
        return key.startswith(routing.USER_PREFIX) and routing.USERS_ALL in bound
    return key.startswith(routing.DASHBOARD_PREFIX) and routing.DASHBOARD_ALL in bound


class Bindings:
    """The binding applier; see the module docstring."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        mode: BindingMode = BindingMode.AUTO,
        user_bindings_max: int = 1000,
        grace_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._backbone = backbone
        self._metrics = metrics
        self.mode = mode
        self._user_max = user_bindings_max
        self._grace_s = grace_s
        self._clock = clock
        self._wanted: set[str] = set()  # keys local sessions need (from the hub)
        self._wanted_users = 0
        self._collapsed = False  # auto mode above the threshold
        self._effective: set[str] = set()
        self._linger: dict[str, float] = {}  # key → time it may be unbound
        self._deadlines: list[tuple[float, str]] = []  # heap over _linger (stale entries skipped)
        # Planning is incremental, so a pass costs what changed, not every key: a storm of
        # 5,000 joins is 5,000 passes. `_dirty` holds the keys to look at in the next pass;
        # `_full` asks for every key (first pass, auto mode collapsing or expanding).
        self._dirty: set[str] = set()
        self._full = True
        self._bound: set[str] = set()
        self._unbinding: set[str] = set()  # bound, but this pass is about to unbind them
        self._waiters: list[tuple[frozenset[str], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.bind_calls = 0
        self.unbind_calls = 0
        self._deferred = False  # a BackboneUnavailable was logged and not yet followed by success

    @property
    def bound(self) -> frozenset[str]:
        """The bindings in place."""
        return frozenset(self._bound)

    @property
    def collapsed(self) -> bool:
        """True while auto mode serves users through `notification.user.#`."""
        return self._collapsed

    def start(self) -> None:
        """Start the applier task."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="bindings-applier"
            )
            self._wake.set()

    async def close(self) -> None:
        """Stop the applier; waiting `need()` calls fail with BackboneUnavailable."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        self._fail_waiters("bindings closed")

    def is_covered(self, key: str) -> bool:
        """Whether events for `key` reach this instance now and will go on doing so."""
        return covers(self._lasting(), key)

    def add(self, keys: Iterable[str]) -> None:
        """Keys that became needed (hub refcount 0 → 1); applied in the background."""
        changed = False
        for key in keys:
            if key not in self._wanted:
                self._wanted.add(key)
                self._wanted_users += key.startswith(routing.USER_PREFIX)
                self._dirty.add(key)
                changed = True
        if changed:
            self._wake.set()

    def remove(self, keys: Iterable[str]) -> None:
        """Keys that became unneeded (hub refcount 1 → 0); unbound after the grace period."""
        changed = False
        for key in keys:
            if key in self._wanted:
                self._wanted.discard(key)
                self._wanted_users -= key.startswith(routing.USER_PREFIX)
                self._dirty.add(key)
                changed = True
        if changed:
            self._wake.set()

    async def need(self, keys: Collection[str], timeout_s: float) -> None:
        """Return once every key is covered by a binding; BackboneUnavailable on timeout."""
        lasting = self._lasting()
        if all(covers(lasting, key) for key in keys):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (frozenset(keys), future)
        self._waiters.append(entry)
        self._wake.set()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
            # lands in the tick its inner future completes (see _run).
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(future)
        except TimeoutError:
            raise BackboneUnavailable("bindings could not be applied in time") from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    # -- the applier ----------------------------------------------------------------------

    def _lasting(self) -> Collection[str]:
        """The bindings need() may count on: a key being unbound is not one of them, or a
        subscribe racing the unbind of `dashboard.#` would be acked before its own key is."""
        return self._bound - self._unbinding if self._unbinding else self._bound

    def _update_collapsed(self) -> bool:
        """Auto mode: collapse above the maximum, expand below 80 % of it; True on a flip."""
        if self.mode is not BindingMode.AUTO:
            return False
        if not self._collapsed and self._wanted_users > self._user_max:
            self._collapsed = True
            log.info("bindings_collapsed", users=self._wanted_users, max=self._user_max)
            return True
        if self._collapsed and self._wanted_users < self._user_max * HYSTERESIS:
            self._collapsed = False
            log.info("bindings_expanded", users=self._wanted_users, max=self._user_max)
            return True
        return False

    def _effective_now(self, key: str) -> bool:
        """Whether the mode wants `key` bound for the current interest."""
        if self.mode is BindingMode.WILDCARD:
            return key in WILDCARD_KEYS
        if key == routing.USERS_ALL:
            return self._collapsed
        if key not in self._wanted:
            return False
        return not (self._collapsed and key.startswith(routing.USER_PREFIX))

    def _plan(self, now: float) -> tuple[list[str], list[str], float | None]:
        if self._update_collapsed() or self._full:
            candidates = (
                self._wanted
                | self._effective
                | self._bound
                | self._linger.keys()
                | WILDCARD_KEYS
                | {routing.USERS_ALL}
            )
            self._full = False
        else:
            candidates = self._dirty
        self._dirty = set()
        for key in candidates:
            if self._effective_now(key):
                self._effective.add(key)
                self._linger.pop(key, None)
            elif key in self._effective:
                self._effective.discard(key)
                self._linger[key] = deadline = now + self._grace_s
                heapq.heappush(self._deadlines, (deadline, key))
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, key = heapq.heappop(self._deadlines)
            if self._linger.get(key) == deadline:
                del self._linger[key]
                candidates.add(key)
        desired = self._effective.__contains__
        lingering = self._linger.__contains__
        to_bind = sorted(
            k for k in candidates if (desired(k) or lingering(k)) and k not in self._bound
        )
        to_unbind = sorted(
            k for k in candidates if k in self._bound and not desired(k) and not lingering(k)
        )
        while self._deadlines and self._linger.get(self._deadlines[0][1]) != self._deadlines[0][0]:
            heapq.heappop(self._deadlines)  # stale: the key came back, or went
        next_deadline = self._deadlines[0][0] if self._deadlines else None
        return to_bind, to_unbind, next_deadline

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            to_bind, to_unbind, deadline = self._plan(self._clock())
            self._unbinding = set(to_unbind)
            try:
                # Bind before unbinding: a key moving from `notification.user.42` to
                # `notification.user.#` is covered at every moment.
                for batch in _batches(to_bind):
                    await self._backbone.bind(batch)
                    self.bind_calls += 1
                    if self._metrics is not None:
                        self._metrics.binding_operations.labels("bind").inc()
                    self._bound.update(batch)
                    self._resolve_waiters()
                interrupted = False
                for batch in _batches(to_unbind, UNBIND_BATCH):
                    await self._backbone.unbind(batch)
                    self.unbind_calls += 1
                    if self._metrics is not None:
                        self._metrics.binding_operations.labels("unbind").inc()
                    self._bound.difference_update(batch)
                    if self._wake.is_set():
                        # New interest arrived: bind it first (a subscribe or an upgrade is
                        # waiting on it); the rest of the unbinds is planned again at once.
                        interrupted = True
                        break
                if interrupted:
                    self._dirty.update(to_unbind)  # the rest: planned again at once
                    continue
                self._unbinding.clear()
            except BackboneUnavailable as exc:
                self._dirty.update(to_bind, to_unbind)  # retried (bind/unbind are idempotent)
                # Once per outage at warning level: a broker outage retries every second.
                (log.debug if self._deferred else log.warning)("bindings_deferred", reason=str(exc))
                self._deferred = True
                await asyncio.sleep(RETRY_S)
                continue
            except Exception as exc:
                self._dirty.update(to_bind, to_unbind)
                log.error("bindings_failed", error=repr(exc))
                log.debug("bindings_failed_traceback", exc_info=True)
                await asyncio.sleep(RETRY_S)
                continue
            if self._deferred:
                log.info("bindings_applied", bound=len(self._bound))
                self._deferred = False
            self._resolve_waiters()
            if self._wake.is_set():
                continue
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            # Not asyncio.wait_for: on Python 3.11 it returns normally when the cancel from
            # close() lands in the same tick as a wake-up, and close() then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _resolve_waiters(self) -> None:
        lasting = self._lasting()
        for keys, future in self._waiters:
            if not future.done() and all(covers(lasting, key) for key in keys):
                future.set_result(None)

    def _fail_waiters(self, reason: str) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(BackboneUnavailable(reason))


def _batches(keys: list[str], size: int = MAX_BATCH) -> Iterable[list[str]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]
