"""Delivery to many clients: native WebSocket vs Socket.IO (WebSocket, and polling-first).

    .venv/bin/python -m tests.socketio.bench [CLIENTS] [EVENTS]

Starts a gateway (embedded backbone) on a free loopback port, opens CLIENTS sockets of one
kind in one Node process (tests/socketio/load.mjs), publishes EVENTS broadcasts of ~1 KB at
200/s and prints what the clients measured, with the gateway process's CPU time per delivery
(the clients run on the same cores, so latencies include their share). Needs the
socket.io-client the tests install (run the Socket.IO tests once). Bounded: loopback only,
stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import orjson
from aiohttp import web

from service.app import create_app
from service.transports.context import GATEWAY
from tests.conftest import make_config, mint

HERE = Path(__file__).parent
MODULES = HERE.parent.parent / ".cache" / "node" / "socketio" / "node_modules"
RATE_PER_S = 200


async def run(kind: str, clients: int, events: int) -> dict[str, object]:
    app = create_app(make_config(max_connections_per_user=clients))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    node = await asyncio.create_subprocess_exec(
        "node",
        str(HERE / "load.mjs"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "SIO_NODE_MODULES": str(MODULES)},
    )
    assert node.stdin is not None
    assert node.stdout is not None
    tokens = [mint(f"u{i}") for i in range(clients)]
    config = {"url": f"http://127.0.0.1:{port}", "kind": kind, "tokens": tokens, "expect": events}
    node.stdin.write(orjson.dumps(config) + b"\n")
    await node.stdin.drain()
    try:
        async with asyncio.timeout(120):
            ready = orjson.loads(await node.stdout.readline())
            assert "ready" in ready, ready
            gateway = app[GATEWAY].node
            cpu = time.process_time()
            pad = "x" * 1000
            for n in range(events):
                await gateway.publish("notification.broadcast", {"n": n, "pad": pad})
                await asyncio.sleep(1 / RATE_PER_S)
            result: dict[str, object] = orjson.loads(await node.stdout.readline())
            used = time.process_time() - cpu
            result["server_cpu_us_per_delivery"] = round(used / (clients * events) * 1e6, 1)
    finally:
        if node.returncode is None:
            node.kill()
        await node.wait()
        await runner.cleanup()
    return result


async def main() -> None:
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    for kind in ("native", "sio-ws", "sio-poll"):
        result = await run(kind, clients, events)
        print(f"{kind:9} clients={clients} events={events} {orjson.dumps(result).decode()}")


if __name__ == "__main__":
    asyncio.run(main())
