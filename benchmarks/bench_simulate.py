"""``simulate``'s speed, and the fast policy against compat on the default synthetic workload.

Run on demand (never in CI)::

    .venv/bin/python -m benchmarks.bench_simulate [--days 7] [--seed 1] [--out FILE]

1. **Speed**: the default command, ``codalab-scaler simulate --policy
   compat,fast`` (a week of the default synthetic workload, both policies),
   timed from workload generation to the last replay; the goal is at most
   30 s of wall time on the 2-core development machine.
2. **Goal**: ``fast``'s mean queue wait at least 5x lower than ``compat``'s
   at no more worker-hours, on the default workload and configuration; then
   the same comparison with each of a few settings changed for both
   policies, to show where the ratio comes from and what limits it.
3. **Tuned**: each policy over a small grid of ``max_workers`` and
   ``worker_idle_seconds``; for each compat configuration, the fast one
   with the lowest mean wait among those costing no more worker-hours.

Writes ``benchmarks/results/bench_simulate.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.report import write_report
from codalab_scaler.whatif.configs import Source, apply_setting, default_source, variants
from codalab_scaler.whatif.engine import replay
from codalab_scaler.whatif.report import Row
from codalab_scaler.whatif.workload import Synthetic, synthetic

GOAL_SECONDS = 30.0
GOAL_RATIO = 5.0
# Settings changed for both policies at once: what the ratio depends on.
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("default", {}),
    ("max_workers=40 (capacity never binds)", {"max_workers": 40}),
    ("boot_seconds=30 (fast-booting workers)", {"boot_seconds": 30}),
    ("max_workers=40, min_idle_workers=1 (fast keeps a warm spare)",
     {"max_workers": 40, "min_idle_workers": 1}),
    ("max_workers=40, min_idle_workers=1, worker_idle_seconds=3600",
     {"max_workers": 40, "min_idle_workers": 1, "worker_idle_seconds": 3600}),
)  # fmt: skip


def speed(days: float, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    jobs = synthetic(Synthetic(days=days), seed)
    generated = time.perf_counter()
    rows = []
    per_config = {}
    for v in variants([default_source()], ["compat", "fast"], None, seed):
        t = time.perf_counter()
        result = replay(v.scenario, jobs)
        per_config[v.name] = {
            "seconds": round(time.perf_counter() - t, 3),
            "planner_passes": result.passes,
            "passes_planned": result.planned,
        }
        rows.append(Row(v.name, result))
    wall = time.perf_counter() - started
    return {
        "what": f"simulate --policy compat,fast, {days:g} days of the default synthetic workload",
        "bundles": len(jobs),
        "generate_seconds": round(generated - started, 3),
        "wall_seconds": round(wall, 3),
        "goal_seconds": GOAL_SECONDS,
        "met": wall <= GOAL_SECONDS,
        "per_configuration": per_config,
    }


def goal(days: float, seed: int) -> dict[str, Any]:
    jobs = synthetic(Synthetic(days=days), seed)
    out = []
    for label, changes in VARIANTS:
        table = dict(default_source().table)
        for key, value in changes.items():
            table = apply_setting(table, key, value)
        found = variants([Source("default", table)], ["compat", "fast"], None, seed)
        compat, fast = (Row(v.name, replay(v.scenario, jobs)).summary() for v in found)
        ratio = compat["mean_wait_seconds"] / max(fast["mean_wait_seconds"], 1e-9)
        cheaper = fast["worker_hours"] <= compat["worker_hours"]
        out.append({
            "settings": label,
            "compat": _brief(compat),
            "fast": _brief(fast),
            "mean_wait_ratio": round(ratio, 2),
            "fast_worker_hours_at_most_compat": cheaper,
            "met": ratio >= GOAL_RATIO and cheaper,
        })  # fmt: skip
    return {
        "what": f"fast's mean wait at least {GOAL_RATIO:g}x lower than compat's at no more "
        "worker-hours; each row changes the default settings for both policies",
        "rows": out,
        "met_on_default": out[0]["met"],
        "best_ratio_at_no_more_cost": max(
            (r["mean_wait_ratio"] for r in out if r["fast_worker_hours_at_most_compat"]),
            default=None,
        ),
    }


GRID = tuple(
    (label, {**size, "worker_idle_seconds": idle})
    for label_size, size in (("default max_workers", {}), ("max_workers=40", {"max_workers": 40}))
    for idle in (120, 300, 600)
    for label in [f"{label_size}, worker_idle_seconds={idle}"]
)


def tuned(days: float, seed: int) -> dict[str, Any]:
    jobs = synthetic(Synthetic(days=days), seed)
    found: dict[str, list[dict[str, Any]]] = {"compat": [], "fast": []}
    for label, changes in GRID:
        table = dict(default_source().table)
        for key, value in changes.items():
            table = apply_setting(table, key, value)
        for v in variants([Source("default", table)], ["compat", "fast"], None, seed):
            summary = Row(v.name, replay(v.scenario, jobs)).summary()
            found[v.name].append({"settings": label, **_brief(summary)})
    pairs = []
    for compat in found["compat"]:
        cheaper = [f for f in found["fast"] if f["worker_hours"] <= compat["worker_hours"]]
        best = min(cheaper, key=lambda f: f["mean_wait_seconds"], default=None)
        pairs.append({
            "compat": compat["settings"],
            "compat_mean_wait_seconds": compat["mean_wait_seconds"],
            "compat_worker_hours": compat["worker_hours"],
            "best_fast_at_no_more_cost": best and best["settings"],
            "fast_mean_wait_seconds": best and best["mean_wait_seconds"],
            "fast_worker_hours": best and best["worker_hours"],
            "mean_wait_ratio": best and round(
                compat["mean_wait_seconds"] / max(best["mean_wait_seconds"], 1e-9), 2
            ),
        })  # fmt: skip
    return {
        "what": "each policy over a grid; per compat configuration, the best fast one at no "
        "more worker-hours (the default configuration is 'default max_workers, "
        "worker_idle_seconds=600')",
        "compat": found["compat"],
        "fast": found["fast"],
        "pairs": pairs,
    }


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("mean_wait_seconds", "p50_wait_seconds", "p95_wait_seconds", "max_wait_seconds",
            "worker_hours", "idle_worker_hours", "launches", "never_ran")  # fmt: skip
    return {k: summary[k] for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_simulate.json"))
    args = parser.parse_args()
    results = [speed(args.days, args.seed), goal(args.days, args.seed), tuned(args.days, args.seed)]
    write_report("simulate", results, args.out, cpus="2 (shared)")


if __name__ == "__main__":
    main()
