"""The servers under test: the gateway and its two peers, each a pinned child process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import env

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
EXCHANGE = "bench.realtime.events"  # not the production name: never mixes with tests
UPSTREAM = "bench.realtime.upstream"
SECRET = "bench-secret-" + "b" * 40
SERVER_CPU = "0"
LOAD_CPU = "1"
START_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: str, cmd: list[str]) -> list[str]:
    """`cmd` pinned to one CPU with taskset."""
    return ["taskset", "-c", cpu, *cmd]


@dataclass
class ServerSpec:
    """How to start one kind of server and read its counters."""

    name: str
    label: str
    proto: str  # "native" or "sio" (what the load generator speaks)
    ready_path: str
    stats_path: str
    stats_regex: str  # one capture group per line to sum: the server's consumed messages


@dataclass
class Running:
    """A started server process."""

    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident set size now (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far (children excluded)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        """SIGINT, then SIGKILL after 5 s (servers drain for at most that long here)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


GATEWAY = ServerSpec(
    "gateway",
    "realtime-gateway",
    "native",
    "/readyz",
    "/metrics",
    r"^realtime_gateway_events_total\{[^}]*\} ([0-9.e+]+)$",
)
#: The same gateway process, with the load generator speaking Socket.IO to it (`/socket.io/`).
GATEWAY_SIO = ServerSpec(
    "gatewaysio",
    "realtime-gateway (Socket.IO)",
    "sio",
    "/readyz",
    "/metrics",
    r"^realtime_gateway_events_total\{[^}]*\} ([0-9.e+]+)$",
)
PYSIO = ServerSpec("pysio", "python-socketio", "sio", "/stats", "/stats", r'"events":\s*([0-9]+)')
NODESIO = ServerSpec(
    "nodesio", "Node socket.io", "sio", "/stats", "/stats", r'"events":\s*([0-9]+)'
)
BLASTER = ServerSpec("blaster", "bare Node ws blaster (S0)", "native", "/", "/", "")
SPECS = {s.name: s for s in (GATEWAY, GATEWAY_SIO, PYSIO, NODESIO, BLASTER)}


def start(spec: ServerSpec, logs: Path, extra_env: dict[str, str] | None = None) -> Running:
    """Start a server pinned to SERVER_CPU and wait until it answers its ready path."""
    port = free_port()
    extra = dict(extra_env or {})
    base = dict(os.environ)
    if spec.name in ("gateway", "gatewaysio"):
        cmd = [str(env.REPO / ".venv/bin/python"), "-m", "service", "serve"]
        if os.environ.get("BENCH_GATEWAY_TREE"):  # another checkout, e.g. for before/after
            base["PYTHONPATH"] = os.environ["BENCH_GATEWAY_TREE"]
        if os.environ.get("BENCH_PROFILE"):  # cProfile the gateway into this file
            cmd[1:1] = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
        base.update(
            GATEWAY_HOST="127.0.0.1",
            GATEWAY_PORT=str(port),
            GATEWAY_AMQP_URL=AMQP_URL,
            GATEWAY_EXCHANGE=EXCHANGE,
            GATEWAY_RECOVERY_STREAM="bench.realtime.notifications",
            GATEWAY_UPSTREAM_EXCHANGE=UPSTREAM,
            GATEWAY_JWT_SECRET=SECRET,
            GATEWAY_INSTANCE_ID=f"bench-{os.getpid()}-{port}",
            GATEWAY_LOG_LEVEL="warning",
            GATEWAY_DRAIN_SECONDS="0",
            GATEWAY_MAX_CONNECTIONS_PER_USER="1000",
        )
    elif spec.name == "pysio":
        cmd = [str(env.py_peer_python()), str(env.HERE / "peer_pysio.py")]
        cmd += [str(port), AMQP_URL, EXCHANGE, SECRET]
    elif spec.name == "blaster":
        per_write = extra.get("BLAST_FRAMES_PER_WRITE", "1")
        sockets = extra.get("BLAST_SOCKETS", "1")
        cmd = ["node", str(env.HERE / "blaster.js"), str(port), per_write, "60", sockets]
        base["NODE_PATH"] = str(env.node_dir() / "node_modules")
    else:
        cmd = ["node", str(env.HERE / "peer_nodesio.js"), str(port), AMQP_URL, EXCHANGE, SECRET]
        base["NODE_PATH"] = str(env.node_dir() / "node_modules")
    base.update(extra)
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{spec.name}-{port}.log"
    # `python -m` puts the working directory first on sys.path: run another checkout from it.
    cwd = os.environ.get("BENCH_GATEWAY_TREE") if spec.name in ("gateway", "gatewaysio") else None
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            pinned(SERVER_CPU, cmd), env=base, stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        )
    running = Running(spec, proc, port, log_path, extra)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.name} exited at start; see {log_path}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(running.url(spec.ready_path), timeout=1) as resp,
        ):
            if resp.status == 200:
                return running
        time.sleep(0.1)
    running.stop()
    raise RuntimeError(f"{spec.name} not ready within {START_TIMEOUT_S} s; see {log_path}")
