"""aiohttp access log lines, with tokens redacted from query strings."""

from __future__ import annotations

import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from service.log import redact

log = structlog.get_logger("service.access")


class RedactingAccessLogger(AbstractAccessLogger):
    """One structured line per request; `access_token` and friends never reach the log."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        log.info(
            "request",
            method=request.method,
            path=redact(request.path_qs),
            status=response.status,
            duration_ms=round(time * 1000, 2),
            remote=request.remote,
        )
