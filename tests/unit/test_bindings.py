"""service.bindings with the embedded backbone: modes, need(), grace, auto collapse, outages.

Nothing here sleeps for a fixed time: the tests wait, with a timeout, for a condition on the
backbone's bindings, re-checked whenever the applier touches the backbone or reads the clock.
The clock is injected, so the grace period passes when a test says so.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Collection

import pytest

from service import bindings as bindings_module
from service import routing
from service.backbone.memory import MemoryBackbone
from service.bindings import MAX_BATCH, WILDCARD_KEYS, BindingMode, Bindings, covers
from service.errors import BackboneUnavailable

WAIT_S = 3.0
GRACE_S = 0.05  # in fake-clock seconds; also bounds how long the applier naps while lingering


class Progress:
    """An event set whenever the applier does something observable."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def fire(self) -> None:
        self.event.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking on every bit of applier progress."""
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self.event.clear()
                await self.event.wait()


class Clock:
    """A fake monotonic clock that reports every read as progress."""

    def __init__(self, progress: Progress) -> None:
        self.now = 1000.0
        self.reads = 0
        self._progress = progress

    def __call__(self) -> float:
        self.reads += 1
        self._progress.fire()
        return self.now


class RecordingBackbone(MemoryBackbone):
    """The embedded backbone, recording calls, able to fail, and checking coverage on unbind."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.failure: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.unbind_gate = asyncio.Event()
        self.unbind_gate.set()
        self.binds_started = 0
        self.required: set[str] = set()  # keys that must stay covered at every moment
        self.lapses: list[str] = []

    async def bind(self, keys: Collection[str]) -> None:
        self.binds_started += 1
        self.progress.fire()
        await self.gate.wait()
        self.calls.append(("bind", tuple(keys)))
        try:
            if self.failure is not None:
                raise self.failure
            await super().bind(keys)
        finally:
            self.progress.fire()

    async def unbind(self, keys: Collection[str]) -> None:
        self.calls.append(("unbind", tuple(keys)))
        self.progress.fire()
        await self.unbind_gate.wait()
        try:
            if self.failure is not None:
                raise self.failure
            remaining = self.bindings - set(keys)
            self.lapses += [key for key in self.required if not covers(remaining, key)]
            await super().unbind(keys)
        finally:
            self.progress.fire()

    def ops(self, kind: str) -> list[str]:
        return [key for op, keys in self.calls if op == kind for key in keys]


@pytest.fixture
def progress() -> Progress:
    return Progress()


@pytest.fixture
def clock(progress: Progress) -> Clock:
    return Clock(progress)


@pytest.fixture
def backbone(progress: Progress) -> RecordingBackbone:
    return RecordingBackbone(progress)


Factory = Callable[..., Bindings]


@pytest.fixture
async def make(backbone: RecordingBackbone, clock: Clock) -> AsyncIterator[Factory]:
    """Factory for started Bindings on the recording backbone; closed after the test."""
    made: list[Bindings] = []

    def factory(**kwargs: object) -> Bindings:
        kwargs.setdefault("grace_s", GRACE_S)
        kwargs.setdefault("clock", clock)
        result = Bindings(backbone, **kwargs)  # type: ignore[arg-type]
        result.start()
        made.append(result)
        return result

    await backbone.start(lambda event: None)
    yield factory
    for item in made:
        await item.close()


def users(*ids: int | str) -> list[str]:
    return [routing.user_key(str(i)) for i in ids]


async def let_grace_pass(clock: Clock, progress: Progress) -> None:
    """Advance the fake clock past the grace period and wait until the applier reads it."""
    clock.now += GRACE_S * 2
    reads = clock.reads
    await progress.until(lambda: clock.reads > reads)


async def still_lingering(clock: Clock, progress: Progress, cycles: int = 4) -> None:
    """While a key lingers the applier re-plans every few ms; let it do so a few times."""
    reads = clock.reads
    await progress.until(lambda: clock.reads >= reads + cycles)


BARRIER = "dashboard.barrier-"


async def settle(bindings: Bindings, clock: Clock, progress: Progress) -> None:
    """Return once the applier has run a whole pass that started after this call.

    Each barrier key wakes the applier; waiting for the bind of the second one means the pass
    that bound the first (and did whatever else was due then) has finished. Where the barrier
    is already covered (wildcard), the pass shows as a clock read instead.
    """
    for _ in range(2):
        key = f"{BARRIER}{clock.reads}"
        reads = clock.reads
        bindings.add([key])
        await progress.until(lambda reads=reads: clock.reads > reads)
        await bindings.need([key], WAIT_S)


def real(keys: frozenset[str]) -> set[str]:
    """Bindings without the barrier keys."""
    return {key for key in keys if not key.startswith(BARRIER)}


# -- covers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "key", "expected"),
    [
        ({"dashboard.sales"}, "dashboard.sales", True),
        ({"dashboard.sales"}, "dashboard.ops", False),
        ({"dashboard.#"}, "dashboard.sales", True),
        ({"dashboard.#"}, "dashboard.#", True),
        ({"dashboard.#"}, "notification.user.1", False),
        ({"notification.#"}, "notification.user.1", True),
        ({"notification.#"}, "notification.broadcast", True),
        ({"notification.#"}, "dashboard.sales", False),
        ({"notification.user.#"}, "notification.user.1", True),
        ({"notification.user.#"}, "notification.user.a.b", True),
        ({"notification.user.#"}, "notification.broadcast", False),
        ({"notification.user.1"}, "notification.user.1.2", False),
        (set(), "dashboard.sales", False),
    ],
)
def test_covers(bound: set[str], key: str, expected: bool) -> None:
    assert covers(bound, key) is expected


# -- dynamic ----------------------------------------------------------------------------------


async def test_need_returns_once_the_keys_are_bound(
    make: Factory, backbone: RecordingBackbone
) -> None:
    bindings = make(mode=BindingMode.DYNAMIC)
    keys = ["dashboard.sales", *users(42), routing.BROADCAST_KEY]
    bindings.add(keys)
    await bindings.need(keys, WAIT_S)
    assert backbone.bindings == set(keys)
    assert bindings.bound == set(keys)
    assert all(bindings.is_covered(key) for key in keys)
    assert not bindings.is_covered("dashboard.ops")


async def test_need_waits_while_the_bind_is_in_flight(
    make: Factory, backbone: RecordingBackbone, progress: Progress
) -> None:
    bindings = make(mode=BindingMode.DYNAMIC)
    backbone.gate.clear()
    bindings.add(["dashboard.sales"])
    waiter = asyncio.create_task(bindings.need(["dashboard.sales"], WAIT_S))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not waiter.done()
    assert "dashboard.sales" not in backbone.bindings
    backbone.gate.set()
    async with asyncio.timeout(WAIT_S):
        await waiter
    assert "dashboard.sales" in backbone.bindings


async def test_need_of_nothing_or_of_bound_keys_returns_at_once(make: Factory) -> None:
    bindings = make(mode=BindingMode.DYNAMIC)
    await bindings.need([], 0.001)
    bindings.add(["dashboard.a"])
    await bindings.need(["dashboard.a"], WAIT_S)
    await bindings.need(["dashboard.a"], 0.000001)  # no round trip through the applier


async def test_only_needed_keys_are_bound(make: Factory, backbone: RecordingBackbone) -> None:
    bindings = make(mode=BindingMode.DYNAMIC)
    bindings.add(["dashboard.a", *users(1)])
    await bindings.need(["dashboard.a", *users(1)], WAIT_S)
    assert backbone.bindings == {"dashboard.a", "notification.user.1"}
    assert not backbone.bindings & WILDCARD_KEYS


async def test_dynamic_never_collapses(make: Factory, backbone: RecordingBackbone) -> None:
    bindings = make(mode=BindingMode.DYNAMIC, user_bindings_max=2)
    keys = users(*range(5))
    bindings.add(keys)
    await bindings.need(keys, WAIT_S)
    assert not bindings.collapsed
    assert backbone.bindings == set(keys)


async def test_binds_are_batched(make: Factory, backbone: RecordingBackbone) -> None:
    backbone.gate.clear()  # let every key pile up before the first call
    bindings = make(mode=BindingMode.DYNAMIC, user_bindings_max=10**6)
    keys = users(*range(2 * MAX_BATCH + 7))
    bindings.add(keys)
    backbone.gate.set()
    await bindings.need(keys, WAIT_S)
    sizes = [len(batch) for op, batch in backbone.calls if op == "bind"]
    assert sum(sizes) == len(keys)
    assert max(sizes) <= MAX_BATCH
    assert bindings.bind_calls == len(sizes) <= math.ceil(len(keys) / MAX_BATCH) + 1


async def test_adding_a_key_twice_binds_it_once(make: Factory, backbone: RecordingBackbone) -> None:
    bindings = make(mode=BindingMode.DYNAMIC)
    bindings.add(["dashboard.a"])
    bindings.add(["dashboard.a"])
    await bindings.need(["dashboard.a"], WAIT_S)
    bindings.add(["dashboard.a"])
    bindings.add(["dashboard.b"])
    await bindings.need(["dashboard.b"], WAIT_S)
    assert backbone.ops("bind").count("dashboard.a") == 1


async def test_need_does_not_trust_a_binding_being_removed(
    make: Factory, backbone: RecordingBackbone, progress: Progress
) -> None:
    """A subscribe racing the unbind of `dashboard.#` must wait for its own binding.

    Otherwise it is acked while `dashboard.#` goes away and `dashboard.sales` is not bound
    yet, and updates published in between are lost although the client was told otherwise.
    """
    bindings = make(mode=BindingMode.DYNAMIC, grace_s=0.0)
    bindings.add(["dashboard.#"])
    await bindings.need(["dashboard.#"], WAIT_S)
    backbone.unbind_gate.clear()
    bindings.remove(["dashboard.#"])
    await progress.until(lambda: backbone.ops("unbind") == ["dashboard.#"])  # in flight
    bindings.add(["dashboard.sales"])
    waiter = asyncio.create_task(bindings.need(["dashboard.sales"], WAIT_S))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done(), "need() returned on the strength of a binding being removed"
    backbone.unbind_gate.set()
    async with asyncio.timeout(WAIT_S):
        await waiter
    assert covers(backbone.bindings, "dashboard.sales")


async def test_need_does_not_trust_a_binding_planned_for_removal(
    make: Factory, backbone: RecordingBackbone, progress: Progress
) -> None:
    """Same race, caught earlier: the pass binds something else first, then unbinds."""
    bindings = make(mode=BindingMode.DYNAMIC, grace_s=0.0)
    bindings.add(["dashboard.#"])
    await bindings.need(["dashboard.#"], WAIT_S)
    backbone.gate.clear()
    bindings.remove(["dashboard.#"])
    bindings.add(["dashboard.ops"])  # this pass: bind ops (held at the gate), unbind #
    await progress.until(lambda: backbone.binds_started == 2)  # the pass is at the gate
    bindings.add(["dashboard.sales"])
    waiter = asyncio.create_task(bindings.need(["dashboard.sales"], WAIT_S))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done(), "need() returned on the strength of a binding about to go"
    backbone.gate.set()
    async with asyncio.timeout(WAIT_S):
        await waiter
    assert covers(backbone.bindings, "dashboard.sales")


# -- grace period -----------------------------------------------------------------------------


async def test_unneeded_key_lingers_for_the_grace_period_then_goes(
    make: Factory, backbone: RecordingBackbone, clock: Clock, progress: Progress
) -> None:
    bindings = make(mode=BindingMode.DYNAMIC)
    bindings.add(["dashboard.a"])
    await bindings.need(["dashboard.a"], WAIT_S)
    bindings.remove(["dashboard.a"])
    await still_lingering(clock, progress)
    assert "dashboard.a" in backbone.bindings
    assert backbone.ops("unbind") == []
    await let_grace_pass(clock, progress)
    await progress.until(lambda: "dashboard.a" not in backbone.bindings)
    await settle(bindings, clock, progress)
    assert backbone.ops("unbind") == ["dashboard.a"]
    assert real(bindings.bound) == set()
    assert not bindings.is_covered("dashboard.a")


async def test_a_key_needed_again_within_the_grace_period_is_never_unbound(
    make: Factory, backbone: RecordingBackbone, clock: Clock, progress: Progress
) -> None:
    """A reconnect storm: the user leaves and comes back before the grace period ends."""
    bindings = make(mode=BindingMode.DYNAMIC)
    key = users(42)
    bindings.add(key)
    await bindings.need(key, WAIT_S)
    bindings.remove(key)
    await still_lingering(clock, progress)
    bindings.add(key)
    await bindings.need(key, 0.000001)  # still bound: no wait
    clock.now += GRACE_S * 2
    await settle(bindings, clock, progress)
    assert backbone.ops("unbind") == []
    assert real(backbone.bindings) == set(key)
    assert backbone.ops("bind").count(key[0]) == 1


async def test_zero_grace_unbinds_at_once(
    make: Factory, backbone: RecordingBackbone, progress: Progress
) -> None:
    bindings = make(mode=BindingMode.DYNAMIC, grace_s=0.0)
    bindings.add(["dashboard.a"])
    await bindings.need(["dashboard.a"], WAIT_S)
    bindings.remove(["dashboard.a"])
    await progress.until(lambda: "dashboard.a" not in backbone.bindings)


async def test_removing_a_key_never_added_does_nothing(
    make: Factory, backbone: RecordingBackbone, clock: Clock, progress: Progress
) -> None:
    bindings = make(mode=BindingMode.DYNAMIC, grace_s=0.0)
    bindings.remove(["dashboard.never"])
    bindings.add(["dashboard.a"])
    await bindings.need(["dashboard.a"], WAIT_S)
    assert backbone.ops("unbind") == []


# -- wildcard ---------------------------------------------------------------------------------


async def test_wildcard_binds_both_patterns_once_and_ignores_interest(
    make: Factory, backbone: RecordingBackbone, clock: Clock, progress: Progress
) -> None:
    bindings = make(mode=BindingMode.WILDCARD)
    await bindings.need(["dashboard.#"], WAIT_S)
    assert backbone.bindings == {"dashboard.#", "notification.#"}
    keys = ["dashboard.sales", *users(1, 2), routing.BROADCAST_KEY]
    bindings.add(keys)
    await bindings.need(keys, 0.000001)  # covered already
    await settle(bindings, clock, progress)
    bindings.remove(keys)
    clock.now += GRACE_S * 2
    await settle(bindings, clock, progress)
    assert backbone.bindings == {"dashboard.#", "notification.#"}
    assert backbone.ops("bind") == sorted(WILDCARD_KEYS)
    assert backbone.ops("unbind") == []


# -- auto -------------------------------------------------------------------------------------


async def test_auto_binds_per_user_up_to_the_threshold(
    make: Factory, backbone: RecordingBackbone
) -> None:
    bindings = make(mode=BindingMode.AUTO, user_bindings_max=3)
    keys = users(1, 2, 3)
    bindings.add(keys)
    await bindings.need(keys, WAIT_S)
    assert not bindings.collapsed
    assert backbone.bindings == set(keys)


async def test_auto_collapses_above_the_threshold_and_expands_below_80_percent(
    make: Factory, backbone: RecordingBackbone, clock: Clock, progress: Progress
) -> None:
    bindings = make(mode=BindingMode.AUTO, user_bindings_max=10)
    other = ["dashboard.sales", routing.BROADCAST_KEY]
    bindings.add(other)
    present = users(*range(10))
    bindings.add(present)
    backbone.required = {*other, *present}
    await bindings.need(backbone.required, WAIT_S)
    assert not bindings.collapsed

    # 11 users: one `notification.user.#` instead of one binding per user.
    bindings.add(users(10))
    present += users(10)
    backbone.required = {*other, *present}
    await progress.until(lambda: routing.USERS_ALL in backbone.bindings)
    assert bindings.collapsed
    await let_grace_pass(clock, progress)
    await progress.until(lambda: backbone.bindings == {*other, routing.USERS_ALL})
    # A new user is covered at once, without a binding of its own.
    bindings.add(users(99))
    await bindings.need(users(99), 0.000001)

    # Hysteresis: 10, 9, 8 users (not below 80 % of 10) keep the collapsed binding.
    bindings.remove(users(99, 10))
    bindings.remove(users(9))
    bindings.remove(users(8))
    present = users(*range(8))
    backbone.required = {*other, *present}
    await settle(bindings, clock, progress)
    assert bindings.collapsed
    assert real(backbone.bindings) == {*other, routing.USERS_ALL}

    # 7 users (< 8): per-user bindings come back, then `notification.user.#` goes.
    bindings.remove(users(7))
    present = users(*range(7))
    backbone.required = {*other, *present}
    await progress.until(lambda: set(present) <= backbone.bindings)
    assert not bindings.collapsed
    await let_grace_pass(clock, progress)
    await progress.until(lambda: routing.USERS_ALL not in backbone.bindings)
    assert real(backbone.bindings) == {*other, *present}
    assert backbone.lapses == []


@pytest.mark.parametrize("grace_s", [0.0, GRACE_S])
async def test_auto_switch_binds_before_it_unbinds(
    make: Factory,
    backbone: RecordingBackbone,
    clock: Clock,
    progress: Progress,
    grace_s: float,
) -> None:
    """Coverage never lapses, even with no grace period to hide a wrong order."""
    bindings = make(mode=BindingMode.AUTO, user_bindings_max=4, grace_s=grace_s)
    many = users(*range(5))
    few = users(*range(3))
    bindings.add(few)
    backbone.required = set(few)
    await bindings.need(few, WAIT_S)

    bindings.add(many)
    backbone.required = set(many)
    await progress.until(lambda: routing.USERS_ALL in backbone.bindings)
    if grace_s:
        await let_grace_pass(clock, progress)
    await progress.until(lambda: backbone.bindings == {routing.USERS_ALL})

    bindings.remove(set(many) - set(few))
    backbone.required = set(few)
    await progress.until(lambda: set(few) <= backbone.bindings)
    if grace_s:
        await let_grace_pass(clock, progress)
    await progress.until(lambda: backbone.bindings == set(few))

    assert backbone.lapses == []
    ops = [(op, key) for op, keys in backbone.calls for key in keys]
    assert ops.index(("bind", routing.USERS_ALL)) < ops.index(("unbind", users(0)[0]))
    assert ("bind", users(4)[0]) not in ops  # collapsed before it was ever bound
    assert ops.index(("unbind", routing.USERS_ALL)) > max(
        i for i, (op, key) in enumerate(ops) if op == "bind" and key in few
    )


async def test_collapse_does_not_touch_dashboard_or_broadcast_keys(
    make: Factory, backbone: RecordingBackbone, progress: Progress
) -> None:
    bindings = make(mode=BindingMode.AUTO, user_bindings_max=1, grace_s=0.0)
    other = {"dashboard.a", "dashboard.#", routing.BROADCAST_KEY}
    bindings.add([*other, *users(1)])
    await bindings.need([*other, *users(1)], WAIT_S)
    assert backbone.bindings == {*other, *users(1)}
    bindings.add(users(2))
    await progress.until(lambda: backbone.bindings == {*other, routing.USERS_ALL})
    assert backbone.ops("unbind") == users(1)


async def test_collapsed_from_the_start_binds_no_user_key(
    make: Factory, backbone: RecordingBackbone
) -> None:
    bindings = make(mode=BindingMode.AUTO, user_bindings_max=2)
    keys = users(1, 2, 3)
    bindings.add(keys)
    await bindings.need(keys, WAIT_S)
    assert bindings.collapsed
    assert backbone.ops("bind") == [routing.USERS_ALL]


# -- outages ----------------------------------------------------------------------------------


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bindings_module, "RETRY_S", 0.01)


@pytest.mark.usefixtures("fast_retry")
async def test_unavailable_backbone_times_need_out_then_the_applier_recovers(
    make: Factory, backbone: RecordingBackbone, progress: Progress
) -> None:
    backbone.failure = BackboneUnavailable("broker down")
    bindings = make(mode=BindingMode.DYNAMIC)
    bindings.add(["dashboard.a"])
    with pytest.raises(BackboneUnavailable):
        await bindings.need(["dashboard.a"], 0.1)
    assert backbone.bindings == frozenset()
    attempts = len(backbone.calls)
    await progress.until(lambda: len(backbone.calls) > attempts)  # it keeps retrying
    backbone.failure = None
    await bindings.need(["dashboard.a"], WAIT_S)
    assert backbone.bindings == {"dashboard.a"}


@pytest.mark.usefixtures("fast_retry")
async def test_unexpected_backbone_error_does_not_kill_the_applier(
    make: Factory, backbone: RecordingBackbone, progress: Progress
) -> None:
    backbone.failure = RuntimeError("boom")
    bindings = make(mode=BindingMode.DYNAMIC)
    bindings.add(["dashboard.a"])
    await progress.until(lambda: len(backbone.calls) >= 2)
    backbone.failure = None
    await bindings.need(["dashboard.a"], WAIT_S)


@pytest.mark.usefixtures("fast_retry")
async def test_failed_unbind_is_retried(
    make: Factory, backbone: RecordingBackbone, progress: Progress
) -> None:
    bindings = make(mode=BindingMode.DYNAMIC, grace_s=0.0)
    bindings.add(["dashboard.a"])
    await bindings.need(["dashboard.a"], WAIT_S)
    backbone.failure = BackboneUnavailable("broker down")
    bindings.remove(["dashboard.a"])
    await progress.until(lambda: backbone.ops("unbind").count("dashboard.a") >= 2)
    assert "dashboard.a" in backbone.bindings
    backbone.failure = None
    await progress.until(lambda: "dashboard.a" not in backbone.bindings)


async def test_close_fails_waiting_need_calls(make: Factory, backbone: RecordingBackbone) -> None:
    backbone.gate.clear()
    bindings = make(mode=BindingMode.DYNAMIC)
    bindings.add(["dashboard.a"])
    waiter = asyncio.create_task(bindings.need(["dashboard.a"], WAIT_S))
    await asyncio.sleep(0)
    await bindings.close()
    async with asyncio.timeout(WAIT_S):
        with pytest.raises(BackboneUnavailable):
            await waiter


async def test_need_without_a_running_applier_times_out(backbone: RecordingBackbone) -> None:
    bindings = Bindings(backbone, mode=BindingMode.DYNAMIC)
    bindings.add(["dashboard.a"])
    with pytest.raises(BackboneUnavailable):
        await bindings.need(["dashboard.a"], 0.05)


async def test_start_twice_runs_one_applier(make: Factory, backbone: RecordingBackbone) -> None:
    bindings = make(mode=BindingMode.DYNAMIC)
    bindings.start()
    bindings.add(["dashboard.a"])
    await bindings.need(["dashboard.a"], WAIT_S)
    assert backbone.ops("bind") == ["dashboard.a"]
