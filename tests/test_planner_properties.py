"""Properties of the pure planner over generated pools, bundles, jobs and check-ins."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from codalab_scaler.core.decision import decide
from codalab_scaler.core.model import (
    BundleView,
    InFlightLaunch,
    JobState,
    Observation,
    PoolState,
    StagedBundle,
    WorkerJob,
)
from codalab_scaler.core.pacing import Backoff, TokenBucket
from codalab_scaler.core.planner import Memory, PolicyKind, PoolInput, PoolSpec, plan
from codalab_scaler.core.prefilter import prefilter
from codalab_scaler.core.supply import RegisteredWorker
from tests.planner_inputs import GIB, NOW, spec

TAGS = st.sampled_from(["", "q", "r"])


@st.composite
def bundles(draw: st.DrawFn, tags: st.SearchStrategy[str] = TAGS) -> tuple[StagedBundle, ...]:
    n = draw(st.integers(0, 12))
    return tuple(
        StagedBundle(
            f"0x{i:04x}",
            draw(st.integers(1, 4)),
            draw(st.integers(0, 2)),
            draw(st.integers(1, 8)) * GIB // 2,
            draw(tags),
        )
        for i in range(n)
    )


@st.composite
def specs(draw: st.DrawFn, name: str) -> PoolSpec:
    tag = draw(st.sampled_from([None, "q", "r"]))
    lo = draw(st.integers(0, 3))
    return spec(
        name,
        kind=draw(st.sampled_from(PolicyKind)),
        cpus=draw(st.integers(1, 4)),
        gpus=draw(st.integers(0, 2)),
        memory_mb=draw(st.sampled_from([1024, 2048, 4096])),
        tag=tag,
        exclusive=tag is not None and draw(st.booleans()),
        priority=draw(st.integers(0, 2)),
        prefilter=draw(st.booleans()),
        min_workers=lo,
        max_workers=draw(st.integers(lo, 8)),
        cooldown=draw(st.sampled_from([0, 60])),
        per_pass=draw(st.integers(1, 10)),
        burst=draw(st.integers(1, 20)),
        min_idle=draw(st.integers(0, 2)),
        provision_timeout=draw(st.sampled_from([30.0, 900.0])),
    )


@st.composite
def pool_states(draw: st.DrawFn, staged: tuple[StagedBundle, ...], name: str) -> PoolState:
    searched = tuple(b for b in staged if draw(st.booleans()))
    jobs = tuple(
        WorkerJob(
            f"{name}-job{i}",
            draw(st.sampled_from([JobState.PENDING, JobState.ACTIVE])),
            f"{name}w{i}",
        )
        for i in range(draw(st.integers(0, 6)))
    )
    in_flight = tuple(
        InFlightLaunch(f"{name}-fl{i}", f"{name}f{i}", NOW - draw(st.integers(0, 2000)))
        for i in range(draw(st.integers(0, 2)))
    )
    ages = st.sampled_from([0.0, 5.0, 60.0])
    bundles_obs = Observation(BundleView(staged=searched), observed_at=NOW - draw(ages),
                              error=draw(st.sampled_from([None, None, "boom"])))  # fmt: skip
    last = draw(st.sampled_from([None, NOW - 10, NOW - 100]))
    return PoolState(bundles=bundles_obs, jobs=Observation(jobs, observed_at=NOW - draw(ages)),
                     in_flight=in_flight, last_launch_at=last)  # fmt: skip


@st.composite
def memories(draw: st.DrawFn) -> Memory:
    backoff = draw(st.sampled_from([Backoff(), Backoff(1, NOW + 5), Backoff(2, NOW - 1)]))
    bucket = TokenBucket(draw(st.floats(0, 20)), draw(st.sampled_from([None, NOW - 1])))
    since = {f"job{i}": NOW - draw(st.integers(0, 2000)) for i in range(3)}
    return Memory(bucket=bucket, backoff=backoff, booting_since=since)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[PoolInput], Observation[tuple[RegisteredWorker, ...]]]:
    staged = draw(bundles())
    names = ["a", "b", "c"][: draw(st.integers(1, 3))]
    pools = [
        PoolInput(draw(specs(n)), replace(draw(pool_states(staged, n)), memory=draw(memories())))
        for n in names
    ]
    registered = tuple(
        RegisteredWorker(
            f"host-{p.spec.name}w{i}",
            4,
            1,
            4 * GIB,
            draw(st.integers(0, 4)),
            0,
            ("r",) if draw(st.booleans()) else (),
        )
        for p in pools
        for i in range(6)
        if draw(st.booleans())
    )
    age = draw(st.sampled_from([0.0, 0.0, 60.0, None]))
    workers = Observation(registered, observed_at=None if age is None else NOW - age)
    return pools, workers


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_each_staged_bundle_is_counted_by_at_most_one_pool(world: tuple) -> None:  # type: ignore[type-arg]
    pools, workers = world
    routing = plan(pools, workers, NOW).routing
    counted = Counter(b.uuid for p in pools for b in routing.counted(p.spec.name))
    assert all(n == 1 for n in counted.values())


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_never_above_max(world: tuple) -> None:  # type: ignore[type-arg]
    pools, workers = world
    for p in plan(pools, workers, NOW).pools.values():
        spec_ = next(i.spec for i in pools if i.spec.name == p.name)
        assert p.launch == 0 or p.total + p.launch <= spec_.limits.max_workers


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_nothing_is_launched_on_a_stale_view(world: tuple) -> None:  # type: ignore[type-arg]
    pools, workers = world
    result = plan(pools, workers, NOW)
    for p in pools:
        decided = result.pools[p.spec.name]
        limit = p.spec.limits.staleness_seconds
        stale = any(
            o.error is not None or o.observed_at is None or NOW - o.observed_at > limit
            for o in [p.state.bundles, p.state.jobs]
            + ([workers] if p.spec.kind is PolicyKind.FAST else [])
        )
        if stale:
            assert decided.launch == 0
            assert decided.stale


def _allowed(tag: str | None, exclusive: bool) -> st.SearchStrategy[str]:
    if tag is None:
        return st.just("")
    return st.just(tag) if exclusive else st.sampled_from(["", tag])


@st.composite
def one_compat_pool(draw: st.DrawFn) -> tuple[PoolInput, PoolState]:
    s = replace(draw(specs("p")), kind=PolicyKind.COMPAT)
    tags = _allowed(s.route.tag, s.route.tag_exclusive)
    staged = draw(bundles(tags))
    state = draw(pool_states(staged, "p"))
    raw = state.bundles.value.staged if state.bundles.value else ()
    view = prefilter(raw, s.route.shape, enabled=s.route.prefilter)
    today = replace(state, bundles=replace(state.bundles, value=view))
    memory = replace(draw(memories()), backoff=Backoff())
    return PoolInput(s, replace(state, memory=memory)), today


@settings(max_examples=200, deadline=None)
@given(one_compat_pool(), st.sampled_from([None, 0.0, 60.0]))
def test_compat_on_one_pool_is_the_original_decision(
    case: tuple[PoolInput, PoolState], workers_age: float | None
) -> None:
    pool, today = case
    workers: Observation[tuple[RegisteredWorker, ...]] = Observation(
        (), observed_at=None if workers_age is None else NOW - workers_age
    )
    expected = decide(today, pool.spec.limits, NOW)
    got = plan([pool], workers, NOW).pools["p"]
    assert got.decision == expected
    assert (got.launch, got.reason) == (expected.launch, expected.reason)


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_fast_never_launches_more_than_bin_packing_needs(world: tuple) -> None:  # type: ignore[type-arg]
    pools, workers = world
    result = plan(pools, workers, NOW)
    for p in pools:
        if p.spec.kind is not PolicyKind.FAST:
            continue
        got = result.pools[p.spec.name]
        assert got.needed is not None
        new = [x for x in got.placements if x.where.value == "new"]
        assert got.needed == len({x.worker for x in new}) <= len(new)
        spare = p.spec.min_idle_workers + max(p.spec.limits.min_workers - got.total, 0)
        assert got.launch <= got.needed + spare
        if p.spec.min_idle_workers == 0 and p.spec.limits.min_workers == 0:
            assert got.launch <= got.needed
