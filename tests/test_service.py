"""The scaler's own scenarios: observe, decide, launch; in-memory peers and a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import LaunchRefused, TransientError
from codalab_scaler.service.app import make_app
from codalab_scaler.service.context import Context
from codalab_scaler.service.loops import run_once
from codalab_scaler.service.scale import scale_pool
from codalab_scaler.service.wiring import Overrides
from tests.fakes import FakeBackend, FakeBundles, FakeClock
from tests.harness import OnePool, opened, started
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
    """Pool ``p`` opened with in-memory peers and a fake clock, stepped by hand."""

    def __init__(
        self, ctx: Context, registry: CollectorRegistry, clock: FakeClock, bundles: FakeBundles,
        backend: FakeBackend,
    ) -> None:  # fmt: skip
        super().__init__(ctx, registry)
        self.clock = clock
        self.bundles = bundles
        self.backend = backend


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest_asyncio.fixture
async def harness() -> AsyncIterator[HarnessFactory]:
    """``await harness(**pool)``: a ``Harness``, closed (as the app closes) after the test."""
    async with AsyncExitStack() as stack:

        async def make(**pool: Any) -> Harness:
            clock, bundles, backend = FakeClock(), FakeBundles(), FakeBackend()
            registry = CollectorRegistry()
            overrides = Overrides(bundles=bundles, backends={"p": backend})
            ctx = await stack.enter_async_context(
                opened(settings(**pool), clock=clock, registry=registry, overrides=overrides)
            )
            return Harness(ctx, registry, clock, bundles, backend)

        yield make


async def test_scales_up_one_per_cooldown_until_pending_covers_staged(
    harness: HarnessFactory,
) -> None:
    h = await harness(min_seconds_between_workers=60)
    h.bundles.stage(2)
    assert await h.cycle() == ("staged_work", 1)
    assert await h.cycle() == ("cooldown", 0)
    h.clock.advance(60)
    assert await h.cycle() == ("staged_work", 1)
    h.clock.advance(60)
    assert await h.cycle() == ("pending_covers_staged", 0)
    assert len(h.backend.launched) == 2
    assert h.sample("codalab_scaler_launches_total", pool="p", outcome="launched") == 2


async def test_search_keywords_reach_the_bundle_source(harness: HarnessFactory) -> None:
    h = await harness(search=["request_gpus=0"], worker_tag="cpuq", worker_tag_exclusive=True)
    await h.poll()
    assert h.bundles.calls == [
        ("state=staged", "request_gpus=0", ".mine", "request_queue=cpuq,tag=cpuq")
    ]


async def test_accepted_but_unlisted_launch_is_pending_until_timeout(
    harness: HarnessFactory,
) -> None:
    h = await harness(min_seconds_between_workers=0, in_flight_timeout_seconds=120)
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


async def test_listed_launch_leaves_in_flight_and_counts_once(harness: HarnessFactory) -> None:
    h = await harness(min_seconds_between_workers=0)
    h.bundles.stage(2)
    await h.cycle()
    assert len(h.ctx.state.snapshot.pools["p"].in_flight) == 1
    await h.poll()  # the backend lists it now
    state = h.ctx.state.snapshot.pools["p"]
    assert state.in_flight == ()
    assert await h.cycle() == ("staged_work", 1)  # pending 1 < staged 2
    assert await h.cycle() == ("pending_covers_staged", 0)


async def test_failed_bundle_poll_launches_nothing_not_even_for_min(
    harness: HarnessFactory,
) -> None:
    h = await harness(min_workers=2)
    h.bundles.error = TransientError("codalab: 502")
    assert await h.cycle() == ("stale_view", 0)
    assert h.backend.launched == []
    assert (
        h.sample("codalab_scaler_poll_errors_total", pool="p", source="bundles", kind="transient")
        == 1
    )
    assert h.sample("codalab_scaler_observation_ok", pool="p", source="bundles") == 0


async def test_failed_job_poll_keeps_last_jobs_but_launches_nothing(
    harness: HarnessFactory,
) -> None:
    h = await harness(
        min_workers=0, min_seconds_between_workers=0,
        retry_attempts=2, retry_max_seconds=1, retry_backoff_seconds=0.001,
    )  # fmt: skip
    h.bundles.stage(5)
    await h.cycle()
    await h.poll()  # the launched job is listed: the last good view holds one job
    h.backend.list_error = TransientError("backend down")
    assert await h.cycle() == ("stale_view", 0)
    assert len(h.ctx.state.snapshot.pools["p"].jobs.value or ()) == 1  # last good view kept
    assert h.sample("codalab_scaler_retries_total", peer="backend", pool="p") == 1


async def test_old_view_is_stale(harness: HarnessFactory) -> None:
    h = await harness(min_workers=1)
    await h.poll()
    h.clock.advance(16)  # staleness = 3 x sleep_time = 15 s
    decision, launched = await scale_pool(h.ctx, h.pool)
    assert (decision.reason.value, launched) == ("stale_view", 0)
    assert decision.stale == ("bundles:too_old", "jobs:too_old")


async def test_refused_launch_is_counted_and_the_pool_goes_on(harness: HarnessFactory) -> None:
    h = await harness(min_seconds_between_workers=0)
    h.bundles.stage(1)
    h.backend.launch_error = LaunchRefused("no such queue")
    with capture_logs() as logs:
        assert await h.cycle() == ("staged_work", 0)
    assert h.sample("codalab_scaler_launches_total", pool="p", outcome="refused") == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["scaler.launch_refused"]
    h.backend.launch_error = None
    assert await h.cycle() == ("staged_work", 1)


async def test_dry_run_decides_but_never_launches(harness: HarnessFactory) -> None:
    h = await harness(dry_run=True, min_workers=1)
    assert await h.cycle() == ("below_min", 0)
    assert h.backend.launched == []
    assert h.sample("codalab_scaler_launches_total", pool="p", outcome="dry_run") == 1


async def test_batch_mode_catches_up_in_one_pass(harness: HarnessFactory) -> None:
    h = await harness(max_launches_per_pass=5, max_workers=4)
    h.bundles.stage(9)
    assert await h.cycle() == ("staged_work", 4)


async def test_gauges_mirror_the_snapshot_and_leak_no_credentials(harness: HarnessFactory) -> None:
    h = await harness(min_workers=0, min_seconds_between_workers=0, cpus=1)
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


async def test_run_once_reports_stale_pools(harness: HarnessFactory) -> None:
    h = await harness(min_workers=1)
    assert (await run_once(h.ctx)).ok
    assert len(h.backend.launched) == 1
    h2 = await harness()
    h2.bundles.error = TransientError("down")
    result = await run_once(h2.ctx)
    assert not result.ok
    assert "stale view" in result.problems[0]


def live_app(backend: FakeBackend, bundles: FakeBundles, **pool: Any) -> web.Application:
    """The whole app on virtual loop time (tests marked ``looptime``); run it with ``started``."""
    return make_app(
        settings(sleep_time=0.05, **pool),
        clock=asyncio.get_running_loop().time,
        registry=CollectorRegistry(),
        overrides=Overrides(bundles=bundles, backends={"p": backend}),
    )


@pytest.mark.looptime
async def test_loops_launch_and_stop_cleanly() -> None:
    backend, bundles = FakeBackend(), FakeBundles()
    bundles.stage(2)
    async with started(live_app(backend, bundles, min_seconds_between_workers=0)) as ctx:
        await eventually(lambda: len(backend.launched) == 2, "two launches", interval=0.01)
        await eventually(lambda: ctx.liveness.check().ok and all(
            ctx.liveness.last_beat(n) is not None for n in ("bundles:p", "jobs:p", "scaler:p")
        ), "every loop beating", interval=0.01)  # fmt: skip
    assert backend.closed
    assert not ctx.fatal.is_set()


@pytest.mark.looptime
async def test_stop_lets_an_in_flight_launch_finish() -> None:
    backend, bundles = FakeBackend(launch_delay=0.5), FakeBundles()
    bundles.stage(1)
    async with started(live_app(backend, bundles)) as ctx:
        await eventually(
            lambda: ctx.state.snapshot.pools["p"].last_decision is not None,
            "a decision",
            interval=0.01,
        )
        await asyncio.sleep(0.1)  # the launch is now sleeping inside the backend
    assert len(backend.launched) == 1
    assert len(ctx.state.snapshot.pools["p"].in_flight) == 1


@pytest.mark.looptime
async def test_a_crashed_root_loop_is_fatal_and_unhealthy() -> None:
    backend, bundles = FakeBackend(), FakeBundles()
    backend.list_error = RuntimeError("bug in a backend")
    with capture_logs() as logs:
        async with started(live_app(backend, bundles)) as ctx:
            await eventually(ctx.fatal.is_set, "a fatal error", interval=0.01)
    report = ctx.liveness.check()
    assert not report.ok
    assert report.problems == ("jobs:p: died (RuntimeError: bug in a backend)",)
    assert ctx.fatal.reason == "jobs:p: RuntimeError: bug in a backend"
    assert any(e["event"] == "loop.crashed" for e in logs)


@pytest.mark.parametrize("stuck_for", [0.0, 100.0])
async def test_liveness_flags_a_stuck_loop(stuck_for: float, harness: HarnessFactory) -> None:
    h = await harness()
    h.ctx.liveness.register("bundles:p")
    h.ctx.liveness.beat("bundles:p")
    h.clock.advance(stuck_for)
    report = h.ctx.liveness.check()
    stall = Settings.model_validate(
        {"username": "a", "password": "b", "pools": {"p": {}}}
    ).effective_health_stall_seconds
    assert report.ok is (stuck_for <= stall)


@pytest.mark.looptime
async def test_a_hanging_backend_list_is_a_transient_failure(harness: HarnessFactory) -> None:
    h = await harness(min_workers=1, request_timeout_seconds=0.05, retry_attempts=1)
    release = asyncio.Event()

    async def hang() -> Any:
        await release.wait()  # never set

    h.backend.list_jobs = hang  # type: ignore[method-assign]
    assert await h.cycle() == ("stale_view", 0)
    assert h.ctx.state.snapshot.pools["p"].jobs.error == "listing jobs took longer than 0.05s"


async def test_an_outage_warns_once_and_its_end_is_logged(harness: HarnessFactory) -> None:
    h = await harness()
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


@pytest.mark.looptime
async def test_the_first_decision_waits_for_the_first_polls() -> None:
    backend, bundles = FakeBackend(), FakeBundles(delay=0.2)  # CodaLab answers slowly
    bundles.stage(1)
    with capture_logs() as logs:
        async with started(live_app(backend, bundles)) as ctx:
            await eventually(
                lambda: ctx.state.snapshot.pools["p"].last_decision is not None,
                "a decision",
                interval=0.01,
            )
    decided = [e for e in logs if e["event"] == "scaler.decided"]
    assert decided[0]["reason"] != "stale_view"  # not "never observed" at start-up


async def test_dry_run_logs_what_the_backend_would_submit(harness: HarnessFactory) -> None:
    h = await harness(dry_run=True)
    h.bundles.stage(1)
    with capture_logs() as logs:
        assert await h.cycle() == ("staged_work", 0)
    (event,) = [e for e in logs if e["event"] == "scaler.dry_run_launch"]
    assert event["would"] == {"job_id": f"job-{event['worker_id']}"}
    assert h.backend.launched == []


async def test_a_failed_start_is_counted_logged_and_not_capacity(harness: HarnessFactory) -> None:
    h = await harness(min_seconds_between_workers=0)
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
    assert not h.ctx.fatal.is_set()


async def test_too_many_failed_starts_end_the_process_with_a_failure(
    harness: HarnessFactory,
) -> None:
    h = await harness(
        min_seconds_between_workers=0, exit_after_num_failed=2, max_launches_per_pass=2
    )
    h.bundles.stage(2)
    await h.cycle()
    first, second = h.backend.launched
    h.backend.fail(f"job-{first}", "FAILED")
    await h.poll()
    assert not h.ctx.fatal.is_set()
    h.backend.fail(f"job-{second}", "FAILED")
    await h.poll()
    assert h.ctx.fatal.is_set()
    assert h.ctx.fatal.reason == "jobs:p: 2 workers failed to start (limit 2)"


@pytest.mark.parametrize("error", [LaunchRefused("no such queue"), TransientError("503")])
async def test_a_failed_launch_attempt_starts_the_cooldown(
    error: Exception, harness: HarnessFactory
) -> None:
    h = await harness(min_seconds_between_workers=60)
    h.bundles.stage(1)
    h.backend.launch_error = error
    assert await h.cycle() == ("staged_work", 0)
    h.backend.launch_error = None
    assert await h.cycle() == ("cooldown", 0)
    h.clock.advance(60)
    assert await h.cycle() == ("staged_work", 1)


async def test_filtered_bundles_are_one_event_per_poll_with_examples(
    harness: HarnessFactory,
) -> None:
    h = await harness(min_workers=0, cpus=1)
    h.bundles.stage(8, cpus=4)  # too many cpus for the worker shape
    h.bundles.stage(1)
    with capture_logs() as logs:
        await h.poll()
        await h.poll()  # the same bundles: nothing new to report
        h.bundles.stage(2, cpus=2)
        await h.poll()
    events = [e for e in logs if e["event"] == "bundles.filtered"]
    assert [(e["count"], e["reasons"]) for e in events] == [(8, {"cpus": 8}), (2, {"cpus": 2})]
    assert [len(e["examples"]) for e in events] == [5, 2]
    assert events[1]["examples"][0] == {"uuid": f"0x{9:032x}", "reason": "cpus",
                                        "requested": 2, "available": 1}  # fmt: skip
    each = [e["uuid"] for e in logs if e["event"] == "bundle.filtered"]
    assert each == [f"0x{i:032x}" for i in [*range(8), 9, 10]]  # at debug, one per bundle
