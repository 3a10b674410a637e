"""Soak: many observe-decide-launch passes on virtual time, with random faults, looking for leaks.

Run on demand (CI runs a short version, ``tests/test_soak.py``)::

    .venv/bin/python -m benchmarks.soak [--passes 10000] [--seed 14] [--out FILE]

One pool, stepped by hand as the loops step it: poll the bundles, poll the
jobs, decide and launch, then sleep ``sleep_time``.  CodaLab is the
simulator behind the fault proxy, over loopback HTTP, with the real client
(login, token refresh, retries, ``Retry-After``); the backend is an
in-memory one whose jobs end at random so the pool keeps launching, and
whose listing fails at random (transient, throttled with a pause, refused).
Before each pass a fault from the proxy's list is set with some
probability (seeded), and cleared after it.  The loop runs on looptime's
virtual clock: timeouts, backoffs and pauses cost no real time.

Measured after a warm-up and again at the end, each after a garbage
collection: traced Python memory (tracemalloc), asyncio tasks, open file
descriptors and sockets.  The peers share the process, so their request
logs are emptied each pass and their allocations (the simulator's token
store, the proxy) left out of the count: what remains is the scaler's, its
HTTP client's and the event loop's memory.  Writes ``benchmarks/results/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import tracemalloc
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import looptime
import structlog
from prometheus_client import CollectorRegistry

from benchmarks.report import write_report
from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import RefusedError, TransientError
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.service.context import Context, PoolRuntime
from codalab_scaler.service.observe import poll_bundles, poll_jobs
from codalab_scaler.service.scale import scale_pool
from codalab_scaler.service.wiring import Overrides, assemble, open_context
from codalab_scaler.simulator import CodaLabSimulator
from tests.fault_proxy import Fault, FaultProxy, halve

PASSWORD = "soak-password"
SLEEP = 5.0
FAULT_RATE = 0.3
BACKEND_FAULT_RATE = 0.1
END_RATE = 0.2  # chance per pass that one running job ends
STAGED = 8
MAX_WORKERS = 5
RESULTS = Path(__file__).parent / "results" / "soak.json"


@dataclass
class ChurnBackend:
    """Jobs that end at random and a listing that fails at random; bounded state."""

    rng: random.Random
    jobs: dict[str, JobState] = field(default_factory=dict)
    error: Exception | None = None
    launches: int = 0

    async def list_jobs(self) -> Sequence[WorkerJob]:
        if self.error is not None:
            raise self.error
        return [WorkerJob(job, state, job.removeprefix("job-")) for job, state in self.jobs.items()]

    async def launch(self, worker_id: str) -> str:
        self.launches += 1
        job_id = f"job-{worker_id}"
        self.jobs[job_id] = JobState.ACTIVE
        return job_id

    async def describe_launch(self, worker_id: str) -> Mapping[str, Any]:
        return {"job_id": f"job-{worker_id}"}

    async def cancel(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    async def aclose(self) -> None:
        return None

    def churn(self) -> None:
        if self.jobs and self.rng.random() < END_RATE:
            del self.jobs[self.rng.choice(sorted(self.jobs))]
        roll = self.rng.random()
        self.error = None
        if roll < BACKEND_FAULT_RATE / 3:
            self.error = TransientError("backend down")
        elif roll < 2 * BACKEND_FAULT_RATE / 3:
            self.error = TransientError("throttled", retry_after=self.rng.choice([0.5, 1, 60]))
        elif roll < BACKEND_FAULT_RATE:
            self.error = RefusedError("backend refused")


@dataclass(frozen=True)
class Sample:
    memory: tracemalloc.Snapshot
    tasks: int
    fds: int
    sockets: int


# Allocations made on behalf of the peers sharing the process (the simulator's token
# store, the proxy's own client) or of the measuring: anywhere in the call stack.
PEERS = tuple(
    tracemalloc.Filter(inclusive=False, filename_pattern=pattern, all_frames=True)
    for pattern in ("*/codalab_scaler/simulator/*", "*/tests/fault_proxy.py", "*/tracemalloc.py")
)
FRAMES = 8  # enough to reach a peer's frame above aiohttp's and yarl's (deeper is slower)
CHECKPOINTS = 10  # memory samples along the run, to tell a plateau from a leak


def scaler_memory() -> tracemalloc.Snapshot:
    """Traced memory, less what the in-process peers and the measuring itself hold."""
    return tracemalloc.take_snapshot().filter_traces(PEERS)


def total(snapshot: tracemalloc.Snapshot) -> int:
    return sum(stat.size for stat in snapshot.statistics("filename"))


def largest_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[str]:
    """The five source lines whose allocations grew most: where to look if the soak fails."""
    return [str(stat) for stat in after.compare_to(before, "lineno")[:5] if stat.size_diff > 0]


def sample() -> Sample:
    gc.collect()
    fds = list(Path("/proc/self/fd").iterdir())
    sockets = 0
    for fd in fds:
        try:
            sockets += str(fd.readlink()).startswith("socket:")
        except OSError:
            continue  # the listing's own fd, closed by now
    return Sample(scaler_memory(), len(asyncio.all_tasks()), len(fds), sockets)


def settings(server: str) -> Settings:
    return Settings.model_validate(
        {
            "server": server, "username": "codalab", "password": PASSWORD,
            "sleep_time": SLEEP, "request_timeout_seconds": 0.5, "retry_attempts": 2,
            "retry_max_seconds": 1.5, "retry_backoff_seconds": 0.01,
            "retry_max_backoff_seconds": 0.02,
            "pools": {"p": {"min_workers": 0, "max_workers": MAX_WORKERS,
                            "min_seconds_between_workers": 0}},
        }
    )  # fmt: skip


def poll_errors(registry: CollectorRegistry, source: str) -> float:
    return sum(
        registry.get_sample_value(
            "codalab_scaler_poll_errors_total", {"pool": "p", "source": source, "kind": kind}
        )
        or 0.0
        for kind in ("transient", "refused")
    )


async def one_pass(
    ctx: Context, pool: PoolRuntime, sim: CodaLabSimulator, proxy: FaultProxy, fault: Fault | None
) -> None:
    """Poll, decide and launch as the loops do, under ``fault``; then sleep ``SLEEP``."""
    if fault is not None:
        await proxy.set(fault)
    await poll_bundles(ctx, pool)
    await poll_jobs(ctx, pool)
    await scale_pool(ctx, pool)
    if fault is not None:
        await proxy.clear()
    # The peers' own request logs are not the scaler's memory.
    sim.requests.clear()
    proxy.seen.clear()
    await asyncio.sleep(SLEEP)


async def soak(passes: int, seed: int, warmup: int) -> dict[str, Any]:
    """Run ``passes`` passes (the first ``warmup`` before the first sample); the figures."""
    rng = random.Random(seed)  # reproducible fault schedule
    faults = sorted(Fault)
    tried: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    sim = CodaLabSimulator(users={"codalab": PASSWORD}, token_ttl=600)
    await sim.start()
    for _ in range(STAGED):
        sim.add_bundle(duration=600)
    proxy = FaultProxy(
        sim.url, applies=lambda request: request.path == "/rest/bundles", trim=halve("data")
    )
    await proxy.start()
    backend = ChurnBackend(rng)
    registry = CollectorRegistry()
    parts = assemble(
        settings(proxy.url),
        clock=loop.time,
        registry=registry,
        overrides=Overrides(backends={"p": backend}),
    )
    before = after = sample()  # replaced after the warm-up and at the end
    try:
        async with AsyncExitStack() as stack:
            ctx = await open_context(stack, parts, login=False)
            pool = ctx.pools["p"]
            curve: dict[int, int] = {}
            every = max(1, passes // CHECKPOINTS)
            for done in range(1, passes + 1):
                # A pass just before a measurement runs without faults, so each sample
                # sees the same steady state (a pooled connection, no outage in progress).
                measuring = done in (warmup, passes) or done % every == 0
                fault: Fault | None = None
                if rng.random() < FAULT_RATE and not measuring:
                    fault = rng.choice(faults)
                    tried[fault.value] += 1
                backend.churn()
                if measuring:
                    backend.error = None
                await one_pass(ctx, pool, sim, proxy, fault)
                if done == warmup:
                    before = sample()
                if done == passes:
                    after = sample()
                if done % every == 0:
                    curve[done] = total(sample().memory)
            errors = {source: poll_errors(registry, source) for source in ("bundles", "jobs")}
            launched = registry.get_sample_value(
                "codalab_scaler_launches_total", {"pool": "p", "outcome": "launched"}
            )
            fatal = ctx.fatal.reason if ctx.fatal.is_set() else None
    finally:
        await proxy.stop()
        await sim.stop()
    memory_before, memory_after = total(before.memory), total(after.memory)
    growth = (memory_after - memory_before) / memory_before
    return {
        "passes": passes,
        "seed": seed,
        "warmup_passes": warmup,
        "virtual_seconds": round(loop.time(), 1),
        "faults_tried": dict(sorted(tried.items())),
        "passes_with_a_codalab_fault": sum(tried.values()),
        "poll_errors": errors,
        "launches": launched,
        "fatal": fatal,
        "memory_bytes_before": memory_before,
        "memory_bytes_after": memory_after,
        "memory_growth_percent": round(100 * growth, 2),
        "memory_bytes_by_pass": curve,
        "largest_growth": largest_growth(before.memory, after.memory),
        "tasks_before": before.tasks,
        "tasks_after": after.tasks,
        "fds_before": before.fds,
        "fds_after": after.fds,
        "sockets_before": before.sockets,
        "sockets_after": after.sockets,
    }


def run(passes: int, seed: int, warmup: int) -> dict[str, Any]:
    """``soak`` on a fresh looptime loop, logs processed but discarded, memory traced."""
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    tracemalloc.start(FRAMES)
    loop = looptime.new_event_loop(start=0, _enabled=True)
    try:
        return loop.run_until_complete(soak(passes, seed, warmup))
    finally:
        loop.close()
        tracemalloc.stop()
        structlog.reset_defaults()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.passes, args.seed, args.warmup)
    write_report("soak", [result], args.out, peers="CodaLab simulator behind the fault proxy")


if __name__ == "__main__":
    main()
