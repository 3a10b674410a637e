"""The planner: one pass over every pool at once, a pure function of the shared view.

``plan(pools, workers, now)`` joins each pool's backend jobs to the CodaLab
check-ins (``supply``), routes every staged bundle to at most one pool
(``routing``), then applies each pool's policy to the bundles it counts:

- ``compat``: the original's rules (``decision.decide``), unchanged, on the
  pool's routed bundles; with one pool this is today's decision exactly.
- ``fast``: place the bundles on serving then booting workers and bin-pack
  the rest into new workers (``placement``); launch
  ``min(needed, max - total, tokens)``, ``min_workers`` and
  ``min_idle_workers`` held within max; never on a stale view (bundles,
  jobs, or the workers/info check-ins).

A pool in backoff launches nothing and gets no new bundles.  The planner's
own memory per pool (token bucket, backoff, when each worker started
booting) is data passed in and returned; the service stores it and applies
``after_launches`` once it has acted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from codalab_scaler.core.decision import Decision, Policy, decide, stale_view
from codalab_scaler.core.model import (
    BundleView,
    Counts,
    Observation,
    PlannerMemory,
    PoolState,
    Reason,
    StagedBundle,
)
from codalab_scaler.core.placement import Packing, Placement, pack
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.routing import Availability, RouteSpec, Routing, route
from codalab_scaler.core.supply import (
    Capacity,
    PoolWorker,
    RegisteredWorker,
    WorkerState,
    booting_since,
    classify,
    exited,
    live_worker_ids,
    registrations,
    settle,
)


class PolicyKind(enum.StrEnum):
    COMPAT = "compat"
    FAST = "fast"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One pool's settings as the planner uses them (values only; defaults live in settings)."""

    route: RouteSpec
    kind: PolicyKind
    limits: Policy
    launch_rate_per_minute: float
    launch_burst: int
    min_idle_workers: int
    provision_timeout: float
    backoff_initial: float
    backoff_max: float
    # How long a registration's check-in time must stand still before its worker,
    # whose job is gone, is taken for dead (about two check-in periods).
    checkin_grace: float = 42.0

    @property
    def name(self) -> str:
        return self.route.name


# The planner's memory of a pool lives in the pool's state (``PoolState.memory``).
Memory = PlannerMemory


@dataclass(frozen=True, slots=True)
class PoolInput:
    """One pool: its settings and its state (``state.memory`` is the planner's memory).

    ``state.bundles`` holds what the pool's search returned; the router applies
    the fit itself, so a view already prefiltered gives the same routing.
    """

    spec: PoolSpec
    state: PoolState


@dataclass(frozen=True, slots=True)
class PoolPlan:
    name: str
    kind: PolicyKind
    launch: int
    reason: Reason
    counted: int
    total: int
    workers: tuple[PoolWorker, ...]
    needed: int | None = None
    placements: tuple[Placement, ...] = ()
    decision: Decision | None = None
    stale: tuple[str, ...] = ()
    tokens: int = 0
    backoff_remaining: float = 0.0
    registered: tuple[str, ...] = ()
    # Jobs of ``registered`` whose worker announced less than the pool's shape.
    smaller: tuple[str, ...] = ()
    # Registered ids (as CodaLab lists them) of this pool's workers whose job has ended
    # and whose check-in time has stood still for the pool's ``checkin_grace``.
    exited: tuple[str, ...] = ()
    memory: Memory = field(default_factory=Memory)

    def by_state(self, state: WorkerState) -> tuple[PoolWorker, ...]:
        return tuple(w for w in self.workers if w.state is state)


@dataclass(frozen=True, slots=True)
class Plan:
    routing: Routing
    pools: Mapping[str, PoolPlan]
    at: float = 0.0


def _supply(
    pool: PoolInput,
    index: Mapping[str, RegisteredWorker],
    *,
    fresh: bool,
    now: float,
) -> tuple[tuple[PoolWorker, ...], Memory, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The pool's workers, its memory, and its newly registered, smaller and dead-exited workers.

    ``fresh``: the workers/info view is good and recent.  Without it nothing
    can be told stuck (a worker that registered meanwhile looks booting) and
    no exited worker is proven dead.
    """
    state, spec, memory = pool.state, pool.spec, pool.state.memory
    jobs = state.jobs.value or ()
    since = booting_since(memory.booting_since, jobs, state.in_flight, index, now)
    timeout = spec.provision_timeout if fresh else float("inf")
    workers = classify(jobs, state.in_flight, index, since, spec.route.shape,
                       provision_timeout=timeout, now=now)  # fmt: skip
    before = memory.booting_since
    newly = [w for w in workers if w.state is WorkerState.SERVING and w.job_id in before]
    small = {w.job_id for w in newly if w.total is not None and smaller(w.total, spec.route.shape)}
    registered = tuple(w.job_id for w in newly)
    # A worker smaller than the shape (a GPU pool's worker that found no GPU) is no
    # sign the pool works: its backoff is not reset by it.
    backoff = memory.backoff.reset() if len(small) < len(newly) else memory.backoff
    memory = replace(memory, booting_since=since, backoff=backoff)
    dead: frozenset[str] = frozenset()
    if fresh and stale_view("jobs", state.jobs, spec.limits, now) is None:
        live = live_worker_ids(jobs, state.in_flight)
        gone = exited(memory.live_workers, memory.exited, live, index)
        watched, dead = settle(gone, memory.exited, index, grace=spec.checkin_grace, now=now)
        memory = replace(memory, live_workers=live, exited=watched)
    listed = tuple(sorted(index[w].worker_id for w in dead))
    return workers, memory, registered, tuple(sorted(small)), listed


def smaller(total: Capacity, shape: WorkerShape) -> bool:
    """A registration short of the shape: fewer cpus or gpus, or under 90 % of its memory.

    cl-worker announces the host's memory, a little under the nominal size
    (a "16 GB" node has about 15.5 GiB): that is no reason to back off.
    """
    return (
        total.cpus < shape.cpus
        or total.gpus < shape.gpus
        or total.memory_bytes < shape.memory_bytes * MEMORY_TOLERANCE
    )


MEMORY_TOLERANCE = 0.9


def _full(spec: PoolSpec, workers: Sequence[PoolWorker], *, known: bool) -> bool:
    if len(workers) < spec.limits.max_workers:
        return False
    if not known:
        return True
    return not any(
        w.state is WorkerState.BOOTING or (w.state is WorkerState.SERVING and w.free.cpus > 0)
        for w in workers
    )


def plan(
    pools: Sequence[PoolInput], workers: Observation[tuple[RegisteredWorker, ...]], now: float
) -> Plan:
    index = registrations(workers.value or ()) if workers.value is not None else {}
    known = workers.value is not None
    supplies = {
        p.spec.name: _supply(
            p, index, fresh=stale_view("workers", workers, p.spec.limits, now) is None, now=now
        )
        for p in pools
    }
    availability = {
        p.spec.name: Availability(
            backing_off=supplies[p.spec.name][1].backoff.active(now),
            full=_full(p.spec, supplies[p.spec.name][0], known=known),
            stale=bool(_stale_views(p, workers, now)),
        )
        for p in pools
    }
    searched = {
        p.spec.name: (p.state.bundles.value.staged if p.state.bundles.value else ()) for p in pools
    }
    filtered = {
        p.spec.name: (p.state.bundles.value.filtered if p.state.bundles.value else ())
        for p in pools
    }
    routing = route([p.spec.route for p in pools], searched, availability, filtered)
    plans: dict[str, PoolPlan] = {}
    for p in pools:
        pool_workers, memory, registered, small, dead = supplies[p.spec.name]
        counted = routing.counted(p.spec.name)
        one = _compat if p.spec.kind is PolicyKind.COMPAT else _fast
        plans[p.spec.name] = one(p, counted, pool_workers, memory, workers, now)
        plans[p.spec.name] = replace(
            plans[p.spec.name], registered=registered, smaller=small, exited=dead
        )
    return Plan(routing=routing, pools=plans, at=now)


def _stale_views(
    pool: PoolInput, check_ins: Observation[tuple[RegisteredWorker, ...]], now: float
) -> tuple[str, ...]:
    """The views this pool may not act on: bundles and jobs, and workers/info for ``fast``."""
    views: list[tuple[str, Observation[Any]]] = [
        ("bundles", pool.state.bundles),
        ("jobs", pool.state.jobs),
    ]
    if pool.spec.kind is PolicyKind.FAST:
        views.append(("workers", check_ins))
    found = (stale_view(name, obs, pool.spec.limits, now) for name, obs in views)
    return tuple(s for s in found if s is not None)


def _compat(
    pool: PoolInput,
    counted: tuple[StagedBundle, ...],
    workers: tuple[PoolWorker, ...],
    memory: Memory,
    _check_ins: Observation[tuple[RegisteredWorker, ...]],
    now: float,
) -> PoolPlan:
    state = pool.state
    bundles = Observation(
        BundleView(staged=counted), observed_at=state.bundles.observed_at, error=state.bundles.error
    )
    decision = decide(replace(state, bundles=bundles), pool.spec.limits, now)
    launch, reason = decision.launch, decision.reason
    if memory.backoff.active(now) and not decision.stale:
        launch, reason = 0, Reason.BACKING_OFF
    return PoolPlan(
        name=pool.spec.name,
        kind=PolicyKind.COMPAT,
        launch=launch,
        reason=reason,
        counted=len(counted),
        total=decision.counts.total,
        workers=workers,
        decision=decision,
        stale=decision.stale,
        backoff_remaining=memory.backoff.remaining(now),
        memory=memory,
    )


def _fast(
    pool: PoolInput,
    counted: tuple[StagedBundle, ...],
    workers: tuple[PoolWorker, ...],
    memory: Memory,
    check_ins: Observation[tuple[RegisteredWorker, ...]],
    now: float,
) -> PoolPlan:
    spec = pool.spec
    limits = spec.limits
    tokens = memory.bucket.available(now, spec.launch_rate_per_minute, spec.launch_burst)
    stale = _stale_views(pool, check_ins, now)
    live = [w for w in workers if w.state is not WorkerState.STUCK]
    packing: Packing = pack(counted, live, spec.route.shape)
    total = len(workers)
    base = PoolPlan(
        name=spec.name, kind=PolicyKind.FAST, launch=0, reason=Reason.NO_STAGED,
        counted=len(counted),
        total=total, workers=workers, needed=packing.new_workers,
        placements=packing.placements, stale=stale, tokens=tokens,
        backoff_remaining=memory.backoff.remaining(now), memory=memory,
    )  # fmt: skip
    if stale:
        return _with_decision(replace(base, reason=Reason.STALE_VIEW))
    if memory.backoff.active(now):
        return _with_decision(replace(base, reason=Reason.BACKING_OFF))
    idle = {w.job_id for w in live if w.state is WorkerState.BOOTING or w.idle}
    spares = sum(1 for job in packing.untouched if job in idle)
    for_idle = max(spec.min_idle_workers - spares, 0)
    for_min = max(limits.min_workers - total, 0)
    want = max(packing.new_workers + for_idle, for_min)
    room = max(limits.max_workers - total, 0)
    launch = min(want, room, tokens)
    if want == 0:
        reason = Reason.COVERED_BY_WORKERS if counted else Reason.NO_STAGED
    elif room == 0:
        reason = Reason.AT_MAX
    elif tokens == 0:
        reason = Reason.RATE_LIMITED
    elif for_min > packing.new_workers + for_idle:
        reason = Reason.BELOW_MIN
    elif packing.new_workers == 0:
        reason = Reason.MIN_IDLE
    else:
        reason = Reason.STAGED_WORK
    return _with_decision(replace(base, launch=launch, reason=reason))


def _with_decision(p: PoolPlan) -> PoolPlan:
    """A fast pool's plan as a ``Decision`` too (booting and stuck count as pending)."""
    serving = len(p.by_state(WorkerState.SERVING))
    counts = Counts(staged=p.counted, pending=p.total - serving, active=serving)
    return replace(p, decision=Decision(p.launch, p.reason, counts, stale=p.stale))


def after_launches(spec: PoolSpec, memory: Memory, attempts: int, now: float) -> Memory:
    """Spend one token per launch attempt of a ``fast`` pool (compat pools have no bucket)."""
    if spec.kind is not PolicyKind.FAST or attempts == 0:
        return memory
    bucket = memory.bucket.take(attempts, now, spec.launch_rate_per_minute, spec.launch_burst)
    return replace(memory, bucket=bucket)


def after_failure(spec: PoolSpec, memory: Memory, now: float, jitter: float) -> Memory:
    """A refused or failed launch, a failed start or a cancelled stuck worker: back off."""
    backoff = memory.backoff.failed(
        now, jitter, initial=spec.backoff_initial, maximum=spec.backoff_max
    )
    return replace(memory, backoff=backoff)
