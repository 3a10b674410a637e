"""Cost of one planner pass over 10,000 staged bundles, 5,000 jobs and 5 pools.

Run on demand (never in CI)::

    .venv/bin/python -m benchmarks.bench_planner [--bundles 10000] [--jobs-per-pool 1000]

Two passes over the same deterministic world (``benchmarks.planner_world``):

- ``pure``: ``core.planner.plan(pools, workers, now)`` alone (supply join,
  routing, placement, both policies);
- ``service``: what the service does once per ``sleep_time`` around it:
  ``service.planning.plan_pass`` (plan, the routing report, the bundles'
  waits, the planner's memory, the decision logged as JSON, the launches on
  an in-memory backend), then one ``/status`` document serialised to JSON
  and one Prometheus scrape of the registry.

Each is measured in CPU seconds (``time.process_time``, best and median of
``--rounds``; the first, warm-up round is dropped), its Python heap peak
(tracemalloc, one separate round) and, in a fresh child process, the peak
resident set size (``VmHWM``) of a process that imports the service,
builds the world and runs both passes.  ``--profile`` adds the functions
that cost most (cProfile, by own time).  Writes
``benchmarks/results/bench_planner.json``; ``--label`` names the run
(``before``/``after``) and the other labels already in the file are kept;
``--code TREE`` measures another source tree's ``codalab_scaler`` (a
worktree at the base commit, for the "before").
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from benchmarks.code_tree import command, describe
from benchmarks.planner_world import NOW, World, settings, world
from benchmarks.report import write_report
from codalab_scaler.core.planner import plan
from codalab_scaler.service.context import Context
from codalab_scaler.service.logs import configure_logging
from codalab_scaler.service.planning import plan_pass
from codalab_scaler.service.status import build_status
from codalab_scaler.service.wiring import Overrides, assemble, open_context
from tests.fakes import FakeBackend, FakeBundles

RESULTS = Path(__file__).parent / "results" / "bench_planner.json"
GOAL_CPU_SECONDS = 0.200
GOAL_RSS_MIB = 150


def _cpu(run: Callable[[], object], rounds: int) -> dict[str, float]:
    """CPU seconds of ``run``: best and median of ``rounds`` after one warm-up."""
    run()
    spent = []
    for _ in range(rounds):
        started = time.process_time()
        run()
        spent.append(time.process_time() - started)
    return {"cpu_seconds_best": round(min(spent), 4),
            "cpu_seconds_median": round(statistics.median(spent), 4)}  # fmt: skip


def _heap_peak(run: Callable[[], object]) -> float:
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return round(peak / 2**20, 2)


def _profile(run: Callable[[], object], top: int) -> list[str]:
    """The ``top`` functions by own time: ``own s / cumulative s / calls  function``."""
    profiler = cProfile.Profile()
    profiler.runcall(run)
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (path, line, name), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(path).name}:{line}({name})" if line else name
        rows.append((own, cumulative, calls, where))
    rows.sort(reverse=True)
    return [f"{own:.4f}s own / {cum:.4f}s cum / {calls} calls  {where}"
            for own, cum, calls, where in rows[:top]]  # fmt: skip


class ServicePass:
    """The service around the planner, opened once; each ``run`` is one pass from ``world``."""

    def __init__(self, w: World, ctx: Context, registry: CollectorRegistry) -> None:
        self.world = w
        self.ctx = ctx
        self.registry = registry
        self.loop = asyncio.get_event_loop()

    def reset(self) -> None:
        """The world's state again (the previous pass launched and remembered)."""
        for p in self.world.pools:
            self.ctx.state.update(p.spec.name, lambda _s, p=p: p.state)  # type: ignore[misc]
        self.ctx.state.update_workers(lambda _o: self.world.workers)

    def run(self) -> None:
        self.reset()
        self.loop.run_until_complete(plan_pass(self.ctx))
        json.dumps(build_status(self.ctx, self.ctx.liveness.check()))
        generate_latest(self.registry)


async def _open(w: World, stack: AsyncExitStack) -> tuple[Context, CollectorRegistry]:
    config = settings(max_workers=w.pools[0].spec.limits.max_workers)
    registry = CollectorRegistry()
    backends = {p.spec.name: FakeBackend() for p in w.pools}
    parts = assemble(config, clock=lambda: NOW, registry=registry,
                     overrides=Overrides(bundles=FakeBundles(), backends=backends))  # fmt: skip
    ctx = await open_context(stack, parts, login=False)
    for p in w.pools:
        if ctx.pools[p.spec.name].spec != p.spec:  # pragma: no cover - a guard on the world
            raise RuntimeError(f"pool {p.spec.name}: the world's spec is not the settings'")
    return ctx, registry


def measure(w: World, rounds: int, top: int) -> dict[str, Any]:
    """Both passes over ``w`` in this process: CPU, heap peak, and (with ``top``) a profile."""
    configure_logging(fmt="json", stream=io.StringIO())  # rendered as in production, kept
    pure = lambda: plan(w.pools, w.workers, w.now)  # noqa: E731 - a named closure to time
    result = plan(w.pools, w.workers, w.now)
    out: dict[str, Any] = {
        "pure": {**_cpu(pure, rounds), "heap_peak_mib": _heap_peak(pure)},
        "outcome": {
            name: {"counted": p.counted, "needed": p.needed, "launch": p.launch,
                   "reason": p.reason.value, "workers": len(p.workers)}
            for name, p in result.pools.items()
        } | {"unroutable": len(result.routing.unroutable)},
    }  # fmt: skip
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stack = AsyncExitStack()
    try:
        ctx, registry = loop.run_until_complete(_open(w, stack))
        service = ServicePass(w, ctx, registry)
        sink = io.StringIO()
        configure_logging(fmt="json", stream=sink)
        out["service"] = {**_cpu(service.run, rounds), "heap_peak_mib": _heap_peak(service.run),
                          "log_bytes_per_pass": len(sink.getvalue()) // (rounds + 2)}  # fmt: skip
        if top:
            out["pure"]["profile"] = _profile(pure, top)
            out["service"]["profile"] = _profile(service.run, top)
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()
    return out


def peak_rss_kib() -> int:
    """The peak resident set of the process, KiB.

    ``VmHWM`` belongs to the process's own memory map, so it starts afresh at
    exec; ``ru_maxrss`` would carry the parent's peak over the fork.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # elsewhere: the best there is


def child(bundles: int, jobs_per_pool: int) -> None:
    """In a fresh process: peak RSS after the imports, after building, then after both passes."""
    imported = peak_rss_kib()
    w = world(bundles, jobs_per_pool)
    built = peak_rss_kib()
    measure(w, rounds=1, top=0)
    peak = peak_rss_kib()
    print(json.dumps({"rss_after_imports_mib": round(imported / 1024, 1),
                      "rss_after_world_mib": round(built / 1024, 1),
                      "rss_peak_mib": round(peak / 1024, 1)}))  # fmt: skip


def _rss(code: Path | None, bundles: int, jobs_per_pool: int) -> dict[str, float]:
    child_args = ["--child", "--bundles", str(bundles), "--jobs-per-pool", str(jobs_per_pool)]
    args = command(code, "benchmarks.bench_planner", child_args)
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=600)  # noqa: S603 - our own module
    rss: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return rss


def _merge(out: Path, label: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs already in ``out`` under other labels, then this one."""
    kept: list[dict[str, Any]] = []
    if out.exists():
        kept = [r for r in json.loads(out.read_text())["results"] if r.get("label") != label]
    return [*kept, result]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=10_000)
    parser.add_argument("--jobs-per-pool", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=int, default=12, metavar="TOP")
    parser.add_argument("--label", default="after")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--code", type=Path, default=None,
                        help="measure the codalab_scaler of this source tree (the base commit's "
                        "for a 'before'); default: this checkout")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--in-tree", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.bundles, args.jobs_per_pool)
        return
    if args.code is not None and not args.in_tree:
        again = [*sys.argv[1:], "--in-tree"]
        subprocess.run(command(args.code, "benchmarks.bench_planner", again), check=True)  # noqa: S603 - our own module
        return
    w = world(args.bundles, args.jobs_per_pool)
    measured = measure(w, args.rounds, args.profile)
    rss = _rss(args.code, args.bundles, args.jobs_per_pool)
    worst = max(measured["pure"]["cpu_seconds_median"], measured["service"]["cpu_seconds_median"])
    result = {
        "label": args.label,
        "note": args.note,
        "code": describe(args.code),
        "bundles": len(w.bundles),
        "jobs": w.jobs,
        "check_ins": len(w.workers.value or ()),
        "pools": len(w.pools),
        **measured,
        **rss,
        "goal": {"cpu_seconds": GOAL_CPU_SECONDS, "rss_mib": GOAL_RSS_MIB},
        "meets_goal": worst <= GOAL_CPU_SECONDS and rss["rss_peak_mib"] <= GOAL_RSS_MIB,
    }
    write_report("bench_planner", _merge(args.out, args.label, result), args.out,
                 measured_on="2 shared cores; CPU seconds of this process only")  # fmt: skip


if __name__ == "__main__":
    main()
