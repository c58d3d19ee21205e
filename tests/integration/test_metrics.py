"""`/metrics` after real traffic: the counters say exactly what the test did."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.metrics import Metrics, collect_multiprocess, forget_process
from service.monitor import LoopMonitor
from tests.conftest import GatewayFactory, receive, request
from tests.metricsutil import parse, scrape_until, total, value

P = "realtime_gateway"
# Labels Prometheus (and the Prometheus Operator) attach to every scraped series: a metric
# label of the same name would be renamed `exported_<name>` at scrape time.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "service", "container", "endpoint"}


async def test_counters_match_the_traffic(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(send_queue_bytes=4096)

    async def scrape() -> str:
        resp = await gw.client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await resp.text()

    alice = await gw.connect("notifications", user="alice")
    bob = await gw.connect("notifications", user="bob")
    board = await gw.connect("dashboard", user="carol")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.connect("notifications", token="not-a-jwt")
    assert refused.value.status == 401

    samples = await scrape_until(
        scrape, {f"{P}_connections{{gateway_namespace=notifications}}": 2, f"{P}_connections": 3}
    )
    assert value(samples, f"{P}_backbone_ready") == 1
    assert value(samples, f"{P}_bindings") >= 4  # 2 users, broadcast, dashboard.#

    # 3 deliveries: one to alice, a broadcast to alice and bob.
    await gw.publish("notification.user.alice", {"n": 1})
    await gw.publish("notification.broadcast", {"n": 2})
    assert (await receive(alice))["data"] == {"n": 1}
    assert (await receive(alice))["data"] == {"n": 2}
    assert (await receive(bob))["data"] == {"n": 2}
    # One slow-consumer close: a frame larger than bob's whole outbound buffer.
    await gw.publish("notification.user.bob", {"blob": "x" * 8192})
    closed = await bob.receive(timeout=5)
    assert closed.type is aiohttp.WSMsgType.CLOSE
    assert closed.data == 4008
    # One client error and one upstream event.
    answer = await request(alice, "no_such_event", {}, ack=7)
    assert answer["error"]["code"] == "unknown_event"
    answer = await request(board, "dashboard_refresh", {}, ack=8)
    assert answer["event"] == "ack"

    await alice.close()
    await board.close()
    samples = await scrape_until(
        scrape,
        {
            f"{P}_connections": 0,
            f"{P}_connects_total": 3,
            f"{P}_disconnects_total{{code=4008}}": 1,
            f"{P}_disconnects_total{{code=1000}}": 2,
            # alice: 2 events + error; bob: 1 event; board: the ack
            f"{P}_frames_out_total": 5,
        },
    )
    assert total(samples, f"{P}_deliveries_total") == 3
    assert value(samples, f"{P}_deliveries_total", kind="user") == 1
    assert value(samples, f"{P}_deliveries_total", kind="broadcast") == 2
    assert value(samples, f"{P}_dropped_total", reason="slow_consumer") == 1
    assert value(samples, f"{P}_slow_consumer_closes_total") == 1
    assert value(samples, f"{P}_events_total", kind="user") == 2
    assert (
        value(
            samples,
            f"{P}_refusals_total",
            gateway_namespace="notifications",
            transport="ws",
            status="401",
        )
        == 1
    )
    assert value(samples, f"{P}_client_errors_total", code="unknown_event") == 1
    assert value(samples, f"{P}_upstream_publishes_total", result="confirmed") == 1
    assert value(samples, f"{P}_published_total", result="ok") == 3
    assert (
        value(samples, f"{P}_frames_in_total", gateway_namespace="notifications", transport="ws")
        == 1
    )
    assert (
        value(samples, f"{P}_frames_in_total", gateway_namespace="dashboard", transport="ws") == 1
    )
    assert value(samples, f"{P}_delivery_lag_seconds_count") == 3
    assert value(samples, f"{P}_binding_operations_total", operation="bind") >= 1
    assert value(samples, f"{P}_draining") == 0


async def test_metric_names_follow_prometheus_conventions() -> None:
    metrics = Metrics()
    for family in metrics.registry.collect():
        assert family.name.startswith(f"{P}_"), family.name
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the client appends it to samples
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        assert family.documentation, family.name
    for collector in metrics.registry._collector_to_names:
        labels = set(getattr(collector, "_labelnames", ()))
        assert not labels & TARGET_LABELS, (collector, labels & TARGET_LABELS)


async def test_loop_lag_is_measured() -> None:
    metrics = Metrics()
    ticked = asyncio.Event()
    monitor = LoopMonitor(metrics, interval_s=0.02, on_tick=ticked.set)
    monitor.start()
    try:
        await asyncio.wait_for(ticked.wait(), 2)
        ticked.clear()
        time.sleep(0.2)  # noqa: ASYNC251 - blocks the loop on purpose: the tick must be late
        await asyncio.wait_for(ticked.wait(), 2)
        # The probe may have been asleep for part of the block: at least 0.2 - interval late.
        assert monitor.last_lag_s >= 0.15
    finally:
        await monitor.close()
    samples = parse(metrics.exposition().decode())
    assert value(samples, f"{P}_event_loop_lag_seconds_count") >= 2
    assert value(samples, f"{P}_event_loop_lag_seconds_bucket", le="0.1") < value(
        samples, f"{P}_event_loop_lag_seconds_count"
    )
    assert value(samples, f"{P}_worker_processes") == 0


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_are_not_counted_as_connections(
    start_gateway: GatewayFactory, path: str
) -> None:
    gw = await start_gateway()
    assert (await gw.client.get(path)).status == 200
    samples = parse(await (await gw.client.get("/metrics")).text())
    assert total(samples, f"{P}_connects_total") == 0


WRITER = """
import os, sys
from service.metrics import Metrics, collect_multiprocess, forget_process
m = Metrics(multiprocess_dir=sys.argv[1])
m.connects.labels("notifications", "ws").inc(int(sys.argv[2]))
m.connections.labels("notifications", "ws").set(int(sys.argv[2]))
m.backbone_ready.set(int(sys.argv[3]))
print(os.getpid())
"""


def test_multiprocess_values_add_up_over_workers(tmp_path: Path) -> None:
    def worker(connections: int, ready: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", WRITER, str(tmp_path), str(connections), str(ready)],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return int(out.stdout)

    first = worker(2, 1)
    second = worker(3, 0)
    samples = parse(collect_multiprocess(str(tmp_path)).decode())
    assert total(samples, f"{P}_connects_total") == 5
    assert total(samples, f"{P}_connections") == 5
    assert value(samples, f"{P}_backbone_ready") == 0  # one worker is not connected
    forget_process(str(tmp_path), second)  # the supervisor does this when a worker dies
    samples = parse(collect_multiprocess(str(tmp_path)).decode())
    assert total(samples, f"{P}_connects_total") == 5  # counters keep the dead worker's share
    assert total(samples, f"{P}_connections") == 2
    assert value(samples, f"{P}_backbone_ready") == 1
    assert first != second


HAS_AMQP = importlib.util.find_spec("service.backbone.amqp") is not None


@pytest.mark.amqp
@pytest.mark.skipif(not HAS_AMQP, reason="needs the RabbitMQ backbone (service.backbone.amqp)")
async def test_counters_match_the_traffic_over_rabbitmq(
    start_amqp_gateway: Any, service: Any
) -> None:
    """Issue 4's example: 3 deliveries, 1 dead-lettered, 1 slow-consumer close."""
    amqp = await start_amqp_gateway(send_queue_bytes=4096)
    gw = amqp.gateway

    async def scrape() -> str:
        return await (await gw.client.get("/metrics")).text()

    alice = await gw.connect("notifications", user="alice")
    bob = await gw.connect("notifications", user="bob")
    stamp = datetime.now(UTC)
    await service.publish("notification.user.alice", {"data": 1}, timestamp=stamp)
    await service.publish("notification.broadcast", {"data": 2}, timestamp=stamp)
    assert (await receive(alice))["data"] == 1
    assert (await receive(alice))["data"] == 2
    assert (await receive(bob))["data"] == 2
    await service.publish("notification.user.alice", b"{not json")  # dead-lettered
    await service.publish("notification.user.bob", {"data": "x" * 8192})  # over bob's buffer
    closed = await bob.receive(timeout=5)
    assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 4008)

    samples = await scrape_until(
        scrape,
        {
            f"{P}_deliveries_total": 3,
            f"{P}_dead_lettered_total": 1,
            f"{P}_slow_consumer_closes_total": 1,
            f"{P}_disconnects_total{{code=4008}}": 1,
            f"{P}_connections": 1,
        },
    )
    assert value(samples, f"{P}_dead_lettered_total", reason="body") == 1
    assert value(samples, f"{P}_dropped_total", reason="slow_consumer") == 1
    assert value(samples, f"{P}_events_total", kind="user") == 2
    assert value(samples, f"{P}_events_total", kind="broadcast") == 1
    assert value(samples, f"{P}_backbone_ready") == 1
    assert value(samples, f"{P}_bindings") >= 3  # alice, bob (lingering), broadcast
    assert value(samples, f"{P}_delivery_lag_seconds_count") == 3
    # The AMQP timestamp (whole seconds) is the start: the lag is under a couple of seconds.
    assert value(samples, f"{P}_delivery_lag_seconds_bucket", le="2.5") == 3
    await alice.close()
