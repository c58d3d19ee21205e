"""Composition root: builds the aiohttp application from a Config."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from service.auth import MIN_SECRET_BYTES, Authenticator
from service.backbone.base import Backbone
from service.backbone.memory import MemoryBackbone
from service.bindings import BindingMode, Bindings
from service.config import Config
from service.demo_producer import DemoProducer
from service.errors import ConfigError
from service.metrics import Metrics
from service.monitor import LoopMonitor, refresh_gauges
from service.node import Limits, Node
from service.transports import demo_page, health, http_api, socketio, ws
from service.transports.context import GATEWAY, Gateway
from service.transports.heartbeat import HeartbeatWheel

SHUTDOWN_SETTLE_S = 3.0


def build_authenticator(config: Config) -> Authenticator:
    """The authenticator for the configured keys (ConfigError for an unusable key)."""
    jwks = ""
    if config.jwks_file:
        jwks = Path(config.jwks_file).read_text(encoding="utf-8")
    try:
        return Authenticator(
            secret=config.jwt_secret,
            public_key_pem=config.jwt_public_key,
            jwks_json=jwks,
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
        )
    except ValueError as exc:
        variable = "GATEWAY_JWKS_FILE" if jwks else "GATEWAY_JWT_PUBLIC_KEY"
        if config.jwt_secret and len(config.jwt_secret.encode()) < MIN_SECRET_BYTES:
            variable = "GATEWAY_JWT_SECRET"
        raise ConfigError(variable, str(exc)) from None


def build_backbone(config: Config, metrics: Metrics) -> Backbone:
    """The embedded backbone when no AMQP URL is set, else RabbitMQ (imported lazily)."""
    if not config.amqp_url:
        return MemoryBackbone(window_s=config.recovery_window_s)
    from service.backbone.amqp import AmqpBackbone  # the only aio_pika user, loaded on demand

    return AmqpBackbone.from_config(config, metrics)


def create_app(
    config: Config, *, backbone: Backbone | None = None, metrics: Metrics | None = None
) -> web.Application:
    """The gateway as an aiohttp application; `backbone` and `metrics` override the defaults."""
    metrics = metrics or Metrics()
    chosen = backbone if backbone is not None else build_backbone(config, metrics)
    bindings = Bindings(
        chosen,
        mode=BindingMode(config.bindings),
        user_bindings_max=config.user_bindings_max,
        grace_s=config.binding_grace_s,
        metrics=metrics,
    )
    auth = build_authenticator(config)
    node = Node(
        chosen,
        bindings,
        instance_id=config.instance_id,
        verify=auth.verify,
        limits=Limits(
            max_connections=config.max_connections,
            max_connections_per_user=config.max_connections_per_user,
            send_queue_bytes=config.send_queue_bytes,
            conflate=config.conflate,
        ),
        metrics=metrics,
    )
    app = web.Application()
    app[GATEWAY] = Gateway(
        config=config,
        node=node,
        auth=auth,
        metrics=metrics,
        heartbeats=HeartbeatWheel(config.heartbeat_s),
    )
    app.cleanup_ctx.append(_run_node)
    app.on_shutdown.append(_close_sockets)
    ws.add_routes(app)
    socketio.add_routes(app)
    health.add_routes(app)
    http_api.add_routes(app)
    if config.demo:
        demo_page.setup(app, DemoProducer(node))
    return app


async def _run_node(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    node = gateway.node
    await node.start()
    monitor = LoopMonitor(gateway.metrics, on_tick=lambda: refresh_gauges(node, gateway.metrics))
    monitor.start()
    yield
    await monitor.close()
    await node.close()


async def _close_sockets(app: web.Application) -> None:
    # A SIGTERM drain (cli.serve) has already paced the closes; whatever is left goes now.
    gateway = app[GATEWAY]
    await gateway.node.drain(0, settle_s=SHUTDOWN_SETTLE_S)
    # aiohttp no longer holds native sockets after their upgrade: drop what is left of them.
    gateway.heartbeats.close_all()
