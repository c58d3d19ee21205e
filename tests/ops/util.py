"""Helpers for the offline checks of deploy/, k8s/ and docs/."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from service.metrics import PREFIX, WORKER_RESTARTS, Metrics

REPO = Path(__file__).resolve().parents[2]
METRIC_RE = re.compile(rf"\b{PREFIX}_[a-z0-9_]+\b")


def tool(name: str) -> str:
    """A command-line tool installed by the `test` extra (into this virtualenv's bin)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} is missing: install the test extra (pip install -e '.[test]')"
    return found


@functools.cache
def kustomize(path: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize <path>` (offline), as a tuple of documents."""
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(REPO / path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one document of this kind (and name)."""
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@functools.cache
def known_series() -> frozenset[str]:
    """Every series name the gateway exposes (with _total, _bucket... suffixes)."""
    metrics = Metrics()
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "count", "sum"))
    # The supervisor's own counter (GATEWAY_WORKERS > 1) is not in the app's registry.
    names.add(f"{WORKER_RESTARTS}_total")
    return frozenset(names)


def referenced_metrics(text: str) -> set[str]:
    """The realtime_gateway_* names used in a PromQL expression or a document."""
    return set(METRIC_RE.findall(text))
