"""`/healthz`, `/readyz` and `/metrics`."""

from __future__ import annotations

from aiohttp import web

from service.monitor import refresh_gauges
from service.transports.context import GATEWAY

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when the backbone is connected and the process is not draining, else 503."""
    node = request.app[GATEWAY].node
    if node.ready:
        return web.json_response({"status": "ready"})
    return web.json_response(
        {"status": "draining" if node.draining else "unavailable", "reason": node.not_ready_reason},
        status=503,
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    gateway = request.app[GATEWAY]
    refresh_gauges(gateway.node, gateway.metrics)
    body = gateway.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    """Mount the health and metrics endpoints."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
