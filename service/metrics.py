"""Every Prometheus metric of the gateway, defined in one place.

Per-connection metrics carry a `transport` label: `ws` (native) or `socketio`.

Metrics live in a registry owned by the app (no process-global state), so tests can build
many apps in one process and read exact values.

Multi-worker mode (GATEWAY_WORKERS > 1) uses prometheus-client's multiprocess mode: the
supervisor makes one fresh directory per run, every worker writes its values to memory-mapped
files there (`Metrics(multiprocess_dir=...)`), and whichever worker answers `/metrics` adds
them all up, so counters are totals over every worker, including workers that died and were
restarted. Gauges say how they combine (`multiprocess_mode`): open connections and bindings
are summed over live workers, `backbone_ready` is the minimum (1 only when every worker is
connected), `draining` the maximum. Outside that mode `multiprocess_mode` is ignored.

Label names avoid the target labels Prometheus attaches to every scraped series (`namespace`,
`pod`, `instance`, `job`...): the WebSocket namespace is `gateway_namespace`, so it never
collides with the Kubernetes namespace.
"""

from __future__ import annotations

import asyncio
import bisect
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import generate_latest

PREFIX = "realtime_gateway"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_RESTARTS = f"{PREFIX}_worker_restarts"  # the supervisor's counter (exposed + _total)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def enable_multiprocess(directory: str) -> None:
    """Make every metric created from now on in this process write to `directory`.

    prometheus-client reads the directory from the environment when it creates a value, so
    the variable is set here (for this process only; the supervisor never sets it).
    """
    if not os.path.isdir(directory):
        raise ValueError(f"metrics directory {directory!r} does not exist")
    os.environ[MULTIPROC_ENV] = directory
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class Metrics:
    """The gateway's metric objects; labels are documented per metric."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, multiprocess_dir: str | None = None
    ) -> None:
        if multiprocess_dir is not None:
            enable_multiprocess(multiprocess_dir)
        self.multiprocess_dir = multiprocess_dir
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            f"{PREFIX}_connections",
            "Open client connections.",
            ["gateway_namespace", "transport"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connects = Counter(
            f"{PREFIX}_connects_total",
            "Accepted connections.",
            ["gateway_namespace", "transport"],
            registry=r,
        )
        self.refusals = Counter(
            f"{PREFIX}_refusals_total",
            "Handshakes refused, by HTTP status (Socket.IO: the status in connect_error data).",
            ["gateway_namespace", "transport", "status"],
            registry=r,
        )
        self.disconnects = Counter(
            f"{PREFIX}_disconnects_total",
            "Closed connections, by close code.",
            ["gateway_namespace", "transport", "code"],
            registry=r,
        )
        self.frames_in = Counter(
            f"{PREFIX}_frames_in_total",
            "Frames (Socket.IO: events) received from clients.",
            ["gateway_namespace", "transport"],
            registry=r,
        )
        self.frames_out = Counter(
            f"{PREFIX}_frames_out_total",
            "Frames (Socket.IO: events) written to clients.",
            ["gateway_namespace", "transport"],
            registry=r,
        )
        self.frames_conflated = Counter(
            f"{PREFIX}_frames_conflated_total",
            "Dashboard frames replaced, while still waiting for a slow client, by a newer "
            "update of the same topic (GATEWAY_CONFLATE).",
            ["transport"],
            registry=r,
        )
        self.events = Counter(
            f"{PREFIX}_events_total",
            "Downstream events received from the backbone, by routing-key kind.",
            ["kind"],
            registry=r,
        )
        self.deliveries = Counter(
            f"{PREFIX}_deliveries_total",
            "Frames queued for a socket by the fan-out.",
            ["kind"],
            registry=r,
        )
        self.dropped = Counter(
            f"{PREFIX}_dropped_total",
            "Deliveries dropped, by reason (slow_consumer, unroutable).",
            ["reason"],
            registry=r,
        )
        self.slow_consumers = Counter(
            f"{PREFIX}_slow_consumer_closes_total",
            "Connections closed with 4008 because their outbound buffer overflowed.",
            registry=r,
        )
        self.client_errors = Counter(
            f"{PREFIX}_client_errors_total",
            "Error frames sent to clients, by error code.",
            ["code"],
            registry=r,
        )
        self.upstream = Counter(
            f"{PREFIX}_upstream_publishes_total",
            "Client events published upstream, by result (confirmed, unavailable).",
            ["result"],
            registry=r,
        )
        self.published = Counter(
            f"{PREFIX}_published_total",
            "Events published downstream by this gateway (API, CLI, client updates), by result.",
            ["result"],
            registry=r,
        )
        self.dead_lettered = Counter(
            f"{PREFIX}_dead_lettered_total",
            "Backbone messages rejected to the dead-letter exchange, by reason.",
            ["reason"],
            registry=r,
        )
        self.bindings = Gauge(
            f"{PREFIX}_bindings",
            "Routing-key bindings in place on the backbone (summed over workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.binding_operations = Counter(
            f"{PREFIX}_binding_operations_total",
            "Batched bind / unbind calls made to the backbone, by operation.",
            ["operation"],
            registry=r,
        )
        self.backbone_ready = Gauge(
            f"{PREFIX}_backbone_ready",
            "1 while the backbone is connected (with several workers: every worker).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.draining = Gauge(
            f"{PREFIX}_draining",
            "1 once SIGTERM started the drain.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.workers = Gauge(
            f"{PREFIX}_worker_processes",
            "Serving worker processes (1 per process, summed over live workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.backbone_reconnects = Counter(
            f"{PREFIX}_backbone_reconnects_total", "Backbone reconnections.", registry=r
        )
        self.delivery_lag = Histogram(
            f"{PREFIX}_delivery_lag_seconds",
            "Time from the event's timestamp (AMQP timestamp, or publish time) to the moment "
            "its frames are queued for the sockets.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            f"{PREFIX}_event_loop_lag_seconds",
            "How late the event loop woke a timer: time the loop spent busy elsewhere.",
            buckets=LAG_BUCKETS,
            registry=r,
        )

        # Recovery of missed notifications (service/recovery.py).
        self.replays = Counter(
            f"{PREFIX}_replays_total",
            "Resumes answered, by `recovered` (false: the window no longer reached `since`).",
            ["recovered"],
            registry=r,
        )
        self.replayed = Counter(
            f"{PREFIX}_replayed_messages_total",
            "Notifications replayed to resuming clients.",
            registry=r,
        )
        self.replay_duration = Histogram(
            f"{PREFIX}_replay_duration_seconds",
            "Time from a resume request to its `resumed` frame.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.history_reads = Counter(
            f"{PREFIX}_history_reads_total",
            "Passes over the notification history, each serving every waiting resume, by result.",
            ["result"],
            registry=r,
        )
        self.stream_readers = Counter(
            f"{PREFIX}_stream_readers_total",
            "Consumers opened on the RabbitMQ notification stream to replay older entries.",
            registry=r,
        )

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric (of every worker, in that mode)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        return collect_multiprocess(self.multiprocess_dir)


def collect_multiprocess(directory: str) -> bytes:
    """The exposition of the values every process wrote to `directory`, added up."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def forget_process(directory: str, pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay in the totals)."""
    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def worker_restarts_counter(directory: str) -> Counter:
    """The supervisor's one metric, written to the workers' multiprocess directory."""
    enable_multiprocess(directory)
    return Counter(
        WORKER_RESTARTS,
        "Worker processes restarted by the supervisor after they died (GATEWAY_WORKERS > 1).",
        registry=None,
    )


class BatchedHistogram:
    """Observations of a histogram, added to it at most once per loop iteration.

    `Histogram.observe` takes two locks and walks the buckets for each value, which on the
    delivery path cost more than fanning a notification out to a socket. This keeps the
    counts of one loop iteration in a plain list and adds them bucket by bucket afterwards:
    the same totals, a scrape later by at most one iteration. It relies on prometheus-client
    keeping a histogram's values in `_upper_bounds`, `_buckets` and `_sum` (checked by
    tests/unit/test_metrics_batching.py, which fails with a clear message if that changes).
    """

    __slots__ = ("_bounds", "_counts", "_histogram", "_scheduled", "_sum")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._bounds: list[float] = list(histogram._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._scheduled = False

    def observe(self, value: float) -> None:
        """Record one observation (from inside the event loop)."""
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Add what was recorded to the histogram now."""
        self._scheduled = False
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        buckets = self._histogram._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
        self._histogram._sum.inc(total)


class BatchedCounter:
    """A counter (or a labelled child) added to Prometheus once per loop iteration.

    The fast paths count frames per socket write; `Counter.inc` takes a lock, so the counts
    of one iteration are summed here and added once (`realtime_gateway_frames_out_total`).
    """

    __slots__ = ("_child", "_count", "_scheduled")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._count = 0
        self._scheduled = False

    def add(self, n: int) -> None:
        """Count `n` (from inside the event loop)."""
        self._count += n
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        self._scheduled = False
        count, self._count = self._count, 0
        self._child.inc(count)
