"""Sizing figures for docs/operations.md, measured on this machine, loopback only.

    scripts/bench [--sockets 2000] [--events 20] [--binds 2000]

1. Memory: RSS of one gateway process (embedded backbone) before and after opening
   `--sockets` idle notification sockets, each of its own user.
2. Connect rate: how fast those sockets were accepted (handshake + JWT + bindings).
3. Fan-out: `--events` broadcasts to every socket; deliveries per second until every client
   has every frame (the clients run in this process, so this is a floor, not a ceiling).
4. Broker bindings (needs RabbitMQ on 127.0.0.1:5672, skipped otherwise): how many
   queue bindings per second RabbitMQ applies, one at a time and 100 in flight.

Every load is bounded in count and time and goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import API_KEY, mint
from tests.process.logged_process import GatewayProcess, base_env, free_port

TIME_LIMIT_S = 120


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def gateway_figures(sockets: int, events: int) -> None:
    env = base_env(
        GATEWAY_PORT=str(free_port()),
        GATEWAY_DRAIN_SECONDS="0",
        GATEWAY_RATE_LIMIT="1000/1000",
    )
    gateway = await GatewayProcess.start(env)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            async with http.get(f"{gateway.url}/healthz") as resp:
                assert resp.status == 200
            base_rss = rss_bytes(gateway.proc.pid)
            tokens = [mint(f"bench-{i}", ttl_s=3600) for i in range(sockets)]
            started = time.perf_counter()
            clients: list[aiohttp.ClientWebSocketResponse] = []
            for batch in range(0, sockets, 100):
                clients += await asyncio.gather(
                    *(
                        http.ws_connect(f"{gateway.ws_url}/ws/notifications?access_token={t}")
                        for t in tokens[batch : batch + 100]
                    )
                )
            connect_s = time.perf_counter() - started
            await asyncio.sleep(1)  # let allocations settle before reading RSS
            per_socket = (rss_bytes(gateway.proc.pid) - base_rss) / sockets
            print(f"sockets: {sockets} opened in {connect_s:.2f} s ({sockets / connect_s:.0f}/s)")
            print(f"memory: {base_rss / 2**20:.1f} MiB idle, {per_socket / 1024:.1f} KiB/socket")

            async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
                for _ in range(events):
                    msg = await ws.receive()
                    assert msg.type is aiohttp.WSMsgType.TEXT, msg

            readers = [asyncio.create_task(drain(ws)) for ws in clients]
            started = time.perf_counter()
            for n in range(events):
                async with http.post(
                    f"{gateway.url}/api/publish",
                    json={
                        "routing_key": "notification.broadcast",
                        "data": {"n": n, "pad": "x" * 200},
                    },
                    headers={"Authorization": f"Bearer {API_KEY}"},
                ) as resp:
                    assert resp.status == 202
            await asyncio.gather(*readers)
            fanout_s = time.perf_counter() - started
            total = sockets * events
            print(
                f"fan-out: {events} broadcasts x {sockets} sockets = {total} frames "
                f"in {fanout_s:.2f} s ({total / fanout_s:.0f} deliveries/s end to end)"
            )
            for ws in clients:
                await ws.close()
        finally:
            gateway.signal(signal.SIGTERM)
            await gateway.wait(within=15)
            await gateway.kill()


async def binding_figures(count: int) -> None:
    try:
        import aio_pika
    except ImportError:
        print("bindings: aio-pika missing, skipped")
        return
    try:
        connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/", timeout=5)
    except Exception as exc:  # the broker is optional for this script
        print(f"bindings: no RabbitMQ on 127.0.0.1:5672 ({exc!r}), skipped")
        return
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            f"bench.{uuid.uuid4().hex}", aio_pika.ExchangeType.TOPIC, auto_delete=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        keys = [f"notification.user.{i}" for i in range(count)]
        started = time.perf_counter()
        for key in keys[: count // 2]:
            await queue.bind(exchange, key)
        serial = (count // 2) / (time.perf_counter() - started)
        semaphore = asyncio.Semaphore(100)

        async def bind(key: str) -> None:
            async with semaphore:
                await queue.bind(exchange, key)

        started = time.perf_counter()
        await asyncio.gather(*(bind(k) for k in keys[count // 2 :]))
        pipelined = (count - count // 2) / (time.perf_counter() - started)
        print(f"bindings: {serial:.0f}/s one at a time, {pipelined:.0f}/s with 100 in flight")
        await exchange.delete()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--binds", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    async with asyncio.timeout(TIME_LIMIT_S):
        await gateway_figures(min(args.sockets, 5000), min(args.events, 200))
        await binding_figures(min(args.binds, 10000))


if __name__ == "__main__":
    asyncio.run(main())
