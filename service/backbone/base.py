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
  `bind` may raise BackboneUnavailable too (the caller retries: service/bindings.py does),
  `unbind` never fails for that reason, and every binding in place is back after a reconnect.
- `publish_upstream` returns only once the event is safely taken (broker confirm).
- Notification events (`notification.*` keys) carry an `offset`, growing with every
  notification the backbone carries, the same on every instance; None where unsupported.

A backbone that keeps the notifications it carried for a while, so that reconnecting clients
can recover what they missed (contract §3), offers them as its `history` attribute, a
`NotificationHistory` (None or absent: no recovery; see `history_of`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
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
class NotificationHistory(Protocol):
    """The history of notifications a backbone carried, by offset (contract §3, recovery).

    Guarantees:

    - Offsets grow with every notification the backbone carries, whatever its routing key
      (`notification.user.<id>`, `notification.broadcast`), the same on every instance. They
      need not be consecutive (a RabbitMQ stream spends some on its own bookkeeping).
    - The log holds at least every notification of the last `window_s` seconds (it may hold
      more, and less only when a size bound cut it: `replay` then says so by its floor).
    - `last_offset` only grows, and every notification up to it has reached `on_event` on this
      instance (or was not bound here): a reader that starts now and reads up to it misses
      nothing that live delivery has not shown this instance already.
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

    async def replay(self, since: int, until: int, sink: Callable[[Event], None]) -> int:
        """Pass every held notification with `since < offset <= until` to `sink`, in order.

        Returns the floor of what was read: every notification with an offset above it (up to
        `until`) was passed. A floor at or below `since` means nothing after `since` was lost;
        above it, retention took some (a client whose `since` is at or above the floor still
        missed nothing). Raises BackboneUnavailable when the log cannot be read now. Each call
        is one reader: callers coalesce concurrent replays.
        """
        ...


def history_of(backbone: object) -> NotificationHistory | None:
    """The backbone's notification log (its `history` attribute), or None when it keeps none."""
    history = getattr(backbone, "history", None)
    return history if isinstance(history, NotificationHistory) else None
