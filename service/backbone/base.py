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
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

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
