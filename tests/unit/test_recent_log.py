"""RecentLog: the bounded run of consecutive entries behind both backbones' histories."""

from __future__ import annotations

from service.backbone.history import RecentLog
from service.model import Event


def entry(offset: int) -> Event:
    return Event("notification.user.a", "notification_new", offset, str(offset), 0, offset=offset)


def offsets(log: RecentLog, since: int, until: int) -> list[int | None]:
    return [event.offset for event in log.read(since, until)]


def test_reads_are_bounded_on_both_sides() -> None:
    log = RecentLog(window_s=60)
    for n in range(1, 6):
        log.append(entry(n))
    assert offsets(log, 0, 5) == [1, 2, 3, 4, 5]
    assert offsets(log, 2, 4) == [3, 4]
    assert offsets(log, 5, 9) == []
    assert (log.first_offset, log.last_offset) == (1, 5)


def test_time_and_count_bounds() -> None:
    now = [0.0]
    log = RecentLog(window_s=10, max_entries=3, clock=lambda: now[0])
    for n in range(1, 6):
        log.append(entry(n))
    assert offsets(log, 0, 5) == [3, 4, 5]
    now[0] = 5
    log.append(entry(6))
    now[0] = 10.5  # 3, 4, 5 arrived at 0: gone; 6 at 5 stays
    assert offsets(log, 0, 6) == [6]
    assert log.first_offset == 6
    now[0] = 100
    assert log.first_offset is None
    assert len(log) == 0


def test_an_entry_that_does_not_follow_starts_a_new_run() -> None:
    log = RecentLog(window_s=60)
    log.append(entry(1))
    log.append(entry(2))
    log.append(entry(7))
    assert offsets(log, 0, 10) == [7]


def test_prepend_extends_backwards_only_when_contiguous_and_within_the_bound() -> None:
    log = RecentLog(window_s=60, max_entries=4)
    log.append(entry(5))
    log.append(entry(6))
    assert not log.prepend([entry(2), entry(3)])  # 4 is missing
    assert log.prepend([entry(1), entry(2), entry(3), entry(4)])
    assert offsets(log, 0, 10) == [3, 4, 5, 6]  # the newest that fit
    assert not log.prepend([])


def test_reading_while_appending_sees_every_entry_once() -> None:
    log = RecentLog(window_s=60, max_entries=100)
    log.append(entry(1))
    seen = []
    for event in log.read(0, 5):
        seen.append(event.offset)
        if event.offset is not None and event.offset < 5:
            log.append(entry(event.offset + 1))
    assert seen == [1, 2, 3, 4, 5]
