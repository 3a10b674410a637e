"""A large, realistic planner input: 10,000 staged bundles, 5,000 jobs, 5 pools.

Deterministic (a seeded ``random.Random``), so two runs, or a run before and
after a change, plan the same world.  Built as the service builds its inputs:
each pool's view is its search's answer after its prefilter, jobs are listed
by the backend, and ``workers/info`` holds the check-ins of the jobs that
registered (plus workers the scaler did not launch).

The pools (shapes, tags, policies) and the bundles' mix:

- ``cpu``    fast,   2 cpus,  8 GiB, untagged: the small default;
- ``big``    fast,   8 cpus, 32 GiB, untagged: where large bundles go;
- ``gpu``    fast,   4 cpus, 1 gpu, 32 GiB, untagged;
- ``queue``  fast,   4 cpus, 16 GiB, tag ``q``, exclusive (its search asks for the tag);
- ``legacy`` compat, 2 cpus,  4 GiB, untagged, priority 1, its search narrowed to five
  owners (a group's own pool, kept on the original's rules).

Bundles: mostly 1-2 cpus and 1-8 GiB, some large (up to 16 cpus, so some
are too large for every pool), one in ten asks for a gpu (some for two), one
in ten for the tag ``q``, one in a hundred for a tag no pool has.  Jobs:
1,000 per pool, a fifth pending, the rest running, nine in ten of those
checked in with CodaLab (most busy, some idle), a few booting past the
provision timeout (stuck).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.model import (
    InFlightLaunch,
    JobState,
    Observation,
    PlannerMemory,
    PoolState,
    RegisteredWorker,
    StagedBundle,
    WorkerJob,
)
from codalab_scaler.core.pacing import TokenBucket
from codalab_scaler.core.planner import PolicyKind, PoolInput
from codalab_scaler.core.prefilter import prefilter

GIB = 1 << 30
NOW = 100_000.0


@dataclass(frozen=True, slots=True)
class PoolShape:
    name: str
    kind: PolicyKind
    cpus: int
    gpus: int
    memory_gb: int
    tag: str | None = None
    exclusive: bool = False
    priority: int = 0
    owners: frozenset[str] | None = None  # a search narrowed to these owners (a group's pool)


LEGACY_OWNERS = frozenset(f"user{i}" for i in range(5))
POOLS = (
    PoolShape("cpu", PolicyKind.FAST, 2, 0, 8),
    PoolShape("big", PolicyKind.FAST, 8, 0, 32),
    PoolShape("gpu", PolicyKind.FAST, 4, 1, 32),
    PoolShape("queue", PolicyKind.FAST, 4, 0, 16, tag="q", exclusive=True),
    PoolShape("legacy", PolicyKind.COMPAT, 2, 0, 4, priority=1, owners=LEGACY_OWNERS),
)


@dataclass(frozen=True, slots=True)
class World:
    pools: tuple[PoolInput, ...]
    workers: Observation[tuple[RegisteredWorker, ...]]
    bundles: tuple[StagedBundle, ...]
    now: float = NOW

    @property
    def jobs(self) -> int:
        return sum(len(p.state.jobs.value or ()) for p in self.pools)


def _bundle(rng: random.Random, i: int) -> StagedBundle:
    roll = rng.random()
    if roll < 0.7:
        cpus, memory = rng.choice((1, 1, 1, 2)), rng.choice((1, 2, 4, 8))
    elif roll < 0.97:
        cpus, memory = rng.choice((4, 6, 8)), rng.choice((8, 16, 32))
    else:
        cpus, memory = rng.choice((12, 16)), 64  # too large for every pool
    gpus = 0
    if rng.random() < 0.1:
        gpus = 2 if rng.random() < 0.1 else 1
    tag_roll = rng.random()
    tag = "q" if tag_roll < 0.1 else ("z" if tag_roll < 0.11 else "")
    owner = f"user{rng.randrange(50)}"
    return StagedBundle(f"0x{i:032x}", cpus, gpus, memory * GIB, tag, owner)


def settings(max_workers: int = 2_000) -> Settings:
    """The five pools as an operator's TOML would declare them (``local`` backends)."""
    pools: dict[str, Any] = {}
    for shape in POOLS:
        pools[shape.name] = {
            "policy": shape.kind.value,
            "min_workers": 1,
            "max_workers": max_workers,
            "priority": shape.priority,
            "worker_tag": shape.tag,
            "worker_tag_exclusive": shape.exclusive,
            "min_idle_workers": 2,
            "backend": {
                "kind": "local",
                "cpus": shape.cpus,
                "gpus": shape.gpus,
                "memory_mb": shape.memory_gb * 1024,
            },
        }
    return Settings.model_validate(
        {"username": "codalab", "password": "bench", "sleep_time": 5, "pools": pools}
    )


def _searched(shape: PoolShape, bundles: tuple[StagedBundle, ...]) -> tuple[StagedBundle, ...]:
    """What the pool's search returns: everything, or only its tag, or only its owners."""
    if shape.tag and shape.exclusive:
        bundles = tuple(b for b in bundles if b.tag == shape.tag)
    if shape.owners is not None:
        bundles = tuple(b for b in bundles if b.owner in shape.owners)
    return bundles


def world(
    bundles: int = 10_000, jobs_per_pool: int = 1_000, *, seed: int = 10, max_workers: int = 2_000
) -> World:
    """The benchmark's input; ``len(POOLS) * jobs_per_pool`` jobs in all."""
    rng = random.Random(seed)
    config = settings(max_workers)
    staged = tuple(_bundle(rng, i) for i in range(bundles))
    check_ins: list[RegisteredWorker] = []
    pools: list[PoolInput] = []
    for shape in POOLS:
        jobs: list[WorkerJob] = []
        booting: dict[str, float] = {}
        for j in range(jobs_per_pool):
            worker_id = f"{rng.getrandbits(128):032x}"
            job_id = f"{shape.name}-{j:06d}-{rng.getrandbits(32):08x}"
            pending = rng.random() < 0.2
            jobs.append(WorkerJob(job_id, JobState.PENDING if pending else JobState.ACTIVE,
                                  worker_id))  # fmt: skip
            if pending or rng.random() < 0.1:
                # Booting since an earlier pass; a few past the provision timeout (stuck).
                booting[job_id] = NOW - (1_000 if rng.random() < 0.05 else rng.uniform(0, 600))
                continue
            busy = rng.random() < 0.85
            in_use = rng.randint(1, shape.cpus) if busy else 0
            runs = tuple(f"0x{rng.getrandbits(128):032x}" for _ in range(in_use))
            check_ins.append(
                RegisteredWorker(
                    worker_id=f"host{j % 97}-{worker_id}",
                    cpus=shape.cpus,
                    gpus=shape.gpus,
                    memory_bytes=shape.memory_gb * GIB,
                    cpus_in_use=in_use,
                    gpus_in_use=min(shape.gpus, in_use),
                    run_uuids=runs,
                    tag=shape.tag,
                    checkin_time=NOW - rng.uniform(0, 5),
                )
            )
        in_flight = tuple(
            InFlightLaunch(f"{shape.name}-flight-{k}", f"{rng.getrandbits(128):032x}", NOW - 2)
            for k in range(3)
        )
        spec = config.pool_spec(shape.name)
        view = prefilter(_searched(shape, staged), spec.route.shape)
        memory = PlannerMemory(bucket=TokenBucket(5.0, NOW - 1), booting_since=booting)
        state = PoolState(
            bundles=Observation(view, observed_at=NOW - 1),
            jobs=Observation(tuple(jobs), observed_at=NOW - 1),
            in_flight=in_flight,
            last_launch_at=NOW - 30,
            memory=memory,
        )
        pools.append(PoolInput(spec, state))
    # Workers CodaLab knows that this scaler did not launch (another scaler, by hand).
    check_ins.extend(
        RegisteredWorker(f"static-{k}", 4, 0, 16 * GIB, run_uuids=()) for k in range(200)
    )
    rng.shuffle(check_ins)
    return World(tuple(pools), Observation(tuple(check_ins), observed_at=NOW - 1), staged)
