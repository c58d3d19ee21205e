"""One gateway process: the aiohttp app on its port until SIGTERM/SIGINT, then the drain.

Run by `realtime-gateway serve` (the only process) and by each worker of the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from service.config import Config

if TYPE_CHECKING:
    from service.metrics import Metrics

log = structlog.get_logger("service.server")
#: Pending connections the kernel queues for the listener (aiohttp's default is 128): a
#: reconnect storm of thousands of sockets otherwise overflows it and clients wait for SYN
#: retransmits (1 s, 3 s...). Linux caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096


def serve_one(config: Config, *, reuse_port: bool = False, metrics: Metrics | None = None) -> int:
    """Run one gateway process (the only one, or one worker) until SIGTERM/SIGINT."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # Every log line of this process names its instance (contract §1).
    structlog.contextvars.bind_contextvars(instance=config.instance_id)
    return asyncio.run(_serve(config, reuse_port=reuse_port, metrics=metrics))


async def _serve(
    config: Config, *, reuse_port: bool = False, metrics: Metrics | None = None
) -> int:
    from aiohttp import web

    from service.app import create_app
    from service.gcpolicy import GcPolicy
    from service.transports.access_log import RedactingAccessLogger
    from service.transports.context import GATEWAY

    app = create_app(config, metrics=metrics)
    runner = web.AppRunner(
        app,
        access_log_class=RedactingAccessLogger,
        shutdown_timeout=config.drain_s + 5,
        handle_signals=False,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            config.host,
            config.port,
            reuse_port=reuse_port or None,
            backlog=LISTEN_BACKLOG,
        )
        await site.start()
        node = app[GATEWAY].node
        gc_policy = GcPolicy(lambda: len(node.hub))
        gc_policy.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            # A plain handler, not loop.add_signal_handler: Python runs it before any further
            # bytecode, so a /readyz already read from its socket answers 503 too, where a
            # loop callback could come after it. begin_drain only flips a flag (and leaves
            # its log line to the loop); this wakes the loop.
            node.begin_drain()
            loop.call_soon_threadsafe(stop.set)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            # Logged once the handlers are in place: a SIGTERM from then on drains.
            log.info(
                "listening",
                host=config.host,
                port=_bound_port(runner, config.port),
                backbone="amqp" if config.amqp_url else "embedded",
            )
            await stop.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        # The listener stays open while draining: new upgrades get 503, /readyz says 503.
        log.info("sigterm", drain_s=config.drain_s, connections=len(node.hub))
        await node.drain(config.drain_s)
        await gc_policy.close()
    finally:
        await runner.cleanup()
    log.info("stopped")
    return 0


def _bound_port(runner: Any, configured: int) -> int:
    """The port actually listened on (differs from the configured one for port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured
