"""Issue 10's two-burst workload over real HTTP, run by a test and by a benchmark.

The whole service (its loops, one pass per ``sleep_time``) against the
CodaLab simulator on 127.0.0.1, with the ``local`` backend starting real
stand-in ``cl-worker`` processes: they register, check in every second, run
one bundle at a time (one cpu each, as the bundles), and exit without
checking out after ``IDLE_SECONDS`` idle; CodaLab keeps listing (and
dispatching to) an exited worker for 60 s.  ``FIRST`` bundles of
``RUN_SECONDS`` are staged at once, ``SECOND`` more ``GAP_SECONDS`` later.

Everything is measured from the simulator's own records: each bundle's wait
from staged to picked up by a worker, the workers that registered and how
many runs each took, the dispatches that went to workers no longer there.
Workers launched but never registered count as never having run a bundle.
"""

from __future__ import annotations

import asyncio
import stat
import statistics
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.service.app import make_app
from codalab_scaler.service.context import Context
from codalab_scaler.simulator import CodaLabSimulator
from tests.harness import started

USER, PASSWORD = "codalab", "two-bursts-pw"
FIRST, SECOND = 20, 10
RUN_SECONDS = 10.0
GAP_SECONDS = 60.0
IDLE_SECONDS = 20
SLEEP_TIME = 1.0
MAX_WORKERS = 30
DEADLINE_SECONDS = 400.0  # the whole workload, generously; the loop below is bounded by it
POLL_SECONDS = 0.5

# The original's fastest: one launch per pass, no gap.
COMPAT_FASTEST: Mapping[str, Any] = {"policy": "compat", "min_seconds_between_workers": 0}
FAST: Mapping[str, Any] = {"policy": "fast"}


@dataclass(frozen=True)
class Outcome:
    policy: str
    pool: dict[str, Any]
    worker_timeout: float
    mean_wait_seconds: float
    mean_wait_first_burst: float
    mean_wait_second_burst: float
    max_wait_seconds: float
    launched: int
    launched_first_burst: int  # before the second burst was staged
    ran_first_burst: int  # workers that had run a bundle by then
    registered: int
    ran_a_bundle: int
    never_ran: int
    failed_dispatches: int
    checked_out: int  # exited workers the scaler checked out of CodaLab
    waits: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def worker_script(directory: Path) -> Path:
    path = directory / "cl-worker"
    path.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m codalab_scaler.simulator.stand_in_worker "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def settings(url: str, directory: Path, pool: Mapping[str, Any]) -> Settings:
    return Settings.model_validate(
        {
            "server": url,
            "username": USER,
            "password": PASSWORD,
            "sleep_time": SLEEP_TIME,
            "request_timeout_seconds": 5,
            "pools": {
                "p": {
                    "min_workers": 0,
                    "max_workers": MAX_WORKERS,
                    "worker_executable": str(worker_script(directory)),
                    "worker_idle_seconds": IDLE_SECONDS,
                    "worker_checkin_frequency_seconds": 1,
                    "backend": {"kind": "local", "state_dir": str(directory / "state")},
                    **pool,
                }
            },
        }
    )


def _launched(registry: CollectorRegistry) -> int:
    value = registry.get_sample_value(
        "codalab_scaler_launches_total", {"pool": "p", "outcome": "launched"}
    )
    return int(value or 0)


async def _until_started(sim: CodaLabSimulator, uuids: list[str], deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        if all(sim.bundle(u).started_at is not None for u in uuids):
            return
        await asyncio.sleep(POLL_SECONDS)
    missing = [u for u in uuids if sim.bundle(u).started_at is None]
    raise TimeoutError(f"{len(missing)} bundles never started: {missing[:3]}")


async def _stop_workers(ctx: Context) -> None:
    for pool in ctx.pools.values():
        stop = getattr(pool.backend, "stop_all", None)
        if stop is not None:
            await stop(timeout=5)


async def run(directory: Path, pool: Mapping[str, Any], *, worker_timeout: float = 60.0) -> Outcome:
    """Run the workload once with ``pool``'s settings; every server and worker is stopped.

    ``worker_timeout`` is how long CodaLab lists a worker after its last check-in.
    """
    directory.mkdir(parents=True, exist_ok=True)
    sim = CodaLabSimulator(users={USER: PASSWORD}, worker_timeout=worker_timeout)
    await sim.start()
    try:
        registry = CollectorRegistry()
        app = make_app(settings(sim.url, directory, pool), registry=registry)
        loop = asyncio.get_running_loop()
        async with started(app) as ctx:
            try:
                deadline = loop.time() + DEADLINE_SECONDS
                first = [sim.add_bundle(USER, duration=RUN_SECONDS) for _ in range(FIRST)]
                await asyncio.sleep(GAP_SECONDS)
                first_launches, first_ran = _launched(registry), _ran(sim)
                second = [sim.add_bundle(USER, duration=RUN_SECONDS) for _ in range(SECOND)]
                await _until_started(sim, first + second, deadline)
                launched = _launched(registry)
            finally:
                await _stop_workers(ctx)
        return _outcome(sim, pool, (first, second), (first_launches, first_ran), launched)
    finally:
        await sim.stop()


def _ran(sim: CodaLabSimulator) -> int:
    return sum(1 for runs in sim.runs_by_worker.values() if runs > 0)


def _outcome(
    sim: CodaLabSimulator,
    pool: Mapping[str, Any],
    bursts: tuple[list[str], list[str]],
    at_second_burst: tuple[int, int],
    launched: int,
) -> Outcome:
    def wait(uuid: str) -> float:
        bundle = sim.bundle(uuid)
        assert bundle.started_at is not None
        return bundle.started_at - bundle.staged_at

    first, second = bursts
    waits = [wait(u) for u in first + second]
    ran = _ran(sim)
    return Outcome(
        policy=str(pool.get("policy", "compat")),
        pool=dict(pool),
        worker_timeout=sim.worker_timeout,
        mean_wait_seconds=round(statistics.fmean(waits), 2),
        mean_wait_first_burst=round(statistics.fmean(waits[: len(first)]), 2),
        mean_wait_second_burst=round(statistics.fmean(waits[len(first) :]), 2),
        max_wait_seconds=round(max(waits), 2),
        launched=launched,
        launched_first_burst=at_second_burst[0],
        ran_first_burst=at_second_burst[1],
        registered=len(sim.runs_by_worker),
        ran_a_bundle=ran,
        never_ran=max(launched, len(sim.runs_by_worker)) - ran,
        failed_dispatches=sim.failed_dispatches,
        checked_out=len(sim.checkouts),
        waits=[round(w, 2) for w in waits],
    )
