"""What every transport handler needs, stored once on the app under a typed key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from service.auth import Authenticator
from service.config import Config
from service.metrics import Metrics
from service.node import Node
from service.transports.wire import WireFramer


@dataclass(frozen=True, slots=True)
class Gateway:
    """The composed gateway: configuration, node, authenticator and metrics."""

    config: Config
    node: Node
    auth: Authenticator
    metrics: Metrics
    #: frames_out accumulators of the fast paths, by (namespace, transport) (transports.ws)
    frames_out_counters: dict[tuple[Any, str], Any] = field(default_factory=dict)
    ws_framer: WireFramer = field(default_factory=WireFramer)  # the fast path's frame memo


GATEWAY = web.AppKey("gateway", Gateway)


def error_response(status: int, code: str, message: str) -> web.Response:
    """The contract's HTTP error body: `{"error": {"code": ..., "message": ...}}`."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
