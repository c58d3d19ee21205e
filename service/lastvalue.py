"""The last `dashboard_update` frame per topic, for `dashboard_refresh`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class LastValueCache:
    """A bounded map topic → last frame; the least recently updated topic goes first."""

    def __init__(self, max_topics: int = 10_000) -> None:
        self._max = max_topics
        self._frames: OrderedDict[str, bytes] = OrderedDict()

    def put(self, topic: str, frame: bytes) -> None:
        """Remember `frame` as the latest for `topic`."""
        self._frames[topic] = frame
        self._frames.move_to_end(topic)
        while len(self._frames) > self._max:
            self._frames.popitem(last=False)

    def get(self, topic: str) -> bytes | None:
        """The latest frame of `topic`, if any."""
        return self._frames.get(topic)

    def topics(self) -> Iterable[str]:
        """Every topic with a cached frame."""
        return self._frames.keys()

    def __len__(self) -> int:
        return len(self._frames)
