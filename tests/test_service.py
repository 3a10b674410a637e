"""The scaler's own scenarios: observe, decide, launch; in-memory peers and a fake clock."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import LaunchRefused, TransientError
from codalab_scaler.service.runtime import Service
from codalab_scaler.service.scale import scale_pool
from tests.fakes import FakeBackend, FakeBundles, FakeClock
from tests.harness import OnePool
from tests.waiting import eventually


def settings(**pool: Any) -> Settings:
    top = {k: pool.pop(k) for k in list(pool) if k in Settings.model_fields}
    backend = {k: pool.pop(k) for k in list(pool) if k in {"cpus", "gpus", "memory_mb"}}
    return Settings.model_validate(
        {
            "username": "alice",
            "password": "s3cret-pw",
            "sleep_time": 5,
            **top,
            "pools": {"p": {"min_workers": 0, "max_workers": 10, "backend": backend, **pool}},
        }
    )


class Harness(OnePool):
    def __init__(self, **pool: Any) -> None:
        self.clock = FakeClock()
        self.bundles = FakeBundles()
        self.backend = FakeBackend()
        registry = CollectorRegistry()
        service = Service.build(
            settings(**pool),
            registry=registry,
            clock=self.clock,
            bundles=self.bundles,
            backends={"p": self.backend},
        )
        super().__init__(service, registry)


async def test_scales_up_one_per_cooldown_until_pending_covers_staged() -> None:
    h = Harness(min_seconds_between_workers=60)
    h.bundles.stage(2)
    assert await h.cycle() == ("staged_work", 1)
    assert await h.cycle() == ("cooldown", 0)
    h.clock.advance(60)
    assert await h.cycle() == ("staged_work", 1)
    h.clock.advance(60)
    assert await h.cycle() == ("pending_covers_staged", 0)
    assert len(h.backend.launched) == 2
    assert h.sample("codalab_scaler_launches_total", pool="p", outcome="launched") == 2


async def test_search_keywords_reach_the_bundle_source() -> None:
    h = Harness(search=["request_gpus=0"], worker_tag="cpuq", worker_tag_exclusive=True)
    await h.poll()
    assert h.bundles.calls == [
        ("state=staged", "request_gpus=0", ".mine", "request_queue=cpuq,tag=cpuq")
    ]


async def test_accepted_but_unlisted_launch_is_pending_until_timeout() -> None:
    h = Harness(min_seconds_between_workers=0, in_flight_timeout_seconds=120)
    h.backend.list_visible_after_launch = False
    h.bundles.stage(1)
    assert await h.cycle() == ("staged_work", 1)
    h.clock.advance(60)
    assert await h.cycle() == ("pending_covers_staged", 0)
    h.clock.advance(61)  # past the in-flight timeout: the launch is written off
    with capture_logs() as logs:
        assert await h.cycle() == ("staged_work", 1)
    assert any(e["event"] == "scaler.launch_never_listed" for e in logs)
    assert h.sample("codalab_scaler_in_flight_expired_total", pool="p") == 1


async def test_listed_launch_leaves_in_flight_and_counts_once() -> None:
    h = Harness(min_seconds_between_workers=0)
    h.bundles.stage(2)
    await h.cycle()
    assert len(h.ctx.state.snapshot.pools["p"].in_flight) == 1
    await h.poll()  # the backend lists it now
    state = h.ctx.state.snapshot.pools["p"]
    assert state.in_flight == ()
    assert await h.cycle() == ("staged_work", 1)  # pending 1 < staged 2
    assert await h.cycle() == ("pending_covers_staged", 0)


async def test_failed_bundle_poll_launches_nothing_not_even_for_min() -> None:
    h = Harness(min_workers=2)
    h.bundles.error = TransientError("codalab: 502")
    assert await h.cycle() == ("stale_view", 0)
    assert h.backend.launched == []
    assert (
        h.sample("codalab_scaler_poll_errors_total", pool="p", source="bundles", kind="transient")
        == 1
    )
    assert h.sample("codalab_scaler_observation_ok", pool="p", source="bundles") == 0


async def test_failed_job_poll_keeps_last_jobs_but_launches_nothing() -> None:
    h = Harness(min_workers=0, min_seconds_between_workers=0)
    h.bundles.stage(5)
    await h.cycle()
    await h.poll()  # the launched job is listed: the last good view holds one job
    h.backend.list_error = TransientError("backend down")
    h.ctx.retry = replace(h.ctx.retry, max_attempts=2, max_seconds=1, initial_backoff=0.001)
    assert await h.cycle() == ("stale_view", 0)
    assert len(h.ctx.state.snapshot.pools["p"].jobs.value or ()) == 1  # last good view kept
    assert h.sample("codalab_scaler_retries_total", peer="backend", pool="p") == 1


async def test_old_view_is_stale() -> None:
    h = Harness(min_workers=1)
    await h.poll()
    h.clock.advance(16)  # staleness = 3 x sleep_time = 15 s
    decision, launched = await scale_pool(h.ctx, h.pool)
    assert (decision.reason.value, launched) == ("stale_view", 0)
    assert decision.stale == ("bundles:too_old", "jobs:too_old")


async def test_refused_launch_is_counted_and_the_pool_goes_on() -> None:
    h = Harness(min_seconds_between_workers=0)
    h.bundles.stage(1)
    h.backend.launch_error = LaunchRefused("no such queue")
    with capture_logs() as logs:
        assert await h.cycle() == ("staged_work", 0)
    assert h.sample("codalab_scaler_launches_total", pool="p", outcome="refused") == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["scaler.launch_refused"]
    h.backend.launch_error = None
    assert await h.cycle() == ("staged_work", 1)


async def test_dry_run_decides_but_never_launches() -> None:
    h = Harness(dry_run=True, min_workers=1)
    assert await h.cycle() == ("below_min", 0)
    assert h.backend.launched == []
    assert h.sample("codalab_scaler_launches_total", pool="p", outcome="dry_run") == 1


async def test_batch_mode_catches_up_in_one_pass() -> None:
    h = Harness(max_launches_per_pass=5, max_workers=4)
    h.bundles.stage(9)
    assert await h.cycle() == ("staged_work", 4)


async def test_gauges_mirror_the_snapshot_and_leak_no_credentials() -> None:
    h = Harness(min_workers=0, min_seconds_between_workers=0, cpus=1)
    h.bundles.stage(3)
    h.bundles.stage(1, cpus=8)  # filtered: more cpus than the worker shape
    await h.cycle()
    h.backend.activate_all()
    await h.cycle()
    text = generate_latest(h.registry).decode()
    assert 'codalab_scaler_staged_bundles{pool="p"} 3.0' in text
    assert 'codalab_scaler_filtered_bundles{pool="p",reason="cpus"} 1.0' in text
    assert 'codalab_scaler_worker_jobs{pool="p",state="active"} 1.0' in text
    assert 'codalab_scaler_worker_jobs{pool="p",state="pending"} 1.0' in text
    assert 'codalab_scaler_last_decision{pool="p",reason="staged_work"} 1.0' in text
    assert "codalab_scaler_build_info{" in text
    assert "s3cret-pw" not in text


async def test_run_once_reports_stale_pools() -> None:
    h = Harness(min_workers=1)
    assert (await h.service.run_once()).ok
    assert len(h.backend.launched) == 1
    h2 = Harness()
    h2.bundles.error = TransientError("down")
    result = await h2.service.run_once()
    assert not result.ok
    assert "stale view" in result.problems[0]


def live_service(backend: FakeBackend, bundles: FakeBundles, **pool: Any) -> Service:
    return Service.build(
        settings(sleep_time=0.05, **pool),
        registry=CollectorRegistry(),
        bundles=bundles,
        backends={"p": backend},
    )


async def test_loops_launch_and_stop_cleanly() -> None:
    backend, bundles = FakeBackend(), FakeBundles()
    bundles.stage(2)
    service = live_service(backend, bundles, min_seconds_between_workers=0)
    await service.start()
    try:
        await eventually(lambda: len(backend.launched) == 2, "two launches", interval=0.01)
        await eventually(lambda: service.ctx.liveness.check().ok and all(
            service.ctx.liveness.last_beat(n) is not None
            for n in ("bundles:p", "jobs:p", "scaler:p")
        ), "every loop beating", interval=0.01)  # fmt: skip
    finally:
        await service.stop()
    assert backend.closed
    assert not service.fatal.is_set()


async def test_stop_lets_an_in_flight_launch_finish() -> None:
    backend, bundles = FakeBackend(launch_delay=0.5), FakeBundles()
    bundles.stage(1)
    service = live_service(backend, bundles)
    await service.start()
    await eventually(
        lambda: service.ctx.decisions.get("p") is not None, "a decision", interval=0.01
    )
    await asyncio.sleep(0.1)  # the launch is now sleeping inside the backend
    await service.stop()
    assert len(backend.launched) == 1
    assert len(service.ctx.state.snapshot.pools["p"].in_flight) == 1


async def test_a_crashed_root_loop_is_fatal_and_unhealthy() -> None:
    backend, bundles = FakeBackend(), FakeBundles()
    backend.list_error = RuntimeError("bug in a backend")
    service = live_service(backend, bundles)
    with capture_logs() as logs:
        await service.start()
        try:
            await eventually(service.fatal.is_set, "a fatal error", interval=0.01)
        finally:
            await service.stop()
    report = service.ctx.liveness.check()
    assert not report.ok
    assert report.problems == ("jobs:p: died (RuntimeError: bug in a backend)",)
    assert service.fatal_reason == "jobs:p: RuntimeError: bug in a backend"
    assert any(e["event"] == "loop.crashed" for e in logs)


@pytest.mark.parametrize("stuck_for", [0.0, 100.0])
async def test_liveness_flags_a_stuck_loop(stuck_for: float) -> None:
    h = Harness()
    h.ctx.liveness.register("bundles:p")
    h.ctx.liveness.beat("bundles:p")
    h.clock.advance(stuck_for)
    report = h.ctx.liveness.check()
    stall = Settings.model_validate(
        {"username": "a", "password": "b", "pools": {"p": {}}}
    ).effective_health_stall_seconds
    assert report.ok is (stuck_for <= stall)


async def test_a_hanging_backend_list_is_a_transient_failure() -> None:
    h = Harness(min_workers=1, request_timeout_seconds=0.05, retry_attempts=1)
    release = asyncio.Event()

    async def hang() -> Any:
        await release.wait()  # never set

    h.backend.list_jobs = hang  # type: ignore[method-assign]
    assert await h.cycle() == ("stale_view", 0)
    assert h.ctx.state.snapshot.pools["p"].jobs.error == "listing jobs took longer than 0.05s"


async def test_an_outage_warns_once_and_its_end_is_logged() -> None:
    h = Harness()
    await h.poll()
    h.bundles.error = TransientError("codalab: 503")
    with capture_logs() as logs:
        for _ in range(3):
            await h.poll()
        h.bundles.error = TransientError("codalab: connection refused")
        await h.poll()
        h.clock.advance(20)
        h.bundles.error = None
        await h.poll()
    failed = [(e["log_level"], e["error"]) for e in logs if e["event"] == "poll.failed"]
    assert failed == [
        ("warning", "codalab: 503"),
        ("debug", "codalab: 503"),
        ("debug", "codalab: 503"),
        ("warning", "codalab: connection refused"),
    ]
    recovered = [e for e in logs if e["event"] == "poll.recovered"]
    assert [(e["source"], e["stale_seconds"]) for e in recovered] == [("bundles", 20.0)]
    assert (
        h.sample("codalab_scaler_poll_errors_total", pool="p", source="bundles", kind="transient")
        == 4
    )


async def test_the_first_decision_waits_for_the_first_polls() -> None:
    backend, bundles = FakeBackend(), FakeBundles(delay=0.2)  # CodaLab answers slowly
    bundles.stage(1)
    service = live_service(backend, bundles)
    with capture_logs() as logs:
        await service.start()
        try:
            await eventually(
                lambda: service.ctx.decisions.get("p") is not None, "a decision", interval=0.01
            )
        finally:
            await service.stop()
    decided = [e for e in logs if e["event"] == "scaler.decided"]
    assert decided[0]["reason"] != "stale_view"  # not "never observed" at start-up


async def test_dry_run_logs_what_the_backend_would_submit() -> None:
    h = Harness(dry_run=True)
    h.bundles.stage(1)
    with capture_logs() as logs:
        assert await h.cycle() == ("staged_work", 0)
    (event,) = [e for e in logs if e["event"] == "scaler.dry_run_launch"]
    assert event["would"] == {"job_id": f"job-{event['worker_id']}"}
    assert h.backend.launched == []


async def test_a_failed_start_is_counted_logged_and_not_capacity() -> None:
    h = Harness(min_seconds_between_workers=0)
    h.bundles.stage(2)
    await h.cycle()
    (worker_id,) = h.backend.launched
    h.backend.fail(f"job-{worker_id}", "NonZeroExitCode")
    with capture_logs() as logs:
        reason, launched = await h.cycle()
    failed = [e for e in logs if e["event"] == "worker.failed_start"]
    assert [(e["job_id"], e["reason"]) for e in failed] == [(f"job-{worker_id}", "NonZeroExitCode")]
    assert h.sample("codalab_scaler_failed_starts_total", pool="p") == 1
    # The failed job is neither pending nor in flight any more: two staged, so two launches.
    assert (reason, launched) == ("staged_work", 1)
    assert h.ctx.state.snapshot.pools["p"].in_flight[0].worker_id != worker_id
    assert not h.service.fatal.is_set()


async def test_too_many_failed_starts_end_the_process_with_a_failure() -> None:
    h = Harness(min_seconds_between_workers=0, exit_after_num_failed=2, max_launches_per_pass=2)
    h.bundles.stage(2)
    await h.cycle()
    first, second = h.backend.launched
    h.backend.fail(f"job-{first}", "FAILED")
    await h.poll()
    assert not h.service.fatal.is_set()
    h.backend.fail(f"job-{second}", "FAILED")
    await h.poll()
    assert h.service.fatal.is_set()
    assert h.service.fatal_reason == "jobs:p: 2 workers failed to start (limit 2)"


@pytest.mark.parametrize("error", [LaunchRefused("no such queue"), TransientError("503")])
async def test_a_failed_launch_attempt_starts_the_cooldown(error: Exception) -> None:
    h = Harness(min_seconds_between_workers=60)
    h.bundles.stage(1)
    h.backend.launch_error = error
    assert await h.cycle() == ("staged_work", 0)
    h.backend.launch_error = None
    assert await h.cycle() == ("cooldown", 0)
    h.clock.advance(60)
    assert await h.cycle() == ("staged_work", 1)
