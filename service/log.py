"""Logging: the one `structlog.configure()` call, and redaction of tokens.

Every line is one JSON object (or a colored console line with GATEWAY_LOG_FORMAT=console).
Standard-library loggers (aiohttp, aio_pika) go through the same processors. Query strings
and bearer tokens are redacted wherever they appear in a logged value.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor

_SECRET_QUERY = re.compile(r"((?:access_token|token|api_key|since_token)=)[^&\s\"']+", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """Remove tokens from a string: secret query parameters, bearer tokens, bare JWTs."""
    text = _SECRET_QUERY.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _JWT.sub(REDACTED, text)


def redact_processor(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact every string value of the event."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
    ]


def _renderer(fmt: str) -> Processor:
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    return structlog.processors.JSONRenderer(serializer=_dumps)


def _dumps(value: MutableMapping[str, Any], **_: Any) -> str:
    return orjson.dumps(value, default=repr).decode()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog and the standard library once, for the whole process."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared = _shared_processors()
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _renderer(fmt),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aio-pika and aiormq are chatty at info during reconnects, python-socketio and
    # Engine.IO log every packet at info; their warnings still show.
    for noisy in ("aiormq", "aio_pika", "socketio", "engineio"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
