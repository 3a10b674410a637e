"""Cost of one observe-and-decide pass: fetch + parse + prefilter N staged bundles, and decide.

Run on demand (never in CI)::

    .venv/bin/python -m benchmarks.bench_poll [--sizes 1000 10000] [--out FILE]

``fetch_*`` runs against the in-process CodaLab simulator over loopback
HTTP, so it includes the simulator's own cost (which dominates at large N);
``parse_*`` is the client's share alone: JSON decoding, JSON:API unpacking
and the prefilter.  Both compare versions of this code, not CodaLab servers.
Writes a JSON results file (default ``benchmarks/results/poll.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

from benchmarks.report import write_report
from codalab_scaler.core.decision import Policy, decide
from codalab_scaler.core.model import Observation, PoolState
from codalab_scaler.core.prefilter import WorkerShape, prefilter
from codalab_scaler.simulator import CodaLabSimulator
from codalab_scaler.sources.codalab import CodaLabClient, Credentials, staged_keywords
from codalab_scaler.sources.codalab.jsonapi import parse_bundles
from codalab_scaler.sources.retry import RetryPolicy

USER, PASSWORD = "codalab", "bench-password"


def document(size: int) -> str:
    """A JSON:API search answer of ``size`` staged bundles, as CodaLab sends it."""
    data = [
        {
            "type": "bundles",
            "id": f"0x{i:032x}",
            "attributes": {
                "uuid": f"0x{i:032x}",
                "bundle_type": "run",
                "state": "staged",
                "command": "python train.py",
                "metadata": {
                    "name": f"run-{i}",
                    "request_cpus": 1 + i % 4,
                    "request_gpus": 0,
                    "request_memory": f"{1 + i % 8}g",
                    "request_queue": "",
                    "request_priority": 0,
                },
            },
            "relationships": {"owner": {"data": {"type": "users", "id": "0"}}},
        }
        for i in range(size)
    ]
    included = [{"type": "users", "id": "0", "attributes": {"user_name": USER}}]
    return json.dumps({"data": data, "included": included, "meta": {"version": "1.7.3"}})


def bench_parse(size: int) -> dict[str, Any]:
    """The client's own share: JSON decode, JSON:API unpacking, prefilter (no HTTP)."""
    text = document(size)
    tracemalloc.start()
    started = time.perf_counter()
    parsed = parse_bundles(json.loads(text))
    prefilter(parsed.bundles, WorkerShape(cpus=2, gpus=0, memory_mb=4096))
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "parse_prefilter_seconds": round(elapsed, 4),
        "parse_bundles_per_second": round(size / elapsed),
        "parse_peak_traced_memory_mib": round(peak / 2**20, 2),
    }


async def bench_fetch(size: int, page_size: int) -> dict[str, Any]:
    sim = CodaLabSimulator(users={USER: PASSWORD})
    for i in range(size):
        sim.add_bundle(USER, cpus=1 + i % 4, memory=f"{1 + i % 8}g")
    await sim.start()
    client = CodaLabClient(
        sim.url,
        Credentials(USER, PASSWORD),
        page_size=page_size,
        request_timeout=30,
        retry=RetryPolicy(max_attempts=4, max_seconds=30, initial_backoff=0.5, max_backoff=8),
    )
    try:
        await client.login()
        keywords = staged_keywords(USER, [], None, tag_exclusive=False)
        tracemalloc.start()
        started = time.perf_counter()
        parsed = await client.fetch_staged(keywords)
        view = prefilter(parsed.bundles, WorkerShape(cpus=2, gpus=0, memory_mb=4096))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        await client.aclose()
        await sim.stop()
    if len(parsed.bundles) != size:
        raise RuntimeError(f"the simulator served {len(parsed.bundles)} bundles, not {size}")
    state = PoolState(
        bundles=Observation(view, observed_at=0.0), jobs=Observation((), observed_at=0.0)
    )
    policy = Policy(
        min_workers=0,
        max_workers=50,
        min_seconds_between_workers=60,
        staleness_seconds=15,
        max_launches_per_pass=1,
    )
    rounds = 2000
    t0 = time.perf_counter()
    for _ in range(rounds):
        decide(state, policy, 1.0)
    decide_s = (time.perf_counter() - t0) / rounds
    return {
        "staged": size,
        "page_size": page_size,
        "fetch_seconds": round(elapsed, 4),
        "fetch_bundles_per_second": round(size / elapsed),
        "fetch_peak_traced_memory_mib": round(peak / 2**20, 2),
        "kept_after_prefilter": len(view.staged),
        "decide_microseconds": round(decide_s * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/poll.json"))
    args = parser.parse_args()
    results = [
        {**asyncio.run(bench_fetch(n, args.page_size)), **bench_parse(n)} for n in args.sizes
    ]
    write_report("poll", results, args.out)


if __name__ == "__main__":
    main()
