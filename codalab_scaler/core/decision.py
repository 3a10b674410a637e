"""The launch rules: a pure function from a pool's state to a decision with its reason.

No I/O, no clock reads, no logging: the scaler loop passes ``now`` in and acts
on the result.  In the default policy (one launch per pass) the rules are the
original ``cl-worker-manager``'s, in its order:

1. want a worker when staged > 0;
2. but not within ``min_seconds_between_workers`` of the last launch,
3. nor when pending >= staged,
4. nor when total >= max;
5. launch anyway when total < min;
6. at most one launch per pass.

Two things are new.  A view that is missing, failed or older than the
staleness limit launches nothing (``stale_view``), not even for the minimum:
an unknown count is never read as zero.  And ``max_launches_per_pass`` > 1
lets a pool catch up on a backlog in one pass instead of one per cooldown,
still bounded by staged - pending and by max - total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The decision's own types live with the rest of the shared data (a pool's state
# keeps its last decision); they are re-exported here, where the rules use them.
from codalab_scaler.core.model import (
    Counts,
    Decision,
    JobState,
    Observation,
    PoolState,
    Reason,
)

__all__ = ["Counts", "Decision", "Policy", "Reason", "count", "decide", "stale_view"]


@dataclass(frozen=True, slots=True)
class Policy:
    """One pool's limits; values only, the defaults live once in the pool settings."""

    min_workers: int
    max_workers: int
    min_seconds_between_workers: int
    staleness_seconds: float
    max_launches_per_pass: int


def stale_view(name: str, obs: Observation[Any], policy: Policy, now: float) -> str | None:
    """Why the view ``name`` may not be acted on (never seen, failed, too old), or None."""
    if obs.observed_at is None:
        return f"{name}:never_observed" if obs.error is None else f"{name}:failed"
    if obs.error is not None:
        return f"{name}:failed"
    if now - obs.observed_at > policy.staleness_seconds:
        return f"{name}:too_old"
    return None


def count(pool: PoolState) -> Counts:
    """Staged, pending and active as the rules see them.

    A launch the backend accepted but does not list yet counts as pending.
    """
    view = pool.bundles.value
    jobs = pool.jobs.value or ()
    listed = {job.job_id for job in jobs}
    in_flight = sum(1 for launch in pool.in_flight if launch.job_id not in listed)
    pending = sum(1 for job in jobs if job.state is JobState.PENDING) + in_flight
    active = sum(1 for job in jobs if job.state is JobState.ACTIVE)
    return Counts(staged=len(view.staged) if view else 0, pending=pending, active=active)


def decide(pool: PoolState, policy: Policy, now: float) -> Decision:
    counts = count(pool)
    stale = tuple(
        s
        for s in (
            stale_view("bundles", pool.bundles, policy, now),
            stale_view("jobs", pool.jobs, policy, now),
        )
        if s is not None
    )
    if stale:
        return Decision(launch=0, reason=Reason.STALE_VIEW, counts=counts, stale=stale)

    blocked: list[Reason] = []
    want = counts.staged > 0
    if want:
        if (
            pool.last_launch_at is not None
            and int(now - pool.last_launch_at) < policy.min_seconds_between_workers
        ):
            blocked.append(Reason.COOLDOWN)
        if counts.pending >= counts.staged:
            blocked.append(Reason.PENDING_COVERS_STAGED)
        if counts.total >= policy.max_workers:
            blocked.append(Reason.AT_MAX)

    for_work = 0
    if want and not blocked:
        for_work = min(counts.staged - counts.pending, policy.max_workers - counts.total)
    if counts.total < policy.min_workers:
        launch = max(policy.min_workers - counts.total, for_work)
        reason = Reason.BELOW_MIN
    elif for_work > 0:
        launch, reason = for_work, Reason.STAGED_WORK
    elif blocked:
        launch, reason = 0, blocked[0]
    else:
        launch, reason = 0, Reason.NO_STAGED
    launch = min(launch, policy.max_launches_per_pass)
    return Decision(launch=launch, reason=reason, counts=counts, blocked_by=tuple(blocked))
