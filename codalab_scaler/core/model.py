"""The data every part of the scaler shares: frozen values, replaced whole, never mutated.

Times are seconds on the scaler's monotonic clock (``Clock.now``); ``/status``
turns them into ages.  Pollers own one field each (the jobs poller also counts
failed starts); the scaler owns the launch bookkeeping (in-flight launches,
last launch time) and the pool's last decision.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from codalab_scaler.core.pacing import Backoff, TokenBucket

T = TypeVar("T")


class JobState(enum.StrEnum):
    """What a backend's job means for capacity: booting (pending) or serving (active).

    ``FAILED`` is a report, not capacity: a job that ended failed (the
    worker exited non-zero, or the backend failed it) or vanished before it
    ran.  A backend lists such a job once; the jobs poller counts it as a
    failed start and keeps it out of the view.
    """

    PENDING = "pending"
    ACTIVE = "active"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StagedBundle:
    """A staged run bundle, normalised as the CodaLab server does."""

    uuid: str
    cpus: int
    gpus: int
    memory_bytes: int
    tag: str
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class FilteredBundle:
    """A staged bundle this pool's workers cannot serve, and why."""

    uuid: str
    reason: str  # "cpus" | "gpus" | "memory"
    requested: int
    available: int


@dataclass(frozen=True, slots=True)
class WorkerJob:
    """One worker job as the backend lists it."""

    job_id: str
    state: JobState
    worker_id: str = ""
    reason: str = ""  # why a FAILED job failed, in the backend's words


@dataclass(frozen=True, slots=True)
class RegisteredWorker:
    """One entry of ``GET /rest/workers/info``: a worker checked in with CodaLab."""

    worker_id: str
    cpus: int
    gpus: int
    memory_bytes: int
    cpus_in_use: int = 0
    gpus_in_use: int = 0
    run_uuids: tuple[str, ...] = ()
    tag: str | None = None
    checkin_time: float | None = None

    @property
    def idle(self) -> bool:
        return not self.run_uuids


@dataclass(frozen=True, slots=True)
class PlannerMemory:
    """What the planner remembers of a pool between passes (see ``core.planner``).

    ``failed_starts_seen`` is the pool's ``failed_starts`` the planner last
    acted on, so a new failed start backs a ``fast`` pool off once.
    ``live_workers`` are the worker ids of the pool's live jobs at the last
    pass with a good job view; ``exited`` maps each worker whose job has ended
    since and that CodaLab still lists to the check-in time it shows and when
    (this clock) that check-in time was first seen (see ``supply.settle``).
    """

    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(0.0))
    backoff: Backoff = field(default_factory=Backoff)
    booting_since: Mapping[str, float] = field(default_factory=dict)
    failed_starts_seen: int = 0
    live_workers: frozenset[str] = frozenset()
    exited: Mapping[str, tuple[float | None, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BundleView:
    """What the bundle poller saw for one pool: servable bundles and the filtered rest."""

    staged: tuple[StagedBundle, ...] = ()
    filtered: tuple[FilteredBundle, ...] = ()
    malformed: int = 0


@dataclass(frozen=True, slots=True)
class Observation(Generic[T]):
    """The last good value of one source and how the latest poll went.

    ``value`` and ``observed_at`` belong to the last *successful* poll and are
    kept when a later poll fails; ``error`` is the latest poll's failure (None
    after a success).  A source that never succeeded has ``observed_at`` None.
    """

    value: T | None = None
    observed_at: float | None = None
    error: str | None = None

    def succeeded(self, value: T, now: float) -> Observation[T]:
        return Observation(value=value, observed_at=now, error=None)

    def failed(self, error: str) -> Observation[T]:
        return Observation(value=self.value, observed_at=self.observed_at, error=error)

    @property
    def attempted(self) -> bool:
        """A poll has run (every poll ends in a success or an error)."""
        return self.observed_at is not None or self.error is not None

    @property
    def ok(self) -> bool:
        """The last poll succeeded (so there is a value and it is not marked failed)."""
        return self.observed_at is not None and self.error is None

    def age(self, now: float) -> float | None:
        return None if self.observed_at is None else now - self.observed_at


@dataclass(frozen=True, slots=True)
class InFlightLaunch:
    """A launch the backend accepted and does not list yet: counted as pending."""

    job_id: str
    worker_id: str
    launched_at: float


class Reason(enum.StrEnum):
    """The rule that settled a decision (see ``core.decision``)."""

    STAGED_WORK = "staged_work"
    BELOW_MIN = "below_min"
    NO_STAGED = "no_staged"
    COOLDOWN = "cooldown"
    PENDING_COVERS_STAGED = "pending_covers_staged"
    AT_MAX = "at_max"
    STALE_VIEW = "stale_view"
    # The planner's fast policy and backoff (see ``core.planner``).
    BACKING_OFF = "backing_off"
    RATE_LIMITED = "rate_limited"
    MIN_IDLE = "min_idle"
    COVERED_BY_WORKERS = "covered_by_workers"


@dataclass(frozen=True, slots=True)
class Counts:
    staged: int = 0
    pending: int = 0
    active: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.active


@dataclass(frozen=True, slots=True)
class Decision:
    """How many workers to launch now and why.

    ``reason`` is the one reason that settled it; ``blocked_by`` lists every
    rule that held back staged work (the original logged each of them).
    ``stale`` names the views that were too old or failed, when any.
    """

    launch: int
    reason: Reason
    counts: Counts
    blocked_by: tuple[Reason, ...] = ()
    stale: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Attempts:
    """An action taken once per item (cancel a stuck job, check out an exited worker).

    ``done``: the items it succeeded for; ``failures``: how often it failed for
    each other item.  The service keeps only the items still concerned.
    """

    done: frozenset[str] = frozenset()
    failures: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolState:
    """Everything known about one pool at one moment.

    ``last_decision`` is the scaler's latest pass (None before the first);
    ``failed_starts`` counts the jobs listed as failed since the process started;
    ``cancels`` are the stuck jobs this process cancelled or tried to, and
    ``checkouts`` the exited workers it checked out of CodaLab or tried to.
    """

    bundles: Observation[BundleView] = field(default_factory=Observation)
    jobs: Observation[tuple[WorkerJob, ...]] = field(default_factory=Observation)
    in_flight: tuple[InFlightLaunch, ...] = ()
    last_launch_at: float | None = None
    last_decision: Decision | None = None
    failed_starts: int = 0
    memory: PlannerMemory = field(default_factory=PlannerMemory)
    cancels: Attempts = field(default_factory=Attempts)
    checkouts: Attempts = field(default_factory=Attempts)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole shared state: one ``PoolState`` per pool, stamped with its time.

    ``workers`` is the service's one view of ``GET /rest/workers/info``.
    """

    taken_at: float
    pools: Mapping[str, PoolState]
    version: int = 0
    workers: Observation[tuple[RegisteredWorker, ...]] = field(default_factory=Observation)
