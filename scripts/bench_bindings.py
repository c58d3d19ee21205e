#!/usr/bin/env python3
"""Measure what bindings cost on the broker, and a connect storm in each binding mode.

Part 1, the broker's bind rate: bind N routing keys to one queue (one round trip per key, and
pipelined as the gateway does it: nowait binds closed by one synchronous bind), then unbind
them (AMQP 0-9-1 has no nowait unbind).

Part 2, the binding layer alone (service/bindings.py over AmqpBackbone, no sockets): N users'
keys wanted at once, time until every `need()` is met, and the time a reconnect takes to
re-declare the queue and re-apply those bindings.

Part 3, a connect storm: a gateway (a real `realtime-gateway serve` subprocess on a loopback
port, on the broker) and N notification users connecting at once, each with its own user id,
in each binding mode, plus the embedded backbone as a baseline without any broker. Reported:
time until every upgrade completed, per-connect latency percentiles, refusals, and the
bindings in place afterwards.

Bounded: loopback only, N users (default 5,000), every phase under a deadline. Each run uses
exchanges and an instance id of its own and deletes them afterwards.

Usage: .venv/bin/python scripts/bench_bindings.py [--users 5000] [--keys 5000]
       [--concurrency 100] [--repeat 1] [--modes embedded,wildcard,auto,dynamic]
       [--amqp-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

import aio_pika
import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.auth import Authenticator  # noqa: E402
from service.backbone.amqp import AmqpBackbone  # noqa: E402
from service.bindings import BindingMode, Bindings  # noqa: E402
from service.log import configure_logging  # noqa: E402

SECRET = "bench-secret-" + "x" * 32
PHASE_DEADLINE_S = 120.0


# --- part 1: the broker's bind rate ------------------------------------------------------------


async def bind_rate(url: str, keys: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    connection = await aio_pika.connect(url)
    results: dict[str, float] = {}
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(f"bench.{tag}", "topic", auto_delete=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        rpc = await channel.get_underlay_channel()

        names = [f"notification.user.sync-{i}" for i in range(keys)]
        begin = time.perf_counter()
        for key in names:
            await rpc.queue_bind(queue.name, exchange.name, key)
        results["bind, one round trip each"] = keys / (time.perf_counter() - begin)

        begin = time.perf_counter()
        for key in names:
            await rpc.queue_unbind(queue.name, exchange.name, key)
        results["unbind, one round trip each"] = keys / (time.perf_counter() - begin)
        await exchange.delete()

    # The gateway's own path: AmqpBackbone.bind (nowait binds, then one synchronous bind).
    backbone = AmqpBackbone(
        url,
        instance_id=f"bench-rate-{tag}",
        exchange=f"bench.events.{tag}",
        upstream_exchange=f"bench.upstream.{tag}",
        dead_letter_exchange=f"bench.dlx.{tag}",
        dead_letter_queue=f"bench.dead.{tag}",
    )
    await backbone.start(lambda event: None)
    try:
        names = [f"notification.user.pipe-{i}" for i in range(keys)]
        begin = time.perf_counter()
        for start in range(0, keys, 500):  # the batches service/bindings.py makes
            await backbone.bind(names[start : start + 500])
        results["bind, pipelined (AmqpBackbone)"] = keys / (time.perf_counter() - begin)
    finally:
        await backbone.close()
        await _delete(url, tag, "bench")
    return results


async def _delete(url: str, tag: str, prefix: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(f"{prefix}.dead.{tag}")
        for name in ("events", "upstream", "dlx"):
            await channel.exchange_delete(f"{prefix}.{name}.{tag}")


# --- part 2: the binding layer alone ------------------------------------------------------------


async def binding_layer(url: str, mode: str, users: int) -> dict[str, float]:
    """N users' keys wanted at once, no sockets: until every need() is met; then the time a
    reconnect takes to re-declare the queue and re-apply what is bound."""
    tag = uuid.uuid4().hex[:8]
    backbone = AmqpBackbone(
        url,
        instance_id=f"bench-layer-{tag}",
        exchange=f"bench.events.{tag}",
        upstream_exchange=f"bench.upstream.{tag}",
        dead_letter_exchange=f"bench.dlx.{tag}",
        dead_letter_queue=f"bench.dead.{tag}",
        backoff_initial_s=0.01,
    )
    await backbone.start(lambda event: None)
    bindings = Bindings(backbone, mode=BindingMode(mode))
    bindings.start()
    try:
        keys = [[f"notification.user.u{i}", "notification.broadcast"] for i in range(users)]
        begin = time.perf_counter()
        for pair in keys:
            bindings.add(pair)
        async with asyncio.timeout(PHASE_DEADLINE_S):
            await asyncio.gather(*(bindings.need(pair, PHASE_DEADLINE_S) for pair in keys))
        needed = time.perf_counter() - begin
        bound = len(backbone.bindings)
        link = backbone._link
        assert link is not None
        begin = time.perf_counter()
        await link.connection.close()
        await backbone.wait_ready(PHASE_DEADLINE_S)
        reapplied = time.perf_counter() - begin
    finally:
        await bindings.close()
        await backbone.close()
        await _delete(url, tag, "bench")
    return {"seconds": needed, "bindings": bound, "reconnect": reapplied}


# --- part 3: a connect storm -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_ready(base: str, within: float) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the gateway at {base} did not become ready")


async def _metric(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def storm(url: str, mode: str, users: int, concurrency: int) -> dict[str, object]:
    with tempfile.TemporaryFile() as log:  # the gateway's stderr, shown if it fails
        try:
            return await _storm(url, mode, users, concurrency, log)
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise


async def _storm(
    url: str, mode: str, users: int, concurrency: int, log: IO[bytes]
) -> dict[str, object]:
    tag = uuid.uuid4().hex[:8]
    port = _free_port()
    env = {
        **os.environ,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_JWT_SECRET": SECRET,
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_DRAIN_SECONDS": "0",
        "GATEWAY_INSTANCE_ID": f"bench-{mode}-{tag}",
        "GATEWAY_AMQP_URL": "" if mode == "embedded" else url,
        "GATEWAY_BINDINGS": "auto" if mode == "embedded" else mode,
        "GATEWAY_EXCHANGE": f"bench.events.{tag}",
        "GATEWAY_UPSTREAM_EXCHANGE": f"bench.upstream.{tag}",
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", env=env, cwd=ROOT, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    try:
        await _wait_ready(base, 30)
        auth = Authenticator(secret=SECRET)
        tokens = [auth.mint(f"user-{i}", ttl_s=3600) for i in range(users)]
        gate = asyncio.Semaphore(concurrency)
        latencies: list[float] = []
        failures: dict[str, int] = {}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def connect(token: str) -> None:
                async with gate:
                    begin = time.perf_counter()
                    try:
                        ws = await http.ws_connect(
                            f"{base}/ws/notifications",
                            headers={"Authorization": f"Bearer {token}"},
                            autoping=True,
                        )
                    except aiohttp.WSServerHandshakeError as exc:
                        failures[str(exc.status)] = failures.get(str(exc.status), 0) + 1
                        return
                    except (aiohttp.ClientError, OSError) as exc:
                        failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                        return
                    latencies.append(time.perf_counter() - begin)
                    sockets.append(ws)

            begin = time.perf_counter()
            async with asyncio.timeout(PHASE_DEADLINE_S):
                await asyncio.gather(*(connect(t) for t in tokens))
            elapsed = time.perf_counter() - begin
            bindings = await _metric(base, "realtime_gateway_bindings")
            for ws in sockets:
                await ws.close()
        latencies.sort()
        return {
            "mode": mode,
            "users": users,
            "accepted": len(latencies),
            "failed": failures,
            "seconds": elapsed,
            "per_second": len(latencies) / elapsed if elapsed else 0.0,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0,
            "bindings": int(bindings),
        }
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 30)
            except TimeoutError:
                server.kill()
        if mode != "embedded":
            await _delete(url, tag, "bench")


# --- main ------------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--layer-users", type=int, default=0, help="part 2 (default: --users)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="handshakes in flight (keep it below the listen backlog, 128, or SYN retries "
        "of a second or more dominate the figures)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="storms per mode (rounds)")
    parser.add_argument("--modes", default="embedded,wildcard,auto,dynamic")
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("GATEWAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    args = parser.parse_args()
    configure_logging("warning", "console")

    python = platform.python_version()
    print(f"# machine: {platform.node()}, {os.cpu_count()} CPUs, Python {python}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\n## broker bind rate ({args.keys} keys, one queue, loopback)\n")
    print("| operation | keys/s |\n| --- | ---: |")
    for name, rate in (await bind_rate(args.amqp_url, args.keys)).items():
        print(f"| {name} | {rate:,.0f} |")

    layer_users = args.layer_users or args.users
    print(f"\n## the binding layer alone: {layer_users} users' keys wanted at once\n")
    print("| mode | all bindings in place, s | bindings | reconnect + re-apply, s |")
    print("| --- | ---: | ---: | ---: |")
    for mode in ("wildcard", "auto", "dynamic"):
        layer = await binding_layer(args.amqp_url, mode, layer_users)
        print(
            f"| {mode} | {layer['seconds']:.2f} | {layer['bindings']:.0f} "
            f"| {layer['reconnect']:.2f} |",
            flush=True,
        )

    print(f"\n## {args.users} users connecting at once ({args.concurrency} handshakes in flight)\n")
    print(
        "| mode | round | accepted | failed | seconds | connects/s | p50 ms | p99 ms | bindings |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    modes = args.modes.split(",")
    for round_ in range(1, args.repeat + 1):
        # Rotate the order each round, so no mode always runs first (or on a warmer box).
        shift = (round_ - 1) % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            r = await storm(args.amqp_url, mode, args.users, args.concurrency)
            print(
                f"| {r['mode']} | {round_} | {r['accepted']} | {r['failed'] or 0} "
                f"| {r['seconds']:.2f} | {r['per_second']:,.0f} | {r['p50_ms']:.0f} "
                f"| {r['p99_ms']:.0f} | {r['bindings']} |",
                flush=True,
            )
    print(f"\n# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
