"""A bounded in-memory run of consecutive notification entries, by offset.

The embedded backbone keeps its whole notification history in one; the RabbitMQ stream keeps
the recent tail of the stream in one (fed by its live consumer, extended backwards by replays),
so that most replays never reach the broker.

Entries are `Event`s with consecutive offsets. Retention: an entry goes when it has been here
longer than `window_s` (by the injected clock), or when `max_entries` newer ones are held.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from service.model import Event

MAX_ENTRIES = 100_000


class RecentLog:
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
        # (time it arrived here, entry); entry i has offset first + i.
        self._entries: deque[tuple[float, Event]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def first_offset(self) -> int | None:
        """The oldest offset held, None when empty."""
        self.expire()
        return self._entries[0][1].offset if self._entries else None

    @property
    def last_offset(self) -> int | None:
        """The newest offset held, None when empty."""
        return self._entries[-1][1].offset if self._entries else None

    def append(self, event: Event) -> None:
        """Add the entry after the last one; an entry that does not follow starts a new run."""
        last = self.last_offset
        if last is not None and event.offset != last + 1:
            self._entries.clear()
        self._entries.append((self._clock(), event))
        if len(self._entries) > self.max_entries:
            self._entries.popleft()
        self.expire()

    def prepend(self, events: Iterable[Event]) -> bool:
        """Add older entries that end right before the first one held; False if they do not.

        Only as many as the count bound leaves room for are kept (the newest of them).
        """
        older = list(events)
        first = self.first_offset
        if not older or first is None or older[-1].offset != first - 1:
            return False
        room = self.max_entries - len(self._entries)
        stamp = self._entries[0][0]  # as old as the oldest held: retention stays in order
        for event in reversed(older[-room:] if room > 0 else []):
            self._entries.appendleft((stamp, event))
        return True

    def read(self, since: int, until: int) -> Iterator[Event]:
        """The held entries with `since < offset <= until`, in order.

        Safe to interleave with appends: each step looks the next offset up again.
        """
        offset = since + 1
        while offset <= until:
            self.expire()
            if not self._entries:
                return
            first = self._entries[0][1].offset or 0
            offset = max(offset, first)
            index = offset - first
            if offset > until or index >= len(self._entries):
                return
            yield self._entries[index][1]
            offset += 1

    def expire(self) -> None:
        """Drop the entries older than the window."""
        horizon = self._clock() - self.window_s
        entries = self._entries
        while entries and entries[0][0] < horizon:
            entries.popleft()
