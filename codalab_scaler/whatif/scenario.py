"""What a replay takes (a scenario: pools, their models, the clock) and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass

from codalab_scaler.core.planner import PoolSpec


@dataclass(frozen=True, slots=True)
class PoolModel:
    """What the simulation assumes of one pool's backend (no setting of the service)."""

    boot_seconds: float = 90.0  # median from provisioning to registration
    boot_sigma: float = 0.3  # lognormal spread of that delay
    capacity: int | None = None  # jobs the backend runs at once; more wait in its queue
    refuse_rate: float = 0.0
    fail_rate: float = 0.0
    stuck_rate: float = 0.0
    stuck_seconds: float = 3600.0  # a stuck job ends, as a failed start, after this


@dataclass(frozen=True, slots=True)
class SimPool:
    spec: PoolSpec
    model: PoolModel
    idle_seconds: float
    exit_after_runs: int | None = None
    cancel_stuck: bool = False


@dataclass(frozen=True, slots=True)
class Scenario:
    """One configuration to replay."""

    name: str
    pools: tuple[SimPool, ...]
    sleep_time: float
    quota: int | None = None
    drain_seconds: float = 6 * 3600.0
    sample_seconds: float = 60.0
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    pool: str
    staged: int
    booting: int
    serving: int
    idle: int
    stuck: int


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    end: float
    waits: tuple[float, ...]  # staged to started; unstarted bundles counted up to the end
    started: int
    unstarted: int
    unroutable: int
    launches: int
    refused: int
    failed_starts: int
    stuck: int
    cancelled: int
    worker_seconds: float
    idle_worker_seconds: float
    never_ran: int
    workers: int
    passes: int
    planned: int
    samples: tuple[Sample, ...] = ()
