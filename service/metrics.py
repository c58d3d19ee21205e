"""Every Prometheus metric of the gateway, defined in one place.

Metrics live in a registry owned by the app (no process-global state), so tests can build
many apps in one process and read exact values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

PREFIX = "realtime_gateway"


class Metrics:
    """The gateway's metric objects; labels are documented per metric."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            f"{PREFIX}_connections",
            "Open client connections.",
            ["namespace", "transport"],
            registry=r,
        )
        self.connects = Counter(
            f"{PREFIX}_connects_total",
            "Accepted connections.",
            ["namespace", "transport"],
            registry=r,
        )
        self.refusals = Counter(
            f"{PREFIX}_refusals_total",
            "Handshakes refused before the upgrade, by HTTP status.",
            ["namespace", "status"],
            registry=r,
        )
        self.disconnects = Counter(
            f"{PREFIX}_disconnects_total",
            "Closed connections, by close code.",
            ["namespace", "code"],
            registry=r,
        )
        self.frames_in = Counter(
            f"{PREFIX}_frames_in_total", "Frames received from clients.", ["namespace"], registry=r
        )
        self.frames_out = Counter(
            f"{PREFIX}_frames_out_total", "Frames written to clients.", ["namespace"], registry=r
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
            f"{PREFIX}_bindings", "Routing-key bindings in place on the backbone.", registry=r
        )
        self.backbone_ready = Gauge(
            f"{PREFIX}_backbone_ready", "1 while the backbone is connected.", registry=r
        )
        self.backbone_reconnects = Counter(
            f"{PREFIX}_backbone_reconnects_total", "Backbone reconnections.", registry=r
        )
        self.delivery_lag = Histogram(
            f"{PREFIX}_delivery_lag_seconds",
            "Time from the event's timestamp to its fan-out.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
