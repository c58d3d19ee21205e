"""scripts/bench: run S0-S7 against the gateway and its peers; print and save the tables.

Every (repeat, scenario, server) gets a fresh server process pinned to CPU 0 and a fresh load
generator pinned to CPU 1; servers are interleaved within a repeat so that drift in the
machine's load touches all of them alike. Results go to .cache/bench/<stamp>.json and a
Markdown summary to stdout (and to --markdown FILE).
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchkit import env, scenarios, servers

FIGURES = {
    "S0": [("deliveries_per_s", "frames/s read", 0), ("loadgen_cpu_pct", "loadgen CPU %", 0)],
    "S0c": [("deliveries_per_s", "frames/s read", 0), ("loadgen_cpu_pct", "loadgen CPU %", 0)],
    "S1": [("kib_per_socket", "KiB/socket", 1), ("rss_mib_at_max", "RSS MiB", 0)],
    "S2": [
        ("deliveries_per_s", "deliveries/s", 0),
        ("p50_ms", "p50 ms", 1),
        ("p99_ms", "p99 ms", 1),
        ("server_cpu_pct", "server CPU %", 0),
        ("server_us_per_unit", "server µs/unit", 2),
        ("loadgen_cpu_pct", "loadgen CPU %", 0),
    ],
    "S3": [
        ("delivered_fraction", "delivered", 3),
        ("p50_ms", "p50 ms", 1),
        ("p99_ms", "p99 ms", 1),
        ("server_cpu_pct", "server CPU %", 0),
        ("server_us_per_unit", "server µs/unit", 2),
        ("loadgen_cpu_pct", "loadgen CPU %", 0),
    ],
    "S4": [
        ("deliveries_per_s", "deliveries/s", 0),
        ("p50_ms", "p50 ms", 1),
        ("p99_ms", "p99 ms", 1),
        ("server_cpu_pct", "server CPU %", 0),
        ("server_us_per_unit", "server µs/unit", 2),
        ("loadgen_cpu_pct", "loadgen CPU %", 0),
    ],
    "S4b": [
        ("deliveries_per_s", "deliveries/s", 0),
        ("delivered_fraction", "delivered", 3),
        ("p50_ms", "p50 ms", 1),
        ("p99_ms", "p99 ms", 1),
        ("server_cpu_pct", "server CPU %", 0),
        ("server_us_per_unit", "server µs/unit", 2),
    ],
    "S5": [
        ("consume_per_s", "messages/s", 0),
        ("publish_per_s", "publisher msg/s", 0),
        ("server_cpu_pct", "server CPU %", 0),
        ("server_us_per_unit", "server µs/unit", 2),
    ],
    "S5n": [
        ("consume_per_s", "messages/s", 0),
        ("publish_per_s", "publisher msg/s", 0),
        ("server_cpu_pct", "server CPU %", 0),
        ("server_us_per_unit", "server µs/unit", 2),
    ],
    "S6": [("rate", "accepted/s", 0), ("connect_s", "seconds", 2), ("failed", "failed", 0)],
    "S7": [
        ("p99_ms", "fast p99 ms", 1),
        ("delivered_fraction", "fast delivered", 3),
        ("slow_open", "slow opened", 0),
        ("slow_connected", "slow still connected", 0),
        ("slow_current", "slow with every last value", 0),
        ("slow_older_after_newer", "older after newer", 0),
        ("slow_behind_s", "slow behind s (median)", 1),
        ("rss_mib_start", "RSS MiB before", 0),
        ("rss_mib_end", "RSS MiB after publishing", 0),
        ("drain_s", "s until slow current", 1),
        ("server_cpu_pct", "server CPU %", 0),
    ],
}
FIGURES["S7b"] = [f for f in FIGURES["S7"] if not f[0].startswith("slow_")]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (<2 min)")
    parser.add_argument("--servers", default="gateway,pysio,nodesio")
    parser.add_argument("--scenarios", default="S0,S0c,S1,S2,S3,S4,S4b,S5,S5n,S6,S7,S7b")
    parser.add_argument("--repeats", type=int, default=None, help="default 1 quick, 3 full")
    parser.add_argument("--markdown", type=Path, help="also write the summary here")
    parser.add_argument("--out", type=Path, default=env.REPO / ".cache" / "bench")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    max_sockets = max(1000, min(hard, 20_000) - 1000)  # leave room for the process's own fds
    env.ensure_installed()
    repeats = args.repeats or (1 if args.quick else 3)
    wanted = set(args.scenarios.split(","))
    chosen = [s for s in scenarios.scenarios(args.quick, max_sockets) if s.key in wanted]
    specs = [servers.SPECS[name] for name in args.servers.split(",")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started": stamp,
        "quick": args.quick,
        "repeats": repeats,
        "nofile": [soft, hard],
        "load_before": env.load_average(),
        "versions": env.versions(),
        "pinning": {"server": servers.SERVER_CPU, "loadgen+publisher": servers.LOAD_CPU},
        "scenarios": {s.key: s.title for s in chosen},
        "runs": [],
    }
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C
    try:
        _run_all(report, chosen, specs, repeats, args.out / "logs" / stamp, t0)
    except KeyboardInterrupt:
        print("bench: interrupted; reporting what was measured", file=sys.stderr)
    report["seconds"] = round(time.monotonic() - t0)
    report["load_after"] = env.load_average()
    path = args.out / f"{stamp}.json"
    path.write_text(json.dumps(report, indent=1))
    text = markdown(report, chosen, specs)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    print(f"bench: {report['seconds']} s; raw results in {path}", file=sys.stderr)
    return 0


def _run_all(
    report: dict[str, Any],
    chosen: list[scenarios.Scenario],
    specs: list[servers.ServerSpec],
    repeats: int,
    logs: Path,
    t0: float,
) -> None:
    for rep in range(repeats):
        for scenario in chosen:
            if rep >= scenario.max_repeats:
                continue
            # S0 measures the load generator itself, against the bare blaster only.
            for spec in [servers.BLASTER] if scenario.key.startswith("S0") else specs:
                began = time.monotonic()
                try:
                    figures = scenarios.run(spec, scenario, logs)
                except Exception as exc:  # a server that fails is a finding, not a crash
                    figures = {"error": str(exc)}
                figures["seconds"] = round(time.monotonic() - began, 1)
                report["runs"].append(
                    {"repeat": rep, "scenario": scenario.key, "server": spec.name, **figures}
                )
                print(
                    f"[{time.monotonic() - t0:6.0f}s] {scenario.key} {spec.name:8s} "
                    f"{_brief(scenario, figures)}",
                    file=sys.stderr,
                    flush=True,
                )


def _brief(scenario: scenarios.Scenario, figures: dict[str, Any]) -> str:
    if "error" in figures:
        return "ERROR " + str(figures["error"])[:300]
    parts = []
    for key, label, digits in FIGURES[scenario.key]:
        value = figures.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label}={value:,.{digits}f}")
    return " ".join(parts)


def _stats(values: list[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def _fmt(stat: tuple[float, float, float] | None, digits: int) -> str:
    if stat is None:
        return "—"
    med, lo, hi = stat
    if lo == hi:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def markdown(
    report: dict[str, Any], chosen: list[scenarios.Scenario], specs: list[servers.ServerSpec]
) -> str:
    """Tables: per scenario, median (min-max) per server, and the gateway's ratios."""
    out = [
        f"Run {report['started']}: {'quick' if report['quick'] else 'full'}, "
        f"{report['repeats']} repeat(s), {report.get('seconds', '?')} s; load average "
        f"before {tuple(round(x, 2) for x in report['load_before'])}, after "
        f"{tuple(round(x, 2) for x in report.get('load_after', (0, 0, 0)))}; "
        f"server on CPU {servers.SERVER_CPU}, load generator and publisher on CPU "
        f"{servers.LOAD_CPU}; RLIMIT_NOFILE {report['nofile'][0]}.",
        "",
    ]
    for scenario in chosen:
        cols = FIGURES[scenario.key]
        out.append(f"**{scenario.key}: {scenario.title}** — median (min-max)")
        out.append("")
        out.append("| server | " + " | ".join(label for _, label, _ in cols) + " | errors |")
        out.append("|---" * (len(cols) + 2) + "|")
        medians: dict[str, float] = {}
        for spec in [servers.BLASTER] if scenario.key.startswith("S0") else specs:
            runs = [
                r
                for r in report["runs"]
                if r["scenario"] == scenario.key and r["server"] == spec.name
            ]
            errors = sum(1 for r in runs if "error" in r or r.get("server_died") is not None)
            cells = []
            for key, _, digits in cols:
                values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
                stat = _stats(values)
                cells.append(_fmt(stat, digits))
                if key == scenario.headline and stat is not None:
                    medians[spec.name] = stat[0]
            out.append(f"| {spec.label} | " + " | ".join(cells) + f" | {errors} |")
        for ours in ("gateway", "gatewaysio"):
            gw = medians.get(ours)
            ratios = []
            for spec in specs:
                if spec.name in ("gateway", "gatewaysio") or gw is None:
                    continue
                if not medians.get(spec.name):
                    continue
                peer = medians[spec.name]
                ratio = gw / peer if scenario.higher_is_better else peer / gw
                ratios.append(f"{ratio:.2f}x {spec.label}")
            if ratios:
                better = "higher" if scenario.higher_is_better else "lower"
                label = servers.SPECS[ours].label
                out.append("")
                out.append(
                    f"{label} vs peers on {scenario.headline} ({better} is better, >1 = "
                    f"gateway ahead): " + ", ".join(ratios)
                )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
