"""What every transport handler needs, stored once on the app under a typed key."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from service.auth import Authenticator
from service.config import Config
from service.metrics import BatchedCounter, Metrics
from service.model import Namespace
from service.node import Node
from service.transports.heartbeat import HeartbeatWheel
from service.transports.wire import WireFramer


@dataclass(frozen=True, slots=True)
class Gateway:
    """The composed gateway: configuration, node, authenticator, metrics, sockets."""

    config: Config
    node: Node
    auth: Authenticator
    metrics: Metrics
    heartbeats: HeartbeatWheel  # every native socket's heartbeat, and their registry
    #: frames_out accumulators of the fast paths, by (namespace, transport): see frames_out
    frames_out_counters: dict[tuple[Namespace, str], BatchedCounter] = field(default_factory=dict)
    ws_framer: WireFramer = field(default_factory=WireFramer)  # the fast path's frame memo

    def frames_out(self, namespace: Namespace, transport: str) -> BatchedCounter:
        """The frames_out accumulator of one namespace and transport (made on first use)."""
        counter = self.frames_out_counters.get((namespace, transport))
        if counter is None:
            counter = BatchedCounter(self.metrics.frames_out.labels(namespace, transport))
            self.frames_out_counters[(namespace, transport)] = counter
        return counter


GATEWAY = web.AppKey("gateway", Gateway)


def error_response(status: int, code: str, message: str) -> web.Response:
    """The contract's HTTP error body: `{"error": {"code": ..., "message": ...}}`."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
