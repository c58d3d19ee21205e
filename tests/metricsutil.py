"""Reading Prometheus text expositions in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a labelled counter appears on first use)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape_until(
    scrape: Callable[[], Awaitable[str]],
    expected: Mapping[str, float],
    within: float = 5.0,
) -> Samples:
    """Scrape until every `expected` total (`name` or `name{k=v,...}`) holds, or fail.

    Counters move when the server gets to it (a frame counts once written), so a test waits
    for the state it caused instead of sleeping and hoping.
    """
    samples: Samples = {}
    deadline = asyncio.get_running_loop().time() + within
    while True:
        samples = parse(await scrape())
        actual = {}
        for key in expected:
            name, labels = _split(key)
            actual[key] = total(samples, name, **labels)
        if actual == dict(expected):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"metrics never matched: expected {dict(expected)}, got {actual}")
        await asyncio.sleep(0.05)


def _split(key: str) -> tuple[str, dict[str, str]]:
    name, _, rest = key.partition("{")
    labels = {}
    for pair in filter(None, rest.rstrip("}").split(",")):
        k, _, v = pair.partition("=")
        labels[k.strip()] = v.strip().strip('"')
    return name, labels
