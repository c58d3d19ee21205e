#!/usr/bin/env python3
"""Measure a reconnect storm with recovery: N notifications clients resuming at once.

    .venv/bin/python scripts/recovery_storm.py [--clients 2000] [--users 500] [--missed 3]
        [--amqp-url amqp://guest:guest@127.0.0.1:5672/] [--concurrency 200]

1. Starts gateway A (a subprocess on a free loopback port; with --amqp-url, on exchange and
   stream names of this run).
2. Connects `--clients` notifications clients to A (user `u<i mod users>`), publishes one
   broadcast, and every client keeps the offset it saw.
3. The clients drop: with RabbitMQ, A is killed (the pod restarts); embedded, they just close.
4. `--missed` notifications per user are published (with RabbitMQ straight to the exchange, as
   a service does while no gateway runs; embedded, through A).
5. With RabbitMQ, gateway B starts now (the restarted pod: nothing of the missed notifications
   in its memory, and another replica than the one the clients knew).
6. The storm: every client reconnects at once (at most `--concurrency` handshakes in flight)
   with `since`, to B (or A, embedded). Each
   must get exactly its user's missed notifications, in order, then `resumed` with recovered
   true; then a broadcast reaches all of them live.
7. Prints the figures: time to the last `resumed`, latency from each client's handshake to its
   `resumed` (and from the start of the storm, queueing included), passes over the history,
   stream readers the gateway opened, replayed messages, and with RabbitMQ the most consumers
   the broker showed on the stream (sampled with rabbitmqctl).

Everything is bounded: loopback only, `--timeout` seconds at most, every process killed at the
end, the run's exchanges and stream deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.auth import Authenticator  # noqa: E402

SECRET = "storm-secret-" + "s" * 32
API_KEY = "storm-api-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gateway:
    """One gateway subprocess."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_base = f"ws://127.0.0.1:{self.port}"
        self.env = {
            # Not PYTHONASYNCIODEBUG: any non-empty value (even "0") turns debug mode on.
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith("GATEWAY_") and k != "PYTHONASYNCIODEBUG"
            },
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_JWT_SECRET": SECRET,
            "GATEWAY_API_KEYS": API_KEY,
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_INSTANCE_ID": f"storm-{name}-{uuid.uuid4().hex[:6]}",
            **env,
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "serve",
            cwd=REPO,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(30), aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"gateway {self.name} exited {self.proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.base}/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        async with http.get(f"{self.base}/metrics") as resp:
            text = await resp.text()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("realtime_gateway_") and " " in line:
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values


@dataclass
class Client:
    """One notifications client across the two connections of the run."""

    user: str
    token: str
    offset: int = 0
    frames: list[Any] = field(default_factory=list)
    resumed: dict[str, Any] | None = None
    latency_s: float = 0.0  # handshake start to `resumed`
    done_s: float = 0.0  # storm start to `resumed`
    ws: aiohttp.ClientWebSocketResponse | None = None


async def publish(http: aiohttp.ClientSession, gateway: Gateway, key: str, data: Any) -> str:
    async with http.post(
        f"{gateway.base}/api/publish",
        json={"routing_key": key, "data": data},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        if resp.status != 202:
            raise RuntimeError(f"publish {key}: {resp.status} {await resp.text()}")
        return str((await resp.json())["id"])


async def next_frame(ws: aiohttp.ClientWebSocketResponse, within: float) -> Any:
    msg = await ws.receive(timeout=within)
    if msg.type is not aiohttp.WSMsgType.TEXT:
        raise RuntimeError(f"unexpected {msg!r}")
    return msg.json()


class StreamConsumers:
    """Samples the broker's consumer count on the stream (rabbitmqctl) while the storm runs."""

    def __init__(self, stream: str, vhost: str) -> None:
        self.stream = stream
        self.vhost = vhost
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self.ctl = shutil.which("rabbitmqctl")

    def sample(self) -> int | None:
        assert self.ctl is not None
        done = subprocess.run(
            [self.ctl, "-q", "list_queues", "-p", self.vhost, "name", "consumers"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == self.stream and parts[1].isdigit():
                return int(parts[1])
        return None

    async def _run(self) -> None:
        while True:
            value = await asyncio.to_thread(self.sample)
            if value is not None:
                self.samples.append(value)
            await asyncio.sleep(0.05)

    def start(self) -> None:
        if self.ctl is not None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def run(args: argparse.Namespace) -> dict[str, Any]:
    auth = Authenticator(secret=SECRET)
    tag = uuid.uuid4().hex[:8]
    env: dict[str, str] = {"GATEWAY_MAX_CONNECTIONS_PER_USER": "1000"}
    stream = f"storm.notifications.{tag}"
    if args.amqp_url:
        env |= {
            "GATEWAY_AMQP_URL": args.amqp_url,
            "GATEWAY_EXCHANGE": f"storm.events.{tag}",
            "GATEWAY_UPSTREAM_EXCHANGE": f"storm.upstream.{tag}",
            "GATEWAY_RECOVERY_STREAM": stream,
        }
    first = Gateway("a", env)
    second = Gateway("b", env) if args.amqp_url else first
    gateways = [first]
    clients = [
        Client(user=f"u{i % args.users}", token=auth.mint(f"u{i % args.users}", ttl_s=3600))
        for i in range(args.clients)
    ]
    connector = aiohttp.TCPConnector(limit=0)
    gate = asyncio.Semaphore(args.concurrency)
    report: dict[str, Any] = {
        "backbone": "rabbitmq" if args.amqp_url else "embedded",
        "clients": args.clients,
        "users": args.users,
        "missed_per_user": args.missed,
        "concurrency": args.concurrency,
    }
    consumers = StreamConsumers(stream, _vhost(args.amqp_url)) if args.amqp_url else None
    try:
        for gateway in gateways:
            await gateway.start()
        async with aiohttp.ClientSession(connector=connector) as http:

            async def connect(client: Client, gateway: Gateway, since: int | None) -> None:
                params = {"access_token": client.token}
                if since is not None:
                    params["since"] = str(since)
                async with gate:
                    client.ws = await http.ws_connect(
                        f"{gateway.ws_base}/ws/notifications", params=params, heartbeat=None
                    )

            # 1-2: everyone connected to A, one broadcast tells each its offset.
            started = time.perf_counter()
            await asyncio.gather(*(connect(c, first, None) for c in clients))
            report["initial_connect_s"] = round(time.perf_counter() - started, 2)
            await publish(http, first, "notification.broadcast", {"hello": True})

            async def learn(client: Client) -> None:
                assert client.ws is not None
                frame = await next_frame(client.ws, 30)
                client.offset = int(frame["offset"])

            await asyncio.gather(*(learn(c) for c in clients))

            # 3: the clients drop (A is killed with RabbitMQ).
            if second is not first:
                await first.kill()
            await asyncio.gather(*(c.ws.close() for c in clients if c.ws is not None))

            # 4: what they miss.
            missed: dict[str, list[str]] = {}
            sem = asyncio.Semaphore(50)

            direct = await _Direct.open(args.amqp_url, env) if args.amqp_url else None

            async def miss(user: str, n: int) -> None:
                key = f"notification.user.{user}"
                async with sem:
                    if direct is not None:
                        ident = await direct.publish(key, {"n": n})
                    else:
                        ident = await publish(http, first, key, {"n": n})
                missed.setdefault(user, []).append(ident)

            for n in range(args.missed):  # in order per user
                await asyncio.gather(*(miss(f"u{u}", n) for u in range(args.users)))
            if direct is not None:
                await direct.close()
            if second is not first:
                gateways.append(second)
                await second.start()

            # 5: the storm.
            if consumers is not None:
                baseline = await asyncio.to_thread(consumers.sample)
                report["stream_consumers_before"] = baseline
                consumers.start()
            before = await second.metrics(http)

            async def resume(client: Client) -> None:
                params = {"access_token": client.token, "since": str(client.offset)}
                async with gate:
                    t0 = time.perf_counter()
                    client.ws = await http.ws_connect(
                        f"{second.ws_base}/ws/notifications", params=params, heartbeat=None
                    )
                    while True:
                        frame = await next_frame(client.ws, args.timeout)
                        if frame["event"] == "resumed":
                            client.resumed = frame["data"]
                            break
                        client.frames.append(frame)
                    client.latency_s = time.perf_counter() - t0
                client.done_s = time.perf_counter() - storm_start

            storm_start = time.perf_counter()
            async with asyncio.timeout(args.timeout):
                await asyncio.gather(*(resume(c) for c in clients))
            storm_s = time.perf_counter() - storm_start
            if consumers is not None:
                await consumers.stop()
            after = await second.metrics(http)

            # Then live traffic reaches everyone.
            live = await publish(http, second, "notification.broadcast", {"live": True})

            async def live_frame(client: Client) -> bool:
                assert client.ws is not None
                return bool((await next_frame(client.ws, 30))["id"] == live)

            live_ok = sum(await asyncio.gather(*(live_frame(c) for c in clients)))
            exact = sum(
                1
                for c in clients
                if c.resumed == {"recovered": True, "replayed": args.missed}
                and [f["id"] for f in c.frames] == missed[c.user]
            )
            latencies = sorted(c.latency_s for c in clients)
            done = sorted(c.done_s for c in clients)
            duration = "realtime_gateway_replay_duration_seconds"
            replay_s = _delta(after, before, f"{duration}_sum")
            replays = _delta(after, before, f"{duration}_count")
            report |= {
                "storm_s": round(storm_s, 2),
                "resumed": sum(1 for c in clients if c.resumed is not None),
                "exact_replays": exact,
                "live_after": live_ok,
                "latency_p50_s": round(statistics.median(latencies), 3),
                "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
                "latency_max_s": round(latencies[-1], 3),
                "since_storm_p50_s": round(statistics.median(done), 3),
                "server_replay_mean_s": round(replay_s / max(1.0, replays), 4),
                "history_passes": _delta(after, before, "realtime_gateway_history_reads_total"),
                "replayed_messages": _delta(
                    after, before, "realtime_gateway_replayed_messages_total"
                ),
                "stream_readers": _delta(after, before, "realtime_gateway_stream_readers_total"),
                "not_recovered": _delta(
                    after, before, 'realtime_gateway_replays_total{recovered="false"}'
                ),
            }
            if consumers is not None:
                report["stream_consumers_max"] = max(consumers.samples, default=None)
                report["stream_consumer_samples"] = consumers.samples
            await asyncio.gather(*(c.ws.close() for c in clients if c.ws is not None))
    finally:
        for gateway in gateways:
            await gateway.kill()
        if args.amqp_url:
            await _cleanup(args.amqp_url, tag, stream)
    return report


class _Direct:
    """A plain AMQP publisher, as a service publishing while no gateway runs."""

    def __init__(self, connection: Any, exchange: Any) -> None:
        self.connection = connection
        self.exchange = exchange

    @classmethod
    async def open(cls, url: str, env: dict[str, str]) -> _Direct:
        import aio_pika

        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            env["GATEWAY_EXCHANGE"], aio_pika.ExchangeType.TOPIC, durable=True
        )
        return cls(connection, exchange)

    async def publish(self, key: str, data: Any) -> str:
        import aio_pika

        ident = uuid.uuid4().hex
        body = json.dumps({"data": data}).encode()
        message = aio_pika.Message(body, content_type="application/json", message_id=ident)
        await self.exchange.publish(message, key)
        return ident

    async def close(self) -> None:
        await self.connection.close()


def _delta(after: dict[str, float], before: dict[str, float], prefix: str) -> float:
    total = 0.0
    for name, value in after.items():
        if name.startswith(prefix) and not name.endswith("_created"):
            total += value - before.get(name, 0.0)
    return total


def _vhost(url: str) -> str:
    match = re.match(r"amqps?://[^/]*/?(.*)", url)
    path = match.group(1).split("?")[0] if match else ""
    return path.replace("%2F", "/") or "/"


async def _cleanup(url: str, tag: str, stream: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(stream)
        for exchange in (f"storm.events.{tag}", f"storm.upstream.{tag}"):
            await channel.exchange_delete(exchange)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--missed", type=int, default=3)
    parser.add_argument("--amqp-url", default="")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
