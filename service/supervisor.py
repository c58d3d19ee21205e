"""`GATEWAY_WORKERS=N`: N worker processes serving one port, kept alive by a supervisor.

Each worker is a full gateway (`server.serve_one`) in its own process, started with the `spawn`
method (a fresh interpreter: no event loop, lock or socket inherited by fork). Every worker
binds the same address with SO_REUSEPORT, so the kernel spreads incoming connections over
them; none of them is special. Each has its own instance id (`<GATEWAY_INSTANCE_ID>-w<i>`,
plus `-r<n>` after its n-th restart) and so its own AMQP queue: the broker fans every event
out to each worker that bound its key, exactly as it does across replicas.

The supervisor itself serves nothing. It

- restarts a worker that dies (logged as `worker_exited`, then `worker_started`), after a
  backoff that doubles while workers keep dying young (0.5 s up to 30 s);
- on SIGTERM / SIGINT forwards SIGTERM to every worker, which drains as a single process
  would (its readiness turns 503, sockets close with 1001 over GATEWAY_DRAIN_SECONDS), waits
  for them and exits 0 when every worker did;
- owns the per-run Prometheus multiprocess directory (see `service.metrics`): created empty
  at start, so totals never include a previous run, and removed at exit. A dead worker's live
  gauges are dropped from it; its counters stay in the totals.

Workers watch the supervisor: if it disappears without a word (SIGKILL), they drain and exit
instead of serving on as orphans.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import structlog

from service.config import INSTANCE_ID_MAX, Config
from service.errors import ConfigError
from service.metrics import forget_process, worker_restarts_counter

log = structlog.get_logger("service.supervisor")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0  # a worker that lived this long resets the backoff
STOP_GRACE_S = 15.0  # beyond the drain window, before stragglers are killed
TICK_S = 1.0
EXIT_CONFIG = 2  # a worker's exit status for a configuration it refuses (as `serve`)


def worker_instance_id(base: str, index: int, restarts: int) -> str:
    """`<base>-w<index>` (`-r<restarts>` after a restart), kept within the id length limit."""
    suffix = f"-w{index}" + (f"-r{restarts}" if restarts else "")
    return base[: INSTANCE_ID_MAX - len(suffix)] + suffix


def restart_delay(failures: int) -> float:
    """Seconds before a restart: none after a worker that lived, then 0.5, 1, 2... up to 30."""
    if failures <= 0:
        return 0.0
    return float(min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(failures - 1, 16)))


def reserve_port(host: str, port: int) -> socket.socket | None:
    """For port 0, pick the port every worker will share; the socket keeps it reserved.

    The reserving socket is bound with SO_REUSEPORT but never listens, so the kernel never
    hands it a connection.
    """
    if port != 0:
        return None
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


@dataclasses.dataclass(slots=True)
class Worker:
    """One worker slot: its current process and its history."""

    index: int
    process: BaseProcess | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0  # consecutive short-lived runs, for the backoff
    start_after: float = 0.0  # monotonic time of the next (re)start


class Supervisor:
    """Runs and supervises the workers; see the module docstring."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.workers = [Worker(index) for index in range(1, config.workers + 1)]
        self._context = multiprocessing.get_context("spawn")
        self._stopping = False
        self._status = 0
        self._metrics_dir = ""
        self._port = config.port

    def run(self) -> int:
        """Start the workers and supervise them until a signal; the exit status.

        Raises ConfigError, before any worker starts, for a configuration the app refuses.
        """
        from service.app import build_authenticator

        build_authenticator(self.config)  # a bad key fails here once, not in every worker
        wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        reserved = reserve_port(self.config.host, self.config.port)
        self._metrics_dir = tempfile.mkdtemp(prefix="realtime-gateway-metrics-")
        try:
            if reserved is not None:
                self._port = int(reserved.getsockname()[1])
            restarts = worker_restarts_counter(self._metrics_dir)
            log.info(
                "supervisor_started",
                workers=len(self.workers),
                host=self.config.host,
                port=self._port,
                metrics_dir=self._metrics_dir,
            )
            # The kernel spreads connections over the workers, not Engine.IO sessions: one
            # long-polling session's requests can reach a worker that does not hold it.
            log.warning(
                "socketio_polling_needs_one_worker",
                workers=len(self.workers),
                advice="Socket.IO clients on HTTP long-polling (the default options) need "
                "GATEWAY_WORKERS=1; WebSocket-only clients and native sockets are unaffected",
            )
            while not self._stopping:
                now = time.monotonic()
                for worker in self.workers:
                    if worker.process is None and now >= worker.start_after:
                        if worker.started_at:
                            worker.restarts += 1
                            restarts.inc()
                        self._start(worker)
                self._wait(wake_r)
                self._reap()
            return self._stop(wake_r)
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
            if reserved is not None:
                reserved.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, worker: Worker) -> None:
        instance_id = worker_instance_id(self.config.instance_id, worker.index, worker.restarts)
        config = dataclasses.replace(
            self.config, workers=1, port=self._port, instance_id=instance_id
        )
        process = self._context.Process(
            target=run_worker,
            args=(config, self._metrics_dir),
            name=f"gateway-worker-{worker.index}",
        )
        process.start()
        worker.process = process
        worker.started_at = time.monotonic()
        log.info("worker_started", worker=worker.index, pid=process.pid, instance=instance_id)

    def _wait(self, wake: socket.socket) -> None:
        """Block until a worker exits, a signal arrives, or a restart is due."""
        sentinels: list[object] = [w.process.sentinel for w in self.workers if w.process]
        pending = [w.start_after for w in self.workers if w.process is None]
        timeout = TICK_S
        if pending:
            timeout = max(0.0, min(min(pending) - time.monotonic(), TICK_S))
        ready = multiprocessing.connection.wait([*sentinels, wake], timeout)  # type: ignore[list-item]
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                wake.recv(4096)

    def _reap(self) -> None:
        """Notice workers that exited; schedule their restart unless stopping."""
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is None or process.is_alive():
                continue
            process.join()
            lived = now - worker.started_at
            worker.process = None
            if process.pid is not None:
                forget_process(self._metrics_dir, process.pid)
            if self._stopping:
                continue
            if process.exitcode == EXIT_CONFIG:
                # The worker refused its configuration: restarting cannot help.
                log.error("worker_config_error", worker=worker.index, pid=process.pid)
                self._stopping = True
                self._status = EXIT_CONFIG
                continue
            worker.failures = 0 if lived >= STABLE_AFTER_S else worker.failures + 1
            delay = restart_delay(worker.failures)
            worker.start_after = now + delay
            log.error(
                "worker_exited",
                worker=worker.index,
                pid=process.pid,
                exitcode=process.exitcode,
                lived_s=round(lived, 2),
                restart_in_s=delay,
            )

    def _stop(self, wake: socket.socket) -> int:
        """Forward SIGTERM, wait for the drains, kill stragglers; 0 when every worker exited 0."""
        running = [w.process for w in self.workers if w.process is not None]
        log.info("supervisor_stopping", workers=len(running), drain_s=self.config.drain_s)
        for process in running:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_s + STOP_GRACE_S
        status = self._status
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("worker_killed", pid=process.pid, reason="did not drain in time")
                process.kill()
                process.join()
            if process.exitcode != 0 and not status:
                status = 1
        log.info("supervisor_stopped", status=status)
        return status


def run_worker(config: Config, metrics_dir: str) -> None:
    """Entry point of a worker process (spawned): one gateway on the shared port."""
    from service.log import configure_logging
    from service.metrics import Metrics
    from service.server import serve_one

    configure_logging(config.log_level, config.log_format)
    _exit_with_parent()
    try:
        status = serve_one(config, reuse_port=True, metrics=Metrics(multiprocess_dir=metrics_dir))
    except ConfigError as exc:
        print(f"realtime-gateway worker: configuration error: {exc}", file=sys.stderr)
        status = EXIT_CONFIG
    raise SystemExit(status)


def _exit_with_parent() -> None:
    """Drain and exit (via our own SIGTERM handler) if the supervisor disappears."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
