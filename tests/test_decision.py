"""The launch rules, one line per case, written from the original's text.

Each row: staged, pending, active, seconds since the last launch (None: never),
policy overrides -> launch, reason, every rule that held staged work back.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from codalab_scaler.core.decision import Counts, Policy, Reason, count, decide
from codalab_scaler.core.model import (
    BundleView,
    InFlightLaunch,
    JobState,
    Observation,
    PoolState,
    StagedBundle,
    WorkerJob,
)

NOW = 10_000.0
R = Reason


def pool(
    staged: int,
    pending: int,
    active: int,
    since_launch: float | None = None,
    *,
    in_flight: int = 0,
    bundles_age: float = 0.0,
    jobs_age: float = 0.0,
) -> PoolState:
    bundles = tuple(StagedBundle(f"0x{i:032x}", 1, 0, 2 << 30, "") for i in range(staged))
    jobs = tuple(WorkerJob(f"p{i}", JobState.PENDING) for i in range(pending)) + tuple(
        WorkerJob(f"a{i}", JobState.ACTIVE) for i in range(active)
    )
    return PoolState(
        bundles=Observation(BundleView(staged=bundles), observed_at=NOW - bundles_age),
        jobs=Observation(jobs, observed_at=NOW - jobs_age),
        in_flight=tuple(InFlightLaunch(f"f{i}", f"w{i}", NOW - 1) for i in range(in_flight)),
        last_launch_at=None if since_launch is None else NOW - since_launch,
    )


BASE = Policy(
    min_workers=0,
    max_workers=10,
    min_seconds_between_workers=60,
    staleness_seconds=15,
    max_launches_per_pass=1,
)

# fmt: off
CASES: list[tuple[str, PoolState, Policy, int, Reason, tuple[Reason, ...]]] = [
    # want a worker when staged > 0
    ("staged, nothing running",            pool(1, 0, 0),           BASE, 1, R.STAGED_WORK, ()),
    ("staged, never launched before",      pool(3, 0, 2, None),     BASE, 1, R.STAGED_WORK, ()),
    ("no staged work",                     pool(0, 0, 0),           BASE, 0, R.NO_STAGED, ()),
    ("no staged work, workers running",    pool(0, 1, 3, 5),        BASE, 0, R.NO_STAGED, ()),
    # not within --min-seconds-between-workers of the last launch
    ("cooldown: 10 s after a launch",      pool(2, 0, 0, 10),       BASE, 0, R.COOLDOWN, (R.COOLDOWN,)),
    ("cooldown: 59.9 s truncates to 59",   pool(2, 0, 0, 59.9),     BASE, 0, R.COOLDOWN, (R.COOLDOWN,)),
    ("cooldown over at exactly 60 s",      pool(2, 0, 0, 60),       BASE, 1, R.STAGED_WORK, ()),
    ("cooldown 0 never blocks",            pool(2, 0, 0, 0),        replace(BASE, min_seconds_between_workers=0), 1, R.STAGED_WORK, ()),
    # not when pending >= staged
    ("pending equals staged",              pool(2, 2, 0),           BASE, 0, R.PENDING_COVERS_STAGED, (R.PENDING_COVERS_STAGED,)),
    ("pending exceeds staged",             pool(1, 3, 0),           BASE, 0, R.PENDING_COVERS_STAGED, (R.PENDING_COVERS_STAGED,)),
    ("pending below staged",               pool(3, 2, 0),           BASE, 1, R.STAGED_WORK, ()),
    ("active workers do not cover staged", pool(1, 0, 5),           BASE, 1, R.STAGED_WORK, ()),
    ("in-flight launch counts as pending", pool(1, 0, 0, in_flight=1), BASE, 0, R.PENDING_COVERS_STAGED, (R.PENDING_COVERS_STAGED,)),
    # not when total >= max
    ("at max",                             pool(5, 0, 10),          BASE, 0, R.AT_MAX, (R.AT_MAX,)),
    ("above max (max lowered)",            pool(5, 1, 12),          BASE, 0, R.AT_MAX, (R.AT_MAX,)),
    ("one below max",                      pool(5, 0, 9),           BASE, 1, R.STAGED_WORK, ()),
    ("max 0 never launches for work",      pool(5, 0, 0),           replace(BASE, max_workers=0), 0, R.AT_MAX, (R.AT_MAX,)),
    # always when total < min (regardless of the other rules)
    ("below min, nothing staged",          pool(0, 0, 0),           replace(BASE, min_workers=1), 1, R.BELOW_MIN, ()),
    ("below min beats cooldown",           pool(0, 0, 0, 1),        replace(BASE, min_workers=2), 1, R.BELOW_MIN, ()),
    ("below min beats pending>=staged",    pool(1, 1, 0, 1),        replace(BASE, min_workers=3), 1, R.BELOW_MIN, (R.COOLDOWN, R.PENDING_COVERS_STAGED)),
    ("at min, nothing staged",             pool(0, 1, 1),           replace(BASE, min_workers=2), 0, R.NO_STAGED, ()),
    ("pending counts toward min",          pool(0, 2, 0),           replace(BASE, min_workers=2), 0, R.NO_STAGED, ()),
    # interactions: every blocking rule is reported, in the original's order
    ("cooldown and pending",               pool(1, 1, 0, 5),        BASE, 0, R.COOLDOWN, (R.COOLDOWN, R.PENDING_COVERS_STAGED)),
    ("pending and max",                    pool(1, 1, 9),           BASE, 0, R.PENDING_COVERS_STAGED, (R.PENDING_COVERS_STAGED, R.AT_MAX)),
    ("all three",                          pool(2, 4, 6, 1),        BASE, 0, R.COOLDOWN, (R.COOLDOWN, R.PENDING_COVERS_STAGED, R.AT_MAX)),
    # at most one launch per pass (the original), unless the policy allows more
    ("one per pass for a backlog",         pool(50, 0, 0),          BASE, 1, R.STAGED_WORK, ()),
    ("one per pass below min",             pool(0, 0, 0),           replace(BASE, min_workers=5), 1, R.BELOW_MIN, ()),
    ("batch: staged - pending",            pool(5, 2, 0),           replace(BASE, max_launches_per_pass=10), 3, R.STAGED_WORK, ()),
    ("batch: capped by max - total",       pool(50, 0, 7),          replace(BASE, max_launches_per_pass=10), 3, R.STAGED_WORK, ()),
    ("batch: capped by per-pass limit",    pool(50, 0, 0),          replace(BASE, max_launches_per_pass=4), 4, R.STAGED_WORK, ()),
    ("batch: below min fills to min",      pool(0, 0, 1),           replace(BASE, min_workers=4, max_launches_per_pass=10), 3, R.BELOW_MIN, ()),
    ("batch: below min with more work",    pool(6, 0, 0),           replace(BASE, min_workers=2, max_launches_per_pass=10), 6, R.BELOW_MIN, ()),
    ("batch: still obeys cooldown",        pool(9, 0, 0, 3),        replace(BASE, max_launches_per_pass=10), 0, R.COOLDOWN, (R.COOLDOWN,)),
    # a stale or failed view launches nothing, not even for the minimum
    ("stale bundles view",                 pool(3, 0, 0, bundles_age=16), BASE, 0, R.STALE_VIEW, ()),
    ("stale jobs view",                    pool(3, 0, 0, jobs_age=30),    BASE, 0, R.STALE_VIEW, ()),
    ("stale view beats below min",         pool(0, 0, 0, jobs_age=16),    replace(BASE, min_workers=3), 0, R.STALE_VIEW, ()),
    ("view exactly at the limit is fresh", pool(3, 0, 0, bundles_age=15), BASE, 1, R.STAGED_WORK, ()),
]
# fmt: on


@pytest.mark.parametrize(
    ("state", "policy", "launch", "reason", "blocked"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_rules(
    state: PoolState, policy: Policy, launch: int, reason: Reason, blocked: tuple[Reason, ...]
) -> None:
    decision = decide(state, policy, NOW)
    assert (decision.launch, decision.reason, decision.blocked_by) == (launch, reason, blocked)


def test_failed_poll_is_stale_even_with_fresh_old_value() -> None:
    state = pool(3, 0, 0)
    state = replace(state, jobs=state.jobs.failed("boom"))
    decision = decide(state, replace(BASE, min_workers=1), NOW)
    assert decision.launch == 0
    assert decision.reason is Reason.STALE_VIEW
    assert decision.stale == ("jobs:failed",)


def test_never_observed_is_stale_not_zero() -> None:
    decision = decide(PoolState(), replace(BASE, min_workers=1), NOW)
    assert (decision.launch, decision.reason) == (0, Reason.STALE_VIEW)
    assert decision.stale == ("bundles:never_observed", "jobs:never_observed")


def test_stale_reason_names_the_old_view() -> None:
    decision = decide(pool(1, 0, 0, bundles_age=99), BASE, NOW)
    assert decision.stale == ("bundles:too_old",)


def test_in_flight_launch_already_listed_is_not_counted_twice() -> None:
    state = pool(2, 1, 0)  # job "p0" is listed as pending
    state = replace(state, in_flight=(InFlightLaunch("p0", "w", NOW - 1),))
    assert count(state) == Counts(staged=2, pending=1, active=0)
    assert decide(state, BASE, NOW).launch == 1
