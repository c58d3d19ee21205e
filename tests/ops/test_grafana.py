"""deploy/grafana: the dashboard is valid JSON, uses only real metrics, and shows all of them."""

from __future__ import annotations

import itertools
import json
from typing import Any

from tests.ops.util import REPO, known_series, referenced_metrics

DASHBOARD = REPO / "deploy/grafana/realtime-gateway.json"


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_is_importable() -> None:
    dashboard = load()
    assert dashboard["uid"] == "realtime-gateway"
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_panels_do_not_overlap() -> None:
    boxes = [p["gridPos"] for p in load()["panels"]]
    for box in boxes:
        assert box["x"] >= 0, box
        assert box["x"] + box["w"] <= 24, box
    for a, b in itertools.combinations(boxes, 2):
        apart = (
            a["x"] + a["w"] <= b["x"]
            or b["x"] + b["w"] <= a["x"]
            or a["y"] + a["h"] <= b["y"]
            or b["y"] + b["h"] <= a["y"]
        )
        assert apart, (a, b)


def test_dashboard_uses_real_metrics_and_shows_every_one() -> None:
    used: set[str] = set()
    for panel in panels(load()):
        for target in panel["targets"]:
            names = referenced_metrics(target["expr"])
            assert names, target["expr"]
            assert names <= known_series(), names - known_series()
            used |= names
    families = {n.removesuffix("_total").removesuffix("_bucket") for n in used}
    shown = {n.removesuffix("_total").removesuffix("_bucket") for n in known_series()}
    shown = {n for n in shown if not n.endswith(("_count", "_sum"))}
    assert shown <= families, f"not on the dashboard: {sorted(shown - families)}"
