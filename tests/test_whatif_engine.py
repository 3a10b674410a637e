"""The replay: workers, backends and the real planner on a virtual clock, checked to the second.

Boot delays are made exact (``boot_sigma = 0``) so each case can say when
each thing happens: a bundle submitted at 0 is seen by the pass at 0, its
worker launched then, registered at ``boot_seconds``, and so on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from codalab_scaler.whatif import engine
from codalab_scaler.whatif.configs import apply_setting, default_source, scenario
from codalab_scaler.whatif.engine import replay
from codalab_scaler.whatif.scenario import Result, Scenario
from codalab_scaler.whatif.workload import Job, Synthetic, synthetic

G = 1024**3
SIM_KEYS = {"boot_seconds", "capacity", "refuse_rate", "fail_rate", "stuck_rate", "stuck_seconds"}


def table(**pool: Any) -> dict[str, Any]:
    """One pool named cpu (4 cpus, 16g), scaling from zero; ``pool`` overrides its settings."""
    sim = {k: pool.pop(k) for k in list(pool) if k in SIM_KEYS}
    return {
        "sleep_time": 5,
        "pools": {
            "cpu": {
                "min_workers": 0,
                "backend": {"kind": "local", "cpus": 4, "memory_mb": 16384},
                **pool,
            }
        },
        "simulate": {
            "drain_seconds": 3600,
            "pools": {"cpu": {"boot_seconds": 90, "boot_sigma": 0, **sim}},
        },
    }


def sc(t: dict[str, Any], seed: int = 0) -> Scenario:
    return scenario("test", t, seed)


def job(i: int, submit: float = 0.0, cpus: int = 1, run: float = 100.0, **kw: Any) -> Job:
    return Job(f"0x{i:08x}", submit, cpus, kw.pop("gpus", 0), kw.pop("mem", 2) * G, run, **kw)


def test_one_bundle_boot_run_idle_exit_to_the_second() -> None:
    r = replay(sc(table(policy="fast")), [job(0)])
    # launched at 0, registered at 90, runs 90..190, idle until it exits at 790
    assert r.waits == (90.0,)
    assert (r.launches, r.started, r.never_ran) == (1, 1, 0)
    assert r.worker_seconds == pytest.approx(790.0)
    assert r.idle_worker_seconds == pytest.approx(600.0)
    # the planner joins the job to its check-in: booting, then serving, then gone
    at = {s.at: (s.booting, s.serving, s.idle) for s in r.samples}
    seen = (at[60.0], at[120.0], at[300.0], at[840.0])
    assert seen == ((1, 0, 0), (0, 1, 0), (0, 1, 1), (0, 0, 0))


@pytest.mark.parametrize("policy", ["compat", "fast"])
def test_several_bundles_at_once_within_the_shape(policy: str) -> None:
    jobs = [job(i, cpus=1) for i in range(4)]
    r = replay(sc(table(policy=policy)), jobs)
    # fast packs four 1-cpu bundles into one worker; compat launches one per
    # staged bundle not covered by a pending worker, one a pass, a minute apart.
    assert r.waits == (90.0,) * 4
    assert r.launches == (1 if policy == "fast" else 2)


def test_compat_ramps_one_a_minute_fast_launches_the_burst_at_once() -> None:
    jobs = [job(i, cpus=4, run=3000) for i in range(6)]
    compat = replay(sc(table(policy="compat")), jobs)
    fast = replay(sc(table(policy="fast")), jobs)
    assert sorted(fast.waits) == [90.0] * 6
    assert sorted(compat.waits) == [90.0 + 60 * i for i in range(6)]


def test_exit_after_num_runs_ends_a_worker_after_its_runs() -> None:
    jobs = [job(0, cpus=4, run=10), job(1, submit=200, cpus=4, run=10)]
    again = replay(sc(table(policy="fast", worker_exit_after_num_runs=1)), jobs)
    stays = replay(sc(table(policy="fast")), jobs)
    assert (stays.launches, stays.waits) == (1, (90.0, 0.0))
    assert again.launches == 2
    assert again.waits[0] == 90.0
    assert again.waits[1] == 90.0  # the first exited at 100: the pass at 200 launches anew


def test_parallel_run_quota_holds_an_owners_second_bundle() -> None:
    jobs = [job(0, run=100, owner="x"), job(1, run=100, owner="x"), job(2, run=100, owner="y")]
    t = table(policy="fast")
    t["simulate"]["quota"] = 1
    r = replay(sc(t), jobs)
    assert sorted(r.waits) == [90.0, 90.0, 190.0]


def test_capacity_queues_jobs_in_the_backend_unbilled() -> None:
    jobs = [job(i, cpus=4, run=500) for i in range(2)]
    t = table(policy="fast", capacity=1, worker_idle_seconds=0, provision_timeout_seconds=5000)
    r = replay(sc(t), jobs)
    # Both launched at 0; the second waits in the backend's queue. The first runs
    # one bundle (90..590) then the other (590..1090) and exits; only then does the
    # second provision (1090..1180), register, find nothing and exit.
    assert sorted(r.waits) == [90.0, 590.0]
    assert (r.launches, r.never_ran) == (2, 1)
    assert r.worker_seconds == pytest.approx(1090.0 + 90.0)  # the queued 1090 s are not billed


def test_a_job_queued_past_the_provision_timeout_is_stuck_and_replaced() -> None:
    jobs = [job(i, cpus=4, run=500) for i in range(2)]
    r = replay(sc(table(policy="fast", capacity=1, provision_timeout_seconds=300)), jobs)
    assert r.stuck >= 1
    assert r.launches >= 3  # the planner no longer counts the queued job as capacity


def test_unroutable_bundles_are_counted_and_left_out_of_the_waits() -> None:
    jobs = [job(0), job(1, tag="tpu"), job(2, cpus=64)]
    r = replay(sc(table(policy="fast")), jobs)
    assert r.unroutable == 2
    assert r.waits == (90.0,)


def test_refused_launches_launch_nothing_and_back_a_fast_pool_off() -> None:
    r = replay(sc(table(policy="fast", refuse_rate=1.0)), [job(0)])
    assert (r.launches, r.started, r.unstarted) == (0, 0, 1)
    assert r.refused >= 2
    # backoff: 10 s doubling up to 300 s, so far fewer attempts than passes
    assert r.refused < r.passes / 10


def test_failed_starts_never_register_and_count() -> None:
    r = replay(sc(table(policy="fast", fail_rate=1.0)), [job(0)])
    assert r.started == 0
    assert r.failed_starts == r.launches >= 2
    assert r.never_ran == r.launches


def test_stuck_workers_are_reported_and_cancelled_when_asked() -> None:
    t = table(policy="fast", stuck_rate=1.0, provision_timeout_seconds=300,
              cancel_stuck_workers=True)  # fmt: skip
    r = replay(sc(t), [job(0)])
    assert r.stuck >= 1
    assert r.cancelled == r.stuck
    kept = replay(sc(table(policy="fast", stuck_rate=1.0, provision_timeout_seconds=300)), [job(0)])
    assert kept.cancelled == 0
    assert kept.stuck >= 1


def test_an_exited_worker_stays_listed_for_60_seconds() -> None:
    run = engine._Replay(sc(table(policy="fast")), [job(0)])
    run.run()
    listed = run.check_ins(790.0 + 59)
    assert [c.worker_id for c in listed] == ["sim-w000001"]
    assert listed[0].idle
    assert run.check_ins(790.0 + 60) == ()


def test_the_same_seed_gives_the_same_result_and_another_seed_another() -> None:
    jobs = [job(i, submit=i * 37.0, cpus=1 + i % 4, run=50.0 + i) for i in range(60)]
    t = table(policy="fast", fail_rate=0.2, refuse_rate=0.1)
    t["simulate"]["pools"]["cpu"]["boot_sigma"] = 0.5
    one: Result = replay(sc(t, seed=1), jobs)
    assert one == replay(sc(t, seed=1), jobs)
    assert one != replay(sc(t, seed=2), jobs)


def test_a_sweep_setting_reaches_the_real_settings() -> None:
    t = apply_setting(table(), "max_workers", 3)
    assert sc(t).pools[0].spec.limits.max_workers == 3
    t = apply_setting(table(), "boot_seconds", 30)
    assert sc(t).pools[0].model.boot_seconds == 30
    t = apply_setting(table(), "sleep_time", 2.5)
    assert sc(t).sleep_time == 2.5


@pytest.mark.parametrize("policy", ["compat", "fast"])
def test_skipping_quiet_passes_changes_no_result(policy: str) -> None:
    """A pass is skipped only when the planner would decide the same again (engine._quiet)."""
    jobs = synthetic(Synthetic(days=1), 2)
    t = apply_setting(default_source().table, "policy", policy)
    t = apply_setting(t, "min_idle_workers", 1) if policy == "fast" else t
    every = engine._Replay(scenario(policy, t, 1), jobs, skip_quiet=False).run()
    skipping = engine._Replay(scenario(policy, t, 1), jobs).run()
    assert skipping.planned < every.planned == every.passes
    assert every.stuck == 0  # healthy workers register: none is ever read as stuck
    assert replace(skipping, planned=0) == replace(every, planned=0)
