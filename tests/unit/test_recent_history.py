"""RecentHistory: the bounded run of entries behind both backbones' histories."""

from __future__ import annotations

from service.backbone.history import RecentHistory
from service.model import Event


def entry(offset: int) -> Event:
    return Event("notification.user.a", "notification_new", offset, str(offset), 0, offset=offset)


def offsets(log: RecentHistory, since: int, until: int) -> list[int | None]:
    return [event.offset for event in log.read(since, until)]


def test_reads_are_bounded_on_both_sides_and_offsets_may_skip() -> None:
    log = RecentHistory(window_s=60)
    for n in (1, 2, 4, 5, 9):
        log.append(entry(n))
    assert offsets(log, 0, 9) == [1, 2, 4, 5, 9]
    assert offsets(log, 2, 5) == [4, 5]
    assert offsets(log, 3, 8) == [4, 5]
    assert offsets(log, 9, 20) == []
    assert (log.floor, log.last_offset) == (0, 9)


def test_time_and_count_bounds_raise_the_floor() -> None:
    now = [0.0]
    log = RecentHistory(window_s=10, max_entries=3, clock=lambda: now[0])
    for n in range(1, 6):
        log.append(entry(n))
    assert offsets(log, 0, 5) == [3, 4, 5]
    assert log.floor == 2
    now[0] = 5
    log.append(entry(6))
    now[0] = 10.5  # 3, 4, 5 arrived at 0: gone; 6 at 5 stays
    assert offsets(log, 0, 6) == [6]
    assert log.floor == 5
    now[0] = 100
    assert log.floor == 6
    assert len(log) == 0
    log.append(entry(7))  # the run goes on: nothing was lost in between
    assert (log.floor, offsets(log, 6, 7)) == (6, [7])


def test_an_entry_that_does_not_grow_starts_a_new_run() -> None:
    log = RecentHistory(window_s=60)
    log.append(entry(5))
    log.append(entry(3))
    assert offsets(log, 0, 10) == [3]
    assert log.floor == 2
    log.restart()
    assert log.floor is None
    log.append(entry(8))
    assert log.floor == 7


def test_prepend_joins_an_older_run_only_without_a_hole() -> None:
    log = RecentHistory(window_s=60, max_entries=4)
    log.append(entry(10))
    log.append(entry(11))
    assert log.floor == 9
    assert not log.prepend([entry(6), entry(7)], 5, 8)  # (8, 9] unknown: a hole
    assert log.prepend([entry(6), entry(7), entry(9)], 5, 9)
    assert offsets(log, 0, 20) == [7, 9, 10, 11]  # the newest that fit
    assert log.floor == 6
    assert not log.prepend([entry(1)], 0, 3)


def test_compaction_keeps_every_entry_reachable() -> None:
    log = RecentHistory(window_s=60, max_entries=100)
    for n in range(1, 10_001):
        log.append(entry(n))
    assert offsets(log, 9_950, 9_953) == [9_951, 9_952, 9_953]
    assert log.floor == 9_900
    assert len(log) == 100


def test_prepend_starts_a_run_when_there_is_none() -> None:
    log = RecentHistory(window_s=60)
    assert log.prepend([entry(3), entry(5)], 2, 6)
    assert (log.floor, offsets(log, 0, 9)) == (2, [3, 5])
    log.append(entry(8))
    assert offsets(log, 2, 9) == [3, 5, 8]
