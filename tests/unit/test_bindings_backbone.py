"""Bindings and node behaviour that matter once the backbone is a broker that can fail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

import pytest
from structlog.testing import capture_logs

from service.backbone.memory import MemoryBackbone
from service.bindings import BindingMode, Bindings
from service.errors import BackboneUnavailable, Refused
from service.model import Namespace, Principal
from service.node import Limits, Node
from tests.broker import until


class GatedBackbone(MemoryBackbone):
    """Unbinds wait on a gate, one call at a time; binds can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Semaphore(0)
        self.calls: list[tuple[str, list[str]]] = []
        self.down = False

    async def bind(self, keys: Collection[str]) -> None:
        if self.down:
            raise BackboneUnavailable("broker down")
        self.calls.append(("bind", sorted(keys)))
        await super().bind(keys)

    async def unbind(self, keys: Collection[str]) -> None:
        self.calls.append(("unbind", sorted(keys)))
        await self.gate.acquire()
        await super().unbind(keys)


async def test_a_new_binding_goes_before_the_rest_of_a_long_unbind_run() -> None:
    backbone = GatedBackbone()
    await backbone.start(lambda event: None)
    bindings = Bindings(backbone, mode=BindingMode.DYNAMIC, grace_s=0)
    bindings.start()
    users = [f"notification.user.{i:04}" for i in range(250)]
    bindings.add(users)
    await bindings.need(users, 1.0)
    bindings.remove(users)  # 250 unbinds: three batches, each held at the gate
    await until(lambda: bool(backbone.calls) and backbone.calls[-1][0] == "unbind", 1.0)
    bindings.add(["dashboard.sales"])
    waiter = asyncio.ensure_future(bindings.need(["dashboard.sales"], 1.0))
    backbone.gate.release()  # the first unbind batch finishes
    await waiter  # served before the two remaining unbind batches
    assert [kind for kind, _ in backbone.calls][:3] == ["bind", "unbind", "bind"]
    assert backbone.calls[2][1] == ["dashboard.sales"]
    for _ in range(2):
        backbone.gate.release()
    await until(lambda: bindings.bound == {"dashboard.sales"}, 1.0)
    await bindings.close()


async def test_an_outage_is_logged_once_and_its_end_once() -> None:
    backbone = GatedBackbone()
    await backbone.start(lambda event: None)
    backbone.down = True
    bindings = Bindings(backbone, mode=BindingMode.DYNAMIC)
    bindings.start()
    with capture_logs() as logs:
        bindings.add(["notification.broadcast"])
        with pytest.raises(BackboneUnavailable):
            await bindings.need(["notification.broadcast"], 2.5)  # three tries, one second apart
        backbone.down = False
        await bindings.need(["notification.broadcast"], 2.0)
    await bindings.close()
    levels = [(entry["event"], entry["log_level"]) for entry in logs]
    assert levels.count(("bindings_deferred", "warning")) == 1
    assert ("bindings_deferred", "debug") in levels
    assert ("bindings_applied", "info") in levels


async def test_a_connection_whose_bindings_cannot_be_made_is_refused_with_503() -> None:
    backbone = GatedBackbone()
    await backbone.start(lambda event: None)
    backbone.down = True
    bindings = Bindings(backbone)
    node = Node(
        backbone,
        bindings,
        instance_id="t",
        verify=lambda token: Principal("u"),
        limits=Limits(bind_timeout_s=0.1),
    )
    bindings.start()
    session = node.new_session(Principal("u"), Namespace.NOTIFICATIONS)
    with pytest.raises(Refused) as refused:
        await node.join(session)
    assert (refused.value.status, refused.value.code) == (503, "unavailable")
    assert len(node.hub) == 0
    await bindings.close()


async def test_close_returns_even_when_it_lands_on_a_wake_up() -> None:
    backbone = GatedBackbone()
    await backbone.start(lambda event: None)
    bindings = Bindings(backbone, mode=BindingMode.DYNAMIC, grace_s=5.0)
    bindings.start()
    bindings.add(["notification.broadcast"])
    await bindings.need(["notification.broadcast"], 1.0)
    bindings.remove(["notification.broadcast"])  # lingers: the applier waits with a timeout
    for _ in range(3):
        await asyncio.sleep(0)  # let it get there
    begin = time.monotonic()
    bindings.add(["dashboard.sales"])  # wakes the applier ...
    async with asyncio.timeout(2):
        await bindings.close()  # ... and the cancel lands in the same tick
    # (close() swallows the CancelledError of a timeout, so measure instead of expecting it)
    assert time.monotonic() - begin < 1.0
