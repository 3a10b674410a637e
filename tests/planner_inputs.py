"""Builders of planner inputs for the table and property tests of the pure planner."""

from __future__ import annotations

from dataclasses import replace

from codalab_scaler.core.decision import Policy
from codalab_scaler.core.model import (
    BundleView,
    InFlightLaunch,
    JobState,
    Observation,
    PoolState,
    StagedBundle,
    WorkerJob,
)
from codalab_scaler.core.planner import Memory, PolicyKind, PoolInput, PoolSpec
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.routing import RouteSpec
from codalab_scaler.core.supply import RegisteredWorker

NOW = 10_000.0
GIB = 1 << 30


def bundle(n: int, cpus: int = 1, gpus: int = 0, memory_gb: int = 1, tag: str = "") -> StagedBundle:
    return StagedBundle(f"0x{n:032x}", cpus, gpus, memory_gb * GIB, tag)


def spec(  # noqa: PLR0913 - a test builder: every knob by keyword, defaults for the rest
    name: str = "p",
    *,
    kind: PolicyKind = PolicyKind.FAST,
    cpus: int = 1,
    gpus: int = 0,
    memory_mb: int = 2048,
    tag: str | None = None,
    exclusive: bool = False,
    priority: int = 0,
    prefilter: bool = True,
    min_workers: int = 0,
    max_workers: int = 10,
    cooldown: int = 0,
    per_pass: int = 1,
    rate: float = 60,
    burst: int = 20,
    min_idle: int = 0,
    provision_timeout: float = 900,
) -> PoolSpec:
    return PoolSpec(
        route=RouteSpec(
            name, WorkerShape(cpus, gpus, memory_mb), tag, exclusive, priority, prefilter
        ),
        kind=kind,
        limits=Policy(min_workers, max_workers, cooldown, 15, per_pass),
        launch_rate_per_minute=rate,
        launch_burst=burst,
        min_idle_workers=min_idle,
        provision_timeout=provision_timeout,
        backoff_initial=10,
        backoff_max=300,
    )


def state(
    bundles: tuple[StagedBundle, ...] = (),
    jobs: tuple[WorkerJob, ...] = (),
    *,
    in_flight: tuple[InFlightLaunch, ...] = (),
    age: float = 0.0,
    last_launch_at: float | None = None,
) -> PoolState:
    return PoolState(
        bundles=Observation(BundleView(staged=bundles), observed_at=NOW - age),
        jobs=Observation(jobs, observed_at=NOW - age),
        in_flight=in_flight,
        last_launch_at=last_launch_at,
    )


def pool(s: PoolSpec, st: PoolState, memory: Memory | None = None) -> PoolInput:
    return PoolInput(s, st if memory is None else replace(st, memory=memory))


def job(worker: str, st: JobState = JobState.ACTIVE) -> WorkerJob:
    return WorkerJob(f"job-{worker}", st, worker)


def checked_in(
    worker: str, *, cpus: int = 1, in_use: int = 0, gpus: int = 0, runs: int = 0, mem_gb: int = 2
) -> RegisteredWorker:
    return RegisteredWorker(
        worker_id=f"host-{worker}",
        cpus=cpus,
        gpus=gpus,
        memory_bytes=mem_gb * GIB,
        cpus_in_use=in_use,
        run_uuids=tuple(f"run{i}" for i in range(runs)),
    )


def seen(*workers: RegisteredWorker, age: float = 0.0) -> Observation[tuple[RegisteredWorker, ...]]:
    return Observation(tuple(workers), observed_at=NOW - age)
