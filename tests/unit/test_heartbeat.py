"""HeartbeatWheel: each socket visited when it asked, never before, and only then."""

from __future__ import annotations

import asyncio

from service.transports.heartbeat import SLOTS, HeartbeatWheel

INTERVAL_S = 0.32  # slots of 20 ms
WITHIN_S = 5.0  # how long a test waits for a visit before it fails


class FakeSocket:
    """Asks for the visits in `plan` (delays from the previous visit), then for none."""

    def __init__(self, wheel: HeartbeatWheel, plan: list[float]) -> None:
        self.wheel = wheel
        self.plan = list(plan)
        self.asked: list[float] = []
        self.visits: list[float] = []
        self.aborted = False
        self.done = asyncio.Event()

    def first(self) -> float:
        when = self.wheel.now() + self.plan.pop(0)
        self.asked.append(when)
        return when

    def heartbeat(self, now: float) -> float | None:
        self.visits.append(now)
        if not self.plan:
            self.done.set()
            return None
        when = now + self.plan.pop(0)
        self.asked.append(when)
        return when

    def abort(self) -> None:
        self.aborted = True


async def test_each_visit_comes_at_or_after_the_time_asked_within_a_slot() -> None:
    wheel = HeartbeatWheel(INTERVAL_S)
    sockets = [FakeSocket(wheel, [0.01 * i, 0.05, INTERVAL_S, 0.0]) for i in range(1, 12)]
    for socket in sockets:
        wheel.add(socket, socket.first())
    async with asyncio.timeout(WITHIN_S):
        await asyncio.gather(*(s.done.wait() for s in sockets))
    slot_s = INTERVAL_S / SLOTS
    for socket in sockets:
        assert len(socket.visits) == len(socket.asked) == 4
        for asked, visited in zip(socket.asked, socket.visits, strict=True):
            assert visited >= asked - 1e-6
            assert visited - asked < slot_s + 0.25  # a slot, plus a busy machine's lateness
    assert len(wheel) == 0


async def test_a_visit_asked_beyond_the_span_is_brought_back_in_it() -> None:
    wheel = HeartbeatWheel(INTERVAL_S)
    socket = FakeSocket(wheel, [100.0])
    start = wheel.now()
    wheel.add(socket, socket.first())
    async with asyncio.timeout(WITHIN_S):
        await socket.done.wait()
    assert socket.visits[0] - start <= INTERVAL_S * 1.25 + 0.25


async def test_a_discarded_socket_is_never_visited_and_not_kept() -> None:
    wheel = HeartbeatWheel(INTERVAL_S)
    gone = FakeSocket(wheel, [0.02])
    stays = FakeSocket(wheel, [0.06])
    wheel.add(gone, gone.first())
    wheel.add(stays, stays.first())
    wheel.discard(gone)
    assert len(wheel) == 1
    async with asyncio.timeout(WITHIN_S):
        await stays.done.wait()
    assert gone.visits == []


async def test_a_socket_is_visited_only_when_due_not_on_every_turn() -> None:
    wheel = HeartbeatWheel(INTERVAL_S)
    busy = FakeSocket(wheel, [0.02] * 12)  # keeps the wheel turning every slot
    idle = FakeSocket(wheel, [0.3, 0.0])
    wheel.add(busy, busy.first())
    wheel.add(idle, idle.first())
    async with asyncio.timeout(WITHIN_S):
        await busy.done.wait()
        await idle.done.wait()
    assert len(busy.visits) == 12  # the first visit, then one per delay left in its plan
    assert len(idle.visits) == 2


async def test_close_all_aborts_every_socket_and_stops() -> None:
    wheel = HeartbeatWheel(INTERVAL_S)
    sockets = [FakeSocket(wheel, [0.05]) for _ in range(3)]
    for socket in sockets:
        wheel.add(socket, socket.first())
    wheel.close_all()
    assert all(s.aborted for s in sockets)
    assert len(wheel) == 0
    later = FakeSocket(wheel, [0.1])  # visited after the time the others had asked for
    wheel.add(later, later.first())
    async with asyncio.timeout(WITHIN_S):
        await later.done.wait()
    assert all(s.visits == [] for s in sockets)
