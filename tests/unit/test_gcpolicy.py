"""GcPolicy: freezes the heap as connections accumulate, thaws and collects on a cadence."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from service.gcpolicy import GcPolicy
from tests.broker import until


class Node:
    """A reference cycle, as a closed connection's objects often are."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_freezes_once_enough_connections_arrived() -> None:
    connections = 0
    policy = GcPolicy(lambda: connections, freeze_after=100)
    policy.check()
    assert (policy.freezes, gc.get_freeze_count()) == (0, 0)
    connections = 99
    policy.check()
    assert policy.freezes == 0
    connections = 100
    policy.check()
    assert policy.freezes == 1
    assert gc.get_freeze_count() > 0
    connections = 150  # 50 more since that freeze: not yet
    policy.check()
    assert policy.freezes == 1
    connections = 20  # many left; growth counts again from here
    policy.check()
    connections = 120
    policy.check()
    assert policy.freezes == 2


def test_frozen_cycles_are_kept_until_the_thaw_collects_them() -> None:
    policy = GcPolicy(lambda: 0)
    cycle = Node()
    alive = weakref.ref(cycle)
    gc.freeze()  # as a freeze would catch a connection's objects
    del cycle
    gc.collect()
    assert alive() is not None  # frozen: the collector does not look at it
    policy.thaw()
    assert alive() is None
    assert gc.get_freeze_count() > 0  # frozen again after the pass
    assert policy.thaws == 1


async def test_runs_on_the_loop_and_thaws_on_its_cadence() -> None:
    connections = 0
    policy = GcPolicy(lambda: connections, check_every_s=0.01, freeze_after=1, thaw_every_s=0.05)
    policy.start()
    try:
        connections = 5
        await until(lambda: policy.freezes > 0 and policy.thaws > 0, 5, "a freeze and a thaw")
    finally:
        await policy.close()
    assert policy.freezes >= 1
    assert policy.thaws >= 1
