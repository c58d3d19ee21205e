"""The seam between the gateway and whatever carries its events.

A backbone is started with one callback, `on_event`, and from then on calls it, on the event
loop, for every downstream event whose routing key matches one of its current bindings.
It never imports the hub or the node: interest reaches it as `bind` / `unbind` calls.

Guarantees every implementation gives (tests/contract/test_backbone.py checks them):

- Delivery to `on_event` is at most once, and in publish order per routing key.
- After `bind(keys)` returns, every event published to one of those keys reaches `on_event`.
  After `unbind(keys)` returns, events for those keys alone stop arriving.
- `ready` is True while the backbone can deliver and publish; `reason` says why not.
  While not ready, `publish*` raise BackboneUnavailable at once and never buffer;
  bindings asked for meanwhile are applied when it comes back.
- `publish_upstream` returns only once the event is safely taken (broker confirm).
- Notification events (`notification.*` keys) carry an `offset`, growing with every
  notification the backbone carries, the same on every instance; None where unsupported.

A backbone that keeps the notifications it carried for a while, so that reconnecting clients
can recover what they missed (contract §3), offers them as its `history` attribute, a
`NotificationLog` (None or absent: no recovery; see `history_of`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Collection
from typing import Protocol, runtime_checkable

from service.model import Event

OnEvent = Callable[[Event], None]


class Backbone(Protocol):
    """What the node needs from a backbone; see the module docstring for the guarantees."""

    @property
    def ready(self) -> bool:
        """True while connected and able to deliver and publish."""
        ...

    @property
    def reason(self) -> str:
        """Why the backbone is not ready ('' when ready)."""
        ...

    async def start(self, on_event: OnEvent) -> None:
        """Connect and declare; from now on call `on_event` for bound deliveries."""
        ...

    async def close(self) -> None:
        """Stop delivering and release every resource (the instance queue goes away)."""
        ...

    async def bind(self, keys: Collection[str]) -> None:
        """Receive events for these routing keys or patterns (`dashboard.#`)."""
        ...

    async def unbind(self, keys: Collection[str]) -> None:
        """Stop receiving events for these keys."""
        ...

    async def publish(self, event: Event) -> None:
        """Publish downstream, as a service would, so that every instance sees it."""
        ...

    async def publish_upstream(self, routing_key: str, body: bytes) -> None:
        """Publish a client event to the upstream exchange and wait for the confirm."""
        ...


@runtime_checkable
class NotificationLog(Protocol):
    """The history of notifications a backbone carried, by offset (contract §3, recovery).

    Guarantees:

    - Offsets are consecutive integers: every notification the backbone carries, whatever
      its routing key (`notification.user.<id>`, `notification.broadcast`), takes the next
      one, so a missing offset always means a notification that was lost to retention.
    - The log holds at least every notification of the last `window_s` seconds (it may hold
      more, and may hold less only when a size bound cut it: replays then report the gap).
    - `last_offset` only grows, and every notification up to it has reached `on_event` on this
      instance (or was not bound here): a reader that starts now and reads up to it misses
      nothing that live delivery has not shown this instance already.
    - An entry the log holds that is not a usable notification (a message some publisher put
      there by mistake) is yielded by `replay` with an empty routing key, so the offsets a
      reader sees stay consecutive; callers skip it.
    """

    @property
    def last_offset(self) -> int:
        """The offset of the last notification delivered to this instance (0 before any)."""
        ...

    async def wait_offset(self, offset: int, timeout_s: float) -> bool:
        """Wait until `last_offset >= offset`; False if that does not happen in time.

        An offset above `last_offset` is either one another instance has delivered already
        (this one lags a little) or one from another history; a log that cannot lag (the
        embedded one) answers False at once.
        """
        ...

    def replay(self, since: int, until: int) -> AsyncGenerator[Event, None]:
        """Yield the held notifications with `since < offset <= until`, in offset order.

        Notifications lost to retention are skipped without notice: the caller detects the
        gap from the first offset it gets. Raises BackboneUnavailable when the log cannot be
        read now. Each call is one reader: callers coalesce concurrent replays.
        """
        ...


def history_of(backbone: object) -> NotificationLog | None:
    """The backbone's notification log (its `history` attribute), or None when it keeps none."""
    history = getattr(backbone, "history", None)
    return history if isinstance(history, NotificationLog) else None
