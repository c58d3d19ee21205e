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
import time
from collections.abc import Callable, Collection, Iterable
from enum import StrEnum

import structlog

from service import routing
from service.backbone.base import Backbone
from service.errors import BackboneUnavailable
from service.metrics import Metrics

log = structlog.get_logger(__name__)

HYSTERESIS = 0.8
RETRY_S = 1.0
MAX_BATCH = 500


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
        self._bound: set[str] = set()
        self._unbinding: set[str] = set()  # bound, but this pass is about to unbind them
        self._waiters: list[tuple[frozenset[str], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.bind_calls = 0
        self.unbind_calls = 0

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
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
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

    def _compute_effective(self) -> set[str]:
        if self.mode is BindingMode.WILDCARD:
            return set(WILDCARD_KEYS)
        if self.mode is BindingMode.AUTO:
            if not self._collapsed and self._wanted_users > self._user_max:
                self._collapsed = True
                log.info("bindings_collapsed", users=self._wanted_users, max=self._user_max)
            elif self._collapsed and self._wanted_users < self._user_max * HYSTERESIS:
                self._collapsed = False
                log.info("bindings_expanded", users=self._wanted_users, max=self._user_max)
        if not self._collapsed:
            return set(self._wanted)
        effective = {k for k in self._wanted if not k.startswith(routing.USER_PREFIX)}
        effective.add(routing.USERS_ALL)
        return effective

    def _plan(self, now: float) -> tuple[list[str], list[str], float | None]:
        effective = self._compute_effective()
        for key in self._effective - effective:
            self._linger[key] = now + self._grace_s
        for key in effective:
            self._linger.pop(key, None)
        self._effective = effective
        for key, deadline in list(self._linger.items()):
            if deadline <= now:
                del self._linger[key]
        desired = effective | self._linger.keys()
        to_bind = sorted(desired - self._bound)
        to_unbind = sorted(self._bound - desired)
        next_deadline = min(self._linger.values(), default=None)
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
                for batch in _batches(to_unbind):
                    await self._backbone.unbind(batch)
                    self.unbind_calls += 1
                    if self._metrics is not None:
                        self._metrics.binding_operations.labels("unbind").inc()
                    self._bound.difference_update(batch)
                self._unbinding.clear()
            except BackboneUnavailable as exc:
                log.warning("bindings_deferred", reason=str(exc))
                await asyncio.sleep(RETRY_S)
                continue
            except Exception as exc:
                log.error("bindings_failed", error=repr(exc))
                log.debug("bindings_failed_traceback", exc_info=True)
                await asyncio.sleep(RETRY_S)
                continue
            self._resolve_waiters()
            if self._wake.is_set():
                continue
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _resolve_waiters(self) -> None:
        lasting = self._lasting()
        for keys, future in self._waiters:
            if not future.done() and all(covers(lasting, key) for key in keys):
                future.set_result(None)

    def _fail_waiters(self, reason: str) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(BackboneUnavailable(reason))


def _batches(keys: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(keys), MAX_BATCH):
        yield keys[start : start + MAX_BATCH]
