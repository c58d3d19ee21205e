"""A bounded in-memory run of notification entries, by offset.

The embedded backbone keeps its whole notification history in one; the RabbitMQ stream keeps
the recent tail of the stream in one (fed by its live consumer, extended backwards by replays),
so that most replays never reach the broker.

Offsets grow but need not be consecutive (a RabbitMQ stream spends offsets on its own
bookkeeping chunks). What makes a run usable for recovery is its `floor`: every notification
with an offset above the floor is held (up to the last one). Retention: an entry goes when it
has been here longer than `window_s` (by the injected clock), or when `max_entries` newer ones
are held; the floor rises to the offset of the last entry that went.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence

from service.model import Event

MAX_ENTRIES = 100_000
COMPACT_AFTER = 4096  # dropped slots at the front of the list before it is compacted


class RecentHistory:
    """See the module docstring."""

    def __init__(
        self,
        *,
        window_s: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_entries = max(max_entries, 1)
        self._clock = clock
        # (time it arrived here, entry), oldest first, from index `_start` on: dropping the
        # oldest only moves `_start` (the list is compacted now and then), so the entries keep
        # O(1) access by index and `read` can bisect.
        self._items: list[tuple[float, Event]] = []
        self._start = 0
        self._floor: int | None = None

    def __len__(self) -> int:
        return len(self._items) - self._start

    @property
    def floor(self) -> int | None:
        """Every notification above this offset is held (up to `last_offset`); None: no run."""
        self.expire()
        return self._floor

    @property
    def last_offset(self) -> int | None:
        """The newest offset held, None when empty."""
        return self._items[-1][1].offset if len(self) else None

    def append(self, event: Event) -> None:
        """Add the next entry of the run: every notification between the last one and it
        must be absent from the carrier (the caller reads it sequentially).

        The first entry of a run sets the floor right below it; an entry whose offset does not
        grow starts a new run.
        """
        offset = event.offset or 0
        last = self.last_offset
        if last is not None and offset <= last:
            self.restart()
        if self._floor is None:
            self._floor = offset - 1
        self._items.append((self._clock(), event))
        if len(self) > self.max_entries:
            self._drop_oldest()
        self.expire()

    def restart(self) -> None:
        """Forget the run (the carrier may have lost entries since its last one)."""
        self._items.clear()
        self._start = 0
        self._floor = None

    def prepend(self, events: Sequence[Event], floor: int, upto: int) -> bool:
        """Add older entries: every notification in `(floor, upto]` is among `events`.

        Done only when `upto` reaches the current floor (the two runs join without a hole), or
        when there is no run yet (the caller knows nothing after `upto` exists); only as many
        as the count bound leaves room for are kept (the newest of them). Returns whether the
        run now reaches down to `floor`.
        """
        current = self.floor
        if current is None:
            # No run yet: this one starts it, when nothing after `upto` was appended.
            current = upto
        elif upto < current or floor >= current:
            return False
        older = [event for event in events if floor < (event.offset or 0) <= current]
        room = self.max_entries - len(self)
        if room < len(older):
            if room <= 0:
                return False
            floor = older[-room - 1].offset or floor
            older = older[-room:]
        # As old as the oldest held, so that retention keeps going oldest first.
        stamp = self._items[self._start][0] if len(self) else self._clock()
        self._items = [(stamp, event) for event in older] + self._items[self._start :]
        self._start = 0
        self._floor = floor
        return True

    def read(self, since: int, until: int) -> Iterator[Event]:
        """The held entries with `since < offset <= until`, in order; complete when
        `since >= floor`. Iterate it without awaiting: the log must not change meanwhile.
        """
        self.expire()
        items = self._items
        index = bisect.bisect_right(items, since, lo=self._start, key=_offset_of)
        while index < len(items):
            event = items[index][1]
            if (event.offset or 0) > until:
                return
            yield event
            index += 1

    def expire(self) -> None:
        """Drop the entries older than the window."""
        horizon = self._clock() - self.window_s
        while len(self) and self._items[self._start][0] < horizon:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        event = self._items[self._start][1]
        self._start += 1
        self._floor = event.offset
        if self._start >= COMPACT_AFTER and self._start * 2 >= len(self._items):
            del self._items[: self._start]
            self._start = 0


def _offset_of(item: tuple[float, Event]) -> int:
    return item[1].offset or 0
