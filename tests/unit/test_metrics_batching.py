"""BatchedHistogram: the same totals as Histogram.observe, added once per loop iteration."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram

from service.metrics import LAG_BUCKETS, BatchedHistogram


def samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_prometheus_client_keeps_the_internals_batching_relies_on() -> None:
    histogram = Histogram("h", "h", buckets=LAG_BUCKETS, registry=CollectorRegistry())
    for name in ("_upper_bounds", "_buckets", "_sum"):
        assert hasattr(histogram, name), (
            f"prometheus_client.Histogram no longer has {name}: service.metrics."
            "BatchedHistogram must be adapted before upgrading prometheus-client"
        )
    assert len(histogram._buckets) == len(histogram._upper_bounds)


async def test_batched_observations_equal_direct_ones_after_one_iteration() -> None:
    direct = Histogram("direct", "d", buckets=LAG_BUCKETS, registry=CollectorRegistry())
    target = Histogram("batched", "b", buckets=LAG_BUCKETS, registry=CollectorRegistry())
    batched = BatchedHistogram(target)
    values = [0.0, 0.001, 0.0011, 0.02, 0.3, 0.3, 7.0, 11.0, 1e9]
    for value in values:
        direct.observe(value)
        batched.observe(value)
    assert samples(target)[("batched_count", "")] == 0  # not yet: once per loop iteration
    await asyncio.sleep(0)
    want = {(name.replace("direct", "batched"), le): v for (name, le), v in samples(direct).items()}
    assert samples(target) == want
    batched.observe(0.004)
    await asyncio.sleep(0)
    assert samples(target)[("batched_count", "")] == len(values) + 1
