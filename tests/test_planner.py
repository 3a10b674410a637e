"""The pure planner: routing, placement, pacing and the two policies, one line per case."""

from __future__ import annotations

from dataclasses import replace

import pytest

from codalab_scaler.core.model import (
    InFlightLaunch,
    JobState,
    Observation,
    RegisteredWorker,
    WorkerJob,
)
from codalab_scaler.core.pacing import Backoff, TokenBucket
from codalab_scaler.core.planner import (
    Memory,
    PolicyKind,
    after_failure,
    after_launches,
    plan,
    smaller,
)
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.routing import Unroutable
from codalab_scaler.core.supply import (
    Capacity,
    WorkerState,
    exited,
    live_worker_ids,
    registrations,
    settle,
)
from tests.planner_inputs import NOW, bundle, checked_in, job, pool, seen, spec, state

COMPAT = PolicyKind.COMPAT
GIB = 1 << 30


def test_two_overlapping_pools_count_each_bundle_once_and_launch_what_is_needed() -> None:
    bundles = (bundle(1), bundle(2), bundle(3))
    result = plan([pool(spec("a"), state(bundles)), pool(spec("b"), state(bundles))], seen(), NOW)
    assert [len(result.routing.routed.get(n, ())) for n in "ab"] == [3, 0]
    assert (result.pools["a"].launch, result.pools["b"].launch) == (3, 0)
    assert result.pools["b"].reason == "no_staged"


def test_two_compat_pools_no_longer_double_count() -> None:
    bundles = (bundle(1), bundle(2), bundle(3))
    pools = [pool(spec(n, kind=COMPAT, per_pass=10), state(bundles)) for n in "ab"]
    result = plan(pools, seen(), NOW)
    assert (result.pools["a"].launch, result.pools["b"].launch) == (3, 0)


# fmt: off
ROUTES = [
    # (bundle kwargs, pools as (name, spec kwargs), expected pool or unroutable reason)
    ("gpu bundle to the gpu pool",        {"gpus": 1},        [("cpu", {}), ("gpu", {"gpus": 1})],                          "gpu"),
    ("least waste: cpu bundle to cpu",    {},                 [("cpu", {}), ("gpu", {"gpus": 1})],                          "cpu"),
    ("priority beats waste",              {},                 [("cpu", {}), ("gpu", {"gpus": 1, "priority": 1})],           "gpu"),
    ("same shape: by name",               {},                 [("b", {}), ("a", {})],                                       "a"),
    ("tagged bundle needs the tag",       {"tag": "q"},       [("plain", {}), ("tagged", {"tag": "q"})],                    "tagged"),
    ("untagged never to exclusive",       {},                 [("x", {"tag": "q", "exclusive": True})],                    Unroutable.NO_POOL_FOR_TAG),
    ("untagged to non-exclusive tagged",  {},                 [("x", {"tag": "q"})],                                        "x"),
    ("other tag: nobody",                 {"tag": "z"},       [("x", {"tag": "q"}), ("y", {})],                             Unroutable.NO_POOL_FOR_TAG),
    ("two gpus: too large",               {"gpus": 2},        [("cpu", {}), ("gpu", {"gpus": 1})],                          Unroutable.TOO_LARGE),
    ("prefilter off takes the large",     {"cpus": 8},        [("x", {"prefilter": False})],                                "x"),
    ("full pool: falls through",          {},                 [("a", {"max_workers": 0}), ("b", {})],                       "b"),
    ("only full pools: at max",           {},                 [("a", {"max_workers": 0})],                                  Unroutable.POOLS_AT_MAX),
]
# fmt: on


@pytest.mark.parametrize(("name", "b", "pools", "expected"), ROUTES, ids=[r[0] for r in ROUTES])
def test_routing(name: str, b: dict[str, int], pools: list[tuple[str, dict[str, object]]],
                 expected: str) -> None:  # fmt: skip
    staged = (bundle(1, **b),)  # type: ignore[arg-type]
    inputs = [pool(spec(n, **kw), state(staged)) for n, kw in pools]  # type: ignore[arg-type]
    routing = plan(inputs, seen(), NOW).routing
    if isinstance(expected, Unroutable):
        assert [s.reason for s in routing.unroutable] == [expected]
        assert not routing.routed
    else:
        assert list(routing.routed) == [expected]


def test_too_large_names_the_resource_and_the_largest_shape() -> None:
    staged = (bundle(1, gpus=2),)
    inputs = [pool(spec("cpu"), state(staged)), pool(spec("gpu", gpus=1), state(staged))]
    (stranded,) = plan(inputs, seen(), NOW).routing.unroutable
    assert (stranded.resource, stranded.requested, stranded.largest) == ("gpus", 2, 1)


def test_a_pool_backing_off_gets_no_bundles_and_they_fall_through() -> None:
    staged = (bundle(1),)
    off = Memory(backoff=Backoff(failures=1, until=NOW + 5))
    inputs = [pool(spec("a", priority=1), state(staged), off), pool(spec("b"), state(staged))]
    result = plan(inputs, seen(), NOW)
    assert list(result.routing.routed) == ["b"]
    assert (result.pools["a"].launch, result.pools["a"].reason) == (0, "backing_off")
    assert result.pools["b"].launch == 1
    alone = plan([inputs[0]], seen(), NOW)
    assert [s.reason for s in alone.routing.unroutable] == [Unroutable.POOLS_BACKING_OFF]
    assert (alone.pools["a"].launch, alone.pools["a"].reason) == (0, "backing_off")


def test_fast_places_on_serving_then_booting_then_new_workers() -> None:
    staged = tuple(bundle(i) for i in range(5))
    jobs = (job("s1"), job("s2"), job("b1", JobState.PENDING))
    workers = seen(checked_in("s1", in_use=1, runs=1), checked_in("s2"))
    result = plan([pool(spec(), state(staged, jobs))], workers, NOW).pools["p"]
    where = [p.where.value for p in result.placements]
    assert where == ["serving", "booting", "new", "new", "new"]
    assert (result.needed, result.launch, result.reason) == (3, 3, "staged_work")


def test_fast_bin_packs_small_bundles_into_big_workers() -> None:
    staged = tuple(bundle(i, memory_gb=1) for i in range(8))
    result = plan([pool(spec(cpus=4, memory_mb=8192), state(staged))], seen(), NOW).pools["p"]
    assert (result.needed, result.launch) == (2, 2)


# fmt: off
FAST = [
    # (case, staged, jobs, spec kwargs, memory, expected launch, reason)
    ("max bounds the launch",         5, 2, {"max_workers": 4},             Memory(),                                    2, "staged_work"),
    ("at max",                        5, 4, {"max_workers": 4},             Memory(),                                    0, "at_max"),
    ("tokens bound the launch",       5, 0, {"burst": 3},                   Memory(),                                    3, "staged_work"),
    ("no tokens left",                5, 0, {"burst": 3},                   Memory(bucket=TokenBucket(0.4, NOW)),        0, "rate_limited"),
    ("tokens refill at the rate",     5, 0, {"burst": 3, "rate": 60},       Memory(bucket=TokenBucket(0.0, NOW - 2)),    2, "staged_work"),
    ("min workers held",              0, 0, {"min_workers": 2},             Memory(),                                    2, "below_min"),
    ("min idle: warm spares",         0, 0, {"min_idle": 2},                Memory(),                                    2, "min_idle"),
    ("booting workers cover staged",  2, 2, {},                             Memory(),                                    0, "covered_by_workers"),
    ("nothing to do",                 0, 0, {},                             Memory(),                                    0, "no_staged"),
]
# fmt: on


@pytest.mark.parametrize(("case", "staged", "booting", "kw", "memory", "launch", "reason"), FAST,
                         ids=[c[0] for c in FAST])  # fmt: skip
def test_fast(case: str, staged: int, booting: int, kw: dict[str, object], memory: Memory,
              launch: int, reason: str) -> None:  # fmt: skip
    bundles = tuple(bundle(i) for i in range(staged))
    jobs = tuple(job(f"w{i}", JobState.PENDING) for i in range(booting))
    result = plan([pool(spec(**kw), state(bundles, jobs), memory)], seen(), NOW)  # type: ignore[arg-type]
    assert (result.pools["p"].launch, result.pools["p"].reason) == (launch, reason)


def test_fast_launches_nothing_on_a_stale_workers_view() -> None:
    result = plan([pool(spec(), state((bundle(1),)))], seen(age=60), NOW).pools["p"]
    assert (result.launch, result.reason, result.stale) == (0, "stale_view", ("workers:too_old",))
    never = plan([pool(spec(), state((bundle(1),)))], Observation(), NOW).pools["p"]
    assert (never.launch, never.stale) == (0, ("workers:never_observed",))


def test_compat_ignores_the_workers_view() -> None:
    result = plan([pool(spec(kind=COMPAT), state((bundle(1),)))], Observation(), NOW).pools["p"]
    assert (result.launch, result.reason) == (1, "staged_work")


def test_a_registered_worker_whose_job_ended_is_not_capacity() -> None:
    result = plan([pool(spec(), state((bundle(1),)))], seen(checked_in("gone")), NOW).pools["p"]
    assert (result.launch, result.total) == (1, 0)


def test_a_running_job_not_registered_yet_is_booting_then_stuck() -> None:
    jobs = (job("w1"),)
    memory = Memory(booting_since={"job-w1": NOW - 100})
    booting = plan([pool(spec(), state((), jobs), memory)], seen(), NOW).pools["p"]
    assert [w.state for w in booting.workers] == [WorkerState.BOOTING]
    memory = Memory(booting_since={"job-w1": NOW - 901})
    stuck = plan([pool(spec(), state((bundle(1),), jobs), memory)], seen(), NOW).pools["p"]
    assert [w.state for w in stuck.workers] == [WorkerState.STUCK]
    assert (stuck.launch, stuck.total) == (1, 1)  # its bundle is served elsewhere, max still counts


def test_an_in_flight_launch_is_booting_from_its_launch_time() -> None:
    flight = (InFlightLaunch("job-f", "f", NOW - 1000),)
    result = plan([pool(spec(), state(in_flight=flight))], seen(), NOW).pools["p"]
    assert [w.state for w in result.workers] == [WorkerState.STUCK]


def test_a_worker_registering_resets_the_backoff() -> None:
    memory = Memory(backoff=Backoff(3, NOW + 100), booting_since={"job-w1": NOW - 10})
    result = plan([pool(spec(), state((), (job("w1"),)), memory)], seen(checked_in("w1")), NOW)
    assert result.pools["p"].registered == ("job-w1",)
    assert result.pools["p"].memory.backoff == Backoff()


def test_backoff_doubles_with_jitter_up_to_the_maximum() -> None:
    s = spec()
    memory = Memory()
    waits = []
    for _ in range(7):
        memory = after_failure(s, memory, NOW, jitter=0.999999)
        waits.append(round(memory.backoff.remaining(NOW)))
    assert waits == [10, 20, 40, 80, 160, 300, 300]
    low = after_failure(s, Memory(), NOW, jitter=0.0)
    assert low.backoff.remaining(NOW) == 5


def test_launch_attempts_spend_tokens_of_fast_pools_only() -> None:
    memory = after_launches(spec(burst=5), Memory(), 3, NOW)
    assert memory.bucket.available(NOW, 60, 5) == 2
    assert after_launches(spec(kind=COMPAT), Memory(), 3, NOW) == Memory()
    assert replace(memory.bucket).available(NOW + 60, 60, 5) == 5


# fmt: off
EXITED = [
    # (jobs live at the last pass, already exited, jobs listed now, registered ids, expected)
    ("a live job's worker serves",         {"w1"}, set(),  [job("w1")],  {"w1"},  set()),
    ("its job ended: exited",              {"w1"}, set(),  [],           {"w1"},  {"w1"}),
    ("exited stays exited while listed",   set(),  {"w1"}, [],           {"w1"},  {"w1"}),
    ("no longer listed by CodaLab: gone",  set(),  {"w1"}, [],           set(),   set()),
    ("never this pool's: left alone",      set(),  set(),  [],           {"w9"},  set()),
    ("ended before registering: nothing",  {"w1"}, set(),  [],           set(),   set()),
    ("same id live again (restart)",       set(),  {"w1"}, [job("w1")],  {"w1"},  set()),
]
# fmt: on


@pytest.mark.parametrize(
    ("name", "live_before", "exited_before", "jobs", "registered", "expected"), EXITED,
    ids=[case[0] for case in EXITED],
)  # fmt: skip
def test_exited_workers(name: str, live_before: set[str], exited_before: set[str],
                        jobs: list[WorkerJob], registered: set[str],
                        expected: set[str]) -> None:  # fmt: skip
    index = registrations(checked_in(w) for w in registered)
    live = live_worker_ids(jobs, ())
    assert exited(frozenset(live_before), exited_before, live, index) == expected


def _at(checkin: float | None) -> dict[str, RegisteredWorker]:
    return {"w1": replace(checked_in("w1"), checkin_time=checkin)}


def test_an_exited_worker_is_dead_once_its_check_in_time_stood_still_for_the_grace() -> None:
    memory, ready = settle({"w1"}, {}, _at(100.0), grace=12, now=NOW)
    assert (memory, ready) == ({"w1": (100.0, NOW)}, frozenset())
    memory, ready = settle({"w1"}, memory, _at(100.0), grace=12, now=NOW + 11)
    assert ready == frozenset()
    memory, ready = settle({"w1"}, memory, _at(100.0), grace=12, now=NOW + 12)
    assert ready == {"w1"}


def test_a_worker_that_checks_in_again_is_alive_whatever_the_listing_said() -> None:
    memory, _ = settle({"w1"}, {}, _at(100.0), grace=12, now=NOW)
    memory, ready = settle({"w1"}, memory, _at(105.0), grace=12, now=NOW + 12)
    assert (memory, ready) == ({"w1": (105.0, NOW + 12)}, frozenset())


def test_a_registration_without_a_check_in_time_proves_nothing() -> None:
    memory, _ = settle({"w1"}, {}, _at(None), grace=12, now=NOW)
    assert settle({"w1"}, memory, _at(None), grace=12, now=NOW + 600)[1] == frozenset()


def test_the_plan_names_dead_exited_workers_as_codalab_lists_them_on_good_views_only() -> None:
    registration = replace(checked_in("w1"), checkin_time=100.0)
    live = Memory(live_workers=frozenset({"w1"}))
    before = replace(state(jobs=(job("w1"),)), memory=live)
    ended = replace(before, jobs=Observation((), observed_at=NOW))
    first = plan([pool(spec("a"), ended)], seen(registration), NOW).pools["a"]
    assert first.exited == ()  # not yet: its check-in time has to stand still first
    later = replace(ended, memory=first.memory, jobs=Observation((), observed_at=NOW + 60))
    assert plan([pool(spec("a"), later)], seen(registration, age=-60), NOW + 60).pools[
        "a"
    ].exited == ("host-w1",)
    failed = replace(later, jobs=Observation(None, error="listing failed"))
    assert (
        plan([pool(spec("a"), failed)], seen(registration, age=-60), NOW + 60).pools["a"].exited
        == ()
    )
    unknown: Observation[tuple[RegisteredWorker, ...]] = Observation(error="workers/info failed")
    assert plan([pool(spec("a"), later)], unknown, NOW + 60).pools["a"].exited == ()


@pytest.mark.parametrize(
    ("cpus", "gpus", "gib", "expected"),
    [
        (4, 0, 16, False),
        (8, 0, 15.5, False),
        (4, 0, 14, True),
        (3, 0, 16, True),
        (4, 0, 14.5, False),
    ],
)
def test_a_registration_is_smaller_than_the_shape_by_cpus_gpus_or_a_tenth_of_memory(
    cpus: int, gpus: int, gib: float, expected: bool
) -> None:
    shape = WorkerShape(cpus=4, gpus=0, memory_mb=16384)
    assert smaller(Capacity(cpus, gpus, int(gib * GIB)), shape) is expected
    assert smaller(Capacity(4, 0, 16 * GIB), WorkerShape(cpus=4, gpus=1, memory_mb=16384))


def test_nothing_is_stuck_while_the_check_in_view_is_failed() -> None:
    booting = replace(
        state(jobs=(job("w1", JobState.PENDING),)),
        memory=Memory(booting_since={"job-w1": NOW - 10_000}),
    )
    failed: Observation[tuple[RegisteredWorker, ...]] = Observation(
        (), observed_at=NOW - 5, error="workers/info failed"
    )
    (worker,) = plan([pool(spec("a"), booting)], failed, NOW).pools["a"].workers
    assert worker.state is WorkerState.BOOTING  # it may have registered meanwhile
    (worker,) = plan([pool(spec("a"), booting)], seen(), NOW).pools["a"].workers
    assert worker.state is WorkerState.STUCK
