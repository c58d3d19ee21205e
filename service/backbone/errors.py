"""How the RabbitMQ modules tell a lost or refused broker link from their own bugs."""

from __future__ import annotations

from aio_pika.exceptions import CONNECTION_EXCEPTIONS

#: Errors that mean "the broker link is gone or refused us", as aio-pika classifies them.
LINK_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_EXCEPTIONS, TimeoutError)
