"""Dead-lettering of unusable notifications read from the notification stream.

A stream queue cannot dead-letter (RabbitMQ ignores `reject` on a stream), and with the stream
on, the instance queue no longer receives notifications at all: each crosses the broker link
once. So the gateway does what the broker did for the instance queue: it publishes the message
to the dead-letter exchange itself, with the original routing key, body and properties, and the
headers RabbitMQ puts on a message it dead-letters (`x-death`, `x-first-death-*`, reason
`rejected`), plus `x-gateway-reason` and `x-gateway-instance`. Operators read `realtime.dead`
as before. Publishes are confirmed, one task sends them, and at most `max_pending` wait: past
that (a flood of poison messages while the broker is slow) the newest are logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from datetime import UTC, datetime
from typing import Any

import aiormq.abc
import aiormq.exceptions
import structlog
from pamqp.commands import Basic

from service.backbone.errors import LINK_ERRORS
from service.backbone.tap import Delivery
from service.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

OFFSET_HEADER = "x-stream-offset"
CONFIRM_TIMEOUT_S = 5.0


class DeadLetterPublisher:
    """Publishes `Delivery`s to the dead-letter exchange from one task, in order."""

    def __init__(
        self, exchange: str, *, source_queue: str, instance: str, max_pending: int = 1000
    ) -> None:
        self.exchange = exchange
        self.source_queue = source_queue
        self.instance = instance
        self._pending: deque[tuple[Delivery, str]] = deque()
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.dropped = 0

    def put(self, delivery: Delivery, reason: str) -> None:
        """Queue one unusable message for the dead-letter exchange."""
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            log.error(
                "dead_letter_dropped",
                message_id=delivery.properties.message_id,
                routing_key=delivery.routing_key,
                pending=len(self._pending),
            )
            return
        self._pending.append((delivery, reason))
        self._wake.set()

    def start(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Publish on `channel` (publisher confirms on) until `stop()` or the link is lost."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(channel), name="amqp-dead-letters"
        )

    async def stop(self) -> None:
        """Stop publishing; what is still queued waits for the next `start()`."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self, channel: aiormq.abc.AbstractChannel) -> None:
        with contextlib.suppress(*LINK_ERRORS):
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    delivery, reason = self._pending[0]
                    try:
                        async with asyncio.timeout(CONFIRM_TIMEOUT_S):
                            await channel.basic_publish(
                                delivery.body,
                                exchange=self.exchange,
                                routing_key=delivery.routing_key,
                                properties=self._properties(delivery, reason),
                            )
                    except (TimeoutError, aiormq.exceptions.DeliveryError) as exc:
                        # Not confirmed (or refused): log it rather than publish it twice.
                        self.dropped += 1
                        log.error(
                            "dead_letter_unconfirmed",
                            message_id=delivery.properties.message_id,
                            routing_key=delivery.routing_key,
                            error=type(exc).__name__,
                        )
                    else:
                        self.published += 1
                    # Removed only now: a link lost during the publish retries it on the next.
                    self._pending.popleft()

    def _properties(self, delivery: Delivery, reason: str) -> Basic.Properties:
        source = delivery.properties
        headers: dict[str, Any] = {
            k: v for k, v in (source.headers or {}).items() if k != OFFSET_HEADER
        }
        exchange = delivery.exchange
        headers["x-death"] = [
            {
                "count": 1,
                "reason": "rejected",
                "queue": self.source_queue,
                "time": datetime.now(UTC).replace(microsecond=0),
                "exchange": exchange,
                "routing-keys": [delivery.routing_key],
            }
        ]
        headers["x-first-death-reason"] = "rejected"
        headers["x-first-death-queue"] = self.source_queue
        headers["x-first-death-exchange"] = exchange
        headers["x-gateway-reason"] = reason
        headers["x-gateway-instance"] = self.instance
        stamp = source.timestamp
        return Basic.Properties(
            content_type=source.content_type,
            content_encoding=source.content_encoding,
            headers=headers,
            delivery_mode=source.delivery_mode,
            priority=source.priority,
            correlation_id=source.correlation_id,
            reply_to=source.reply_to,
            message_id=source.message_id,
            timestamp=datetime.fromtimestamp(stamp, UTC) if stamp is not None else None,
            message_type=source.type,
            app_id=source.app_id,  # not user_id: the broker checks it against our login
        )
