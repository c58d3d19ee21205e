"""Scenarios S0-S7 and one measured run of a scenario against one server."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit import env, servers

SRC_ADDRS = [f"127.0.0.{i}" for i in range(2, 10)]  # spread over several source addresses
PAD = 100  # payload padding: frames of about 200 bytes, as in the issue


@dataclass(frozen=True)
class Scenario:
    """One scenario: the load generator's config, and which figure is the headline."""

    key: str
    title: str
    config: dict[str, Any]
    headline: str  # result field compared across servers
    higher_is_better: bool = True
    max_repeats: int = 99  # fewer repeats for the slow or generator-only scenarios
    server_env: tuple[tuple[str, str], ...] = ()


def scenarios(quick: bool, max_sockets: int) -> list[Scenario]:
    """S0-S7, at full size or at the --quick size (S7b is S7 without its slow clients)."""
    q = quick
    s1_steps = [200, 2000] if q else [500, 10_000, max_sockets]
    return [
        *(
            Scenario(
                key,
                f"load generator headroom: {500 if q else 5000:,} sockets read from a bare "
                f"Node ws server writing {per_write} frame(s) per write (no broker)",
                {
                    "phase": "sink",
                    "sockets": 500 if q else 5000,
                    "namespace": "dashboard",
                    "concurrency": 200,
                    "measure_s": 2 if q else 4,
                },
                "deliveries_per_s",
                max_repeats=1,
                server_env=(
                    ("BLAST_FRAMES_PER_WRITE", str(per_write)),
                    ("BLAST_SOCKETS", str(500 if q else 5000)),
                ),
            )
            for key, per_write in (("S0", 1), ("S0c", 16))
        ),
        Scenario(
            "S1",
            f"idle memory per socket ({', '.join(f'{n:,}' for n in s1_steps[1:])} sockets)",
            {
                "phase": "idle",
                "namespace": "dashboard",
                "steps": s1_steps,
                "sockets": s1_steps[-1],
                "concurrency": 200,
                "settle_ms": 1000 if q else 1500,
                "hold_s": 30,
            },
            "kib_per_socket",
            higher_is_better=False,
            max_repeats=2,
        ),
        Scenario(
            "S2",
            f"broadcast, {1000 if q else 5000:,} dashboard sockets, closed loop",
            {
                "phase": "broadcast",
                "namespace": "dashboard",
                "sockets": 1000 if q else 5000,
                "concurrency": 200,
                "key": "dashboard.sales",
                "event": "dashboard_update",
                "window": 8,
                "warmup_s": 1 if q else 1.5,
                "measure_s": 3 if q else 5,
            },
            "deliveries_per_s",
        ),
        Scenario(
            "S3",
            f"latency, {500 if q else 1000:,} sockets x 200 messages/s broadcast",
            {
                "phase": "rate",
                "namespace": "dashboard",
                "sockets": 500 if q else 1000,
                "concurrency": 200,
                "key": "dashboard.sales",
                "event": "dashboard_update",
                "rate": 200,
                "measure_s": 3 if q else 4,
                "grace_s": 3,
            },
            "p99_ms",
            higher_is_better=False,
        ),
        Scenario(
            "S4",
            f"targeted, {2000 if q else 10_000:,} sockets as {1000 if q else 5000:,} users, "
            f"{5000 if q else 20_000:,} notifications",
            {
                "phase": "targeted",
                "namespace": "notifications",
                "sockets": 2000 if q else 10_000,
                "users": 1000 if q else 5000,
                "concurrency": 200,
                "event": "notification_new",
                "window": 200,
                "max_messages": 5000 if q else 20_000,
                "warmup_s": 0.2,
                "measure_s": 60,
            },
            "deliveries_per_s",
        ),
        Scenario(
            "S4b",
            f"targeted burst, {2000 if q else 10_000:,} sockets as {1000 if q else 5000:,} "
            f"users, {5000 if q else 20_000:,} notifications published at once",
            {
                "phase": "targeted",
                "burst": True,
                "namespace": "notifications",
                "sockets": 2000 if q else 10_000,
                "users": 1000 if q else 5000,
                "concurrency": 200,
                "event": "notification_new",
                "max_messages": 5000 if q else 20_000,
                "grace_s": 60,
            },
            "deliveries_per_s",
        ),
        Scenario(
            "S5",
            f"ingest, {30_000 if q else 60_000:,} AMQP messages, no socket wants them",
            {
                "phase": "ingest",
                "key": "dashboard.nobody",
                "event": "dashboard_update",
                "messages": 30_000 if q else 60_000,
                "measure_budget_s": 15 if q else 40,
            },
            "consume_per_s",
            # Nothing is subscribed, so the gateway must bind everything to receive anything.
            server_env=(("GATEWAY_BINDINGS", "wildcard"),),
        ),
        *(
            Scenario(
                key,
                f"conflation: {fast:,} dashboard sockets that keep up"
                + (f" + {slow} reading at 1/10 of the rate" if slow else " (no slow ones)")
                + f", {rate} updates/s over 20 topics for {secs} s",
                {
                    "phase": "conflate",
                    "namespace": "dashboard",
                    "sockets": fast,
                    "slow_sockets": slow,
                    "slow_divisor": 10,
                    "topics": 20,
                    "concurrency": 200,
                    "event": "dashboard_update",
                    "rate": rate,
                    "measure_s": secs,
                    "grace_s": 3,
                    "drain_s": 30 if q else 60,
                },
                "p99_ms",
                higher_is_better=False,
                max_repeats=1 if q else 2,
            )
            for key, fast, slow, rate, secs in (
                ("S7", 100 if q else 1000, 10 if q else 50, 500, 15 if q else 30),
                ("S7b", 100 if q else 1000, 0, 500, 15 if q else 30),
            )
        ),
        Scenario(
            "S5n",
            f"ingest, {30_000 if q else 60_000:,} notifications for a user no socket holds "
            "(the gateway with its defaults: read from the notification stream)",
            {
                "phase": "ingest",
                "key": "notification.user.nobody",
                "event": "notification_new",
                "messages": 30_000 if q else 60_000,
                "measure_budget_s": 15 if q else 40,
            },
            "consume_per_s",
        ),
        Scenario(
            "S6",
            f"connect storm, {2000 if q else 10_000:,} sockets, 1,000 handshakes in flight",
            {
                "phase": "storm",
                "namespace": "dashboard",
                "sockets": 2000 if q else 10_000,
                "concurrency": 1000,
                "handshake_timeout_ms": 15_000,
            },
            "rate",
        ),
    ]


def run(spec: servers.ServerSpec, scenario: Scenario, logs: Path) -> dict[str, Any]:
    """Start a fresh server, run the load generator against it, return the figures."""
    server = servers.start(spec, logs, dict(scenario.server_env))
    try:
        time.sleep(0.5)
        return _drive(server, scenario)
    finally:
        server.stop()


def _drive(server: servers.Running, scenario: Scenario) -> dict[str, Any]:
    cfg = dict(scenario.config)
    cfg.update(
        proto=server.spec.proto,
        port=server.port,
        secret=servers.SECRET,
        src_addrs=SRC_ADDRS,
        amqp_url=servers.AMQP_URL,
        exchange=servers.EXCHANGE,
        pad=PAD,
        stats_url=server.url(server.spec.stats_path),
        stats_regex=server.spec.stats_regex,
        deadline_s=150,
    )
    node_env = dict(os.environ, NODE_PATH=str(env.node_dir() / "node_modules"))
    cmd = servers.pinned(servers.LOAD_CPU, ["node", str(env.HERE / "loadgen.js"), json.dumps(cfg)])
    proc = subprocess.Popen(
        cmd,
        env=node_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    marks: dict[str, tuple[float, float, int]] = {}  # name -> (wall, server cpu s, rss KiB)
    steps: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    deadline = time.monotonic() + cfg["deadline_s"] + 10
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if msg["type"] == "mark":
                sample = (time.monotonic(), server.cpu_s(), server.rss_kib())
                marks[msg["name"]] = sample
                if msg["name"] == "step":
                    steps.append({"open": msg["open"], "rss_kib": sample[2]})
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
            elif msg["type"] == "result":
                result = msg
            elif msg["type"] == "error":
                result = {"error": msg["message"]}
    finally:
        if proc.poll() is None:
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        err = proc.stderr.read() if proc.stderr else ""
    if not result:
        result = {"error": f"load generator gave no result: {err[-500:]}"}
    result.pop("type", None)
    if "start" in marks and "end" in marks:
        (w0, c0, _), (w1, c1, _) = marks["start"], marks["end"]
        result["server_cpu_pct"] = 100 * (c1 - c0) / (w1 - w0) if w1 > w0 else None
        # CPU cost per unit of work: far less sensitive than rates to a busy machine.
        work = result.get("window_deliveries") or result.get("consumed")
        if isinstance(work, int | float) and work > 0:
            result["server_us_per_unit"] = 1e6 * (c1 - c0) / work
    for name in ("start", "end", "drained"):
        if name in marks:  # server memory at the phase boundaries (S7: bounded or not)
            result[f"rss_mib_{name}"] = marks[name][2] / 1024
    if steps:
        result["steps"] = steps
        base = steps[0]
        result["kib_per_socket_at"] = {
            str(s["open"]): (s["rss_kib"] - base["rss_kib"]) / max(1, s["open"] - base["open"])
            for s in steps[1:]
        }
        last = steps[-1]
        result["kib_per_socket"] = result["kib_per_socket_at"].get(str(last["open"]))
        result["rss_mib_at_max"] = last["rss_kib"] / 1024
    if server.proc.poll() is not None:
        result["server_died"] = server.proc.returncode
    return result
