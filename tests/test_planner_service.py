"""The planner in the service: in-memory peers, a fake clock, several pools stepped together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import LaunchRefused, TransientError
from codalab_scaler.core.model import JobState, RegisteredWorker, StagedBundle
from codalab_scaler.service import planning
from codalab_scaler.service.app import make_app
from codalab_scaler.service.context import Context
from codalab_scaler.service.health import HealthReport
from codalab_scaler.service.loops import run_once
from codalab_scaler.service.observe import poll_jobs
from codalab_scaler.service.planning import plan_pass, poll_demand, poll_workers
from codalab_scaler.service.status import build_status
from codalab_scaler.service.wiring import Overrides
from tests.fakes import FakeBackend, FakeBundles, FakeClock
from tests.harness import opened, started
from tests.waiting import eventually

GIB = 1 << 30


@dataclass
class FakeWorkers:
    """workers/info: the check-ins to answer, or an error to raise."""

    workers: list[RegisteredWorker] = field(default_factory=list)
    error: Exception | None = None
    malformed: tuple[object, ...] = ()
    checked_out: list[str] = field(default_factory=list)
    checkout_error: Exception | None = None

    async def fetch_workers(self) -> FakeWorkers:
        if self.error is not None:
            raise self.error
        return self

    async def checkout_worker(self, worker_id: str) -> None:
        """As CodaLab: the worker is no longer listed."""
        if self.checkout_error is not None:
            raise self.checkout_error
        self.checked_out.append(worker_id)
        self.workers = [w for w in self.workers if w.worker_id != worker_id]

    def register(self, worker_id: str, *, cpus: int = 1, runs: int = 0) -> None:
        self.workers.append(
            RegisteredWorker(
                f"host-{worker_id}",
                cpus,
                0,
                2 * GIB,
                run_uuids=tuple(f"r{i}" for i in range(runs)),
                checkin_time=1_000_000.0,  # stands still: move it to say the worker checked in
            )
        )


class Service:
    def __init__(self, ctx: Context, registry: CollectorRegistry, clock: FakeClock,
                 bundles: FakeBundles, workers: FakeWorkers,
                 backends: dict[str, FakeBackend]) -> None:  # fmt: skip
        self.ctx, self.registry, self.clock = ctx, registry, clock
        self.bundles, self.workers, self.backends = bundles, workers, backends

    async def poll(self) -> None:
        await asyncio.gather(
            poll_demand(self.ctx),
            poll_workers(self.ctx),
            *(poll_jobs(self.ctx, p) for p in self.ctx.pools.values()),
        )

    async def cycle(self) -> dict[str, tuple[str, int]]:
        await self.poll()
        results = await plan_pass(self.ctx)
        return {name: (d.reason.value, n) for name, (d, n) in results.items()}

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


Factory = Callable[..., Awaitable[Service]]


def settings(pools: dict[str, dict[str, Any]], **top: Any) -> Settings:
    def pool(p: dict[str, Any]) -> dict[str, Any]:
        backend = {k: p.pop(k) for k in list(p) if k in {"cpus", "gpus", "memory_mb"}}
        return {"min_workers": 0, "max_workers": 10, "backend": backend, **p}

    return Settings.model_validate(
        {
            "username": "alice",
            "password": "pw",
            "sleep_time": 5,
            **top,
            "pools": {name: pool(dict(p)) for name, p in pools.items()},
        }
    )


@pytest_asyncio.fixture
async def service() -> AsyncIterator[Factory]:
    async with AsyncExitStack() as stack:

        async def make(pools: dict[str, dict[str, Any]], **top: Any) -> Service:
            clock, bundles, workers = FakeClock(), FakeBundles(), FakeWorkers()
            backends: dict[str, FakeBackend] = {name: FakeBackend() for name in pools}
            registry = CollectorRegistry()
            overrides = Overrides(bundles=bundles, backends=backends, workers=workers)
            ctx = await stack.enter_async_context(
                opened(settings(pools, **top), clock=clock, registry=registry, overrides=overrides)
            )
            return Service(ctx, registry, clock, bundles, workers, backends)

        yield make


def stage(bundles: FakeBundles, n: int, *, gpus: int = 0, tag: str = "") -> None:
    start = len(bundles.staged)
    bundles.staged += [
        StagedBundle(f"0x{i:032x}", 1, gpus, GIB, tag) for i in range(start, start + n)
    ]


async def test_two_overlapping_pools_launch_exactly_the_workers_needed(service: Factory) -> None:
    s = await service({"a": {"policy": "fast"}, "b": {"policy": "fast"}})
    stage(s.bundles, 3)
    assert await s.cycle() == {"a": ("staged_work", 3), "b": ("no_staged", 0)}
    assert len(s.bundles.calls) == 1  # same keywords: one search for both pools
    # Booting workers cover the bundles: nothing more, however many passes.
    assert await s.cycle() == {"a": ("covered_by_workers", 0), "b": ("no_staged", 0)}
    assert [len(b.launched) for b in s.backends.values()] == [3, 0]


async def test_two_compat_pools_no_longer_double_count(service: Factory) -> None:
    pools = {"a": {"max_launches_per_pass": 10, "min_seconds_between_workers": 0}}
    s = await service({**pools, "b": dict(pools["a"])})
    stage(s.bundles, 3)
    assert await s.cycle() == {"a": ("staged_work", 3), "b": ("no_staged", 0)}


async def test_a_gpu_bundle_goes_to_the_gpu_pool(service: Factory) -> None:
    s = await service({"cpu": {"policy": "fast"}, "gpu": {"policy": "fast", "gpus": 1}})
    stage(s.bundles, 2)
    stage(s.bundles, 1, gpus=1)
    assert await s.cycle() == {"cpu": ("staged_work", 2), "gpu": ("staged_work", 1)}


async def test_a_refusing_pool_backs_off_and_its_bundles_fall_through(
    service: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planning, "jitter", lambda: 0.999999)
    s = await service({"first": {"policy": "fast", "priority": 1}, "second": {"policy": "fast"}})
    s.backends["first"].launch_error = LaunchRefused("no such queue")
    stage(s.bundles, 2)
    with capture_logs() as logs:
        assert await s.cycle() == {"first": ("staged_work", 0), "second": ("no_staged", 0)}
    assert [e["seconds"] for e in logs if e["event"] == "pool.backing_off"] == [10.0]
    assert s.sample("codalab_scaler_backoff_remaining_seconds", pool="first") == pytest.approx(10)
    assert await s.cycle() == {"first": ("backing_off", 0), "second": ("staged_work", 2)}
    status = build_status(s.ctx, HealthReport(ok=True, problems=(), loops={}))
    assert status["pools"]["first"]["planner"]["backoff_seconds"] == pytest.approx(10)


async def test_a_failed_workers_view_is_a_stale_supply_view(service: Factory) -> None:
    s = await service({"f": {"policy": "fast"}, "c": {"search": ["x"]}})
    s.workers.error = TransientError("codalab: 502")
    stage(s.bundles, 2)
    result = await s.cycle()
    assert result["f"] == ("stale_view", 0)
    decision = s.ctx.state.snapshot.pools["f"].last_decision
    assert decision is not None
    assert decision.stale == ("workers:failed",)


async def test_a_registered_idle_worker_takes_the_bundle_instead_of_a_launch(
    service: Factory,
) -> None:
    s = await service({"f": {"policy": "fast"}})
    stage(s.bundles, 1)
    assert await s.cycle() == {"f": ("staged_work", 1)}
    (worker,) = s.backends["f"].launched
    s.backends["f"].activate_all()
    s.workers.register(worker)
    stage(s.bundles, 1)  # a second bundle: the registered worker has room for one
    assert await s.cycle() == {"f": ("staged_work", 1)}
    plan = s.ctx.state.plan
    assert plan is not None
    where = sorted(p.where.value for p in plan.pools["f"].placements)
    assert where == ["new", "serving"]


async def test_a_worker_whose_job_ended_is_checked_out_once_and_only_then(
    service: Factory,
) -> None:
    s = await service({"f": {"policy": "fast"}})
    backend = s.backends["f"]
    s.workers.register("someone-elses")  # listed, never one of this pool's jobs
    stage(s.bundles, 1)
    await s.cycle()
    (worker,) = backend.launched
    backend.activate_all()
    s.workers.register(worker)
    s.bundles.staged.clear()
    await s.cycle()
    await s.cycle()
    assert s.workers.checked_out == []  # its job is live: it serves
    backend.list_error = TransientError("listing failed")
    del backend.jobs[f"job-{worker}"]
    await s.cycle()
    assert s.workers.checked_out == []  # a failed listing proves nothing ended
    backend.list_error = None
    with capture_logs() as logs:
        await s.cycle()  # the job is gone, CodaLab still lists the worker
        s.clock.advance(11)
        await s.cycle()
        assert s.workers.checked_out == []  # its check-in time has not stood still 12 s yet
        s.clock.advance(1)
        await s.cycle()
        await s.cycle()
    assert s.workers.checked_out == [f"host-{worker}"]
    events = [(e["event"], e.get("worker_id")) for e in logs if e["event"].startswith("worker.")]
    assert events == [("worker.checked_out", f"host-{worker}")]
    assert [w.worker_id for w in s.workers.workers] == ["host-someone-elses"]
    assert s.sample("codalab_scaler_checked_out_workers_total", pool="f",
                    outcome="checked_out") == 1  # fmt: skip


async def test_a_live_worker_a_listing_misses_is_never_checked_out(service: Factory) -> None:
    s = await service({"f": {"policy": "fast"}})
    backend = s.backends["f"]
    stage(s.bundles, 1)
    await s.cycle()
    (worker,) = backend.launched
    backend.activate_all()
    s.workers.register(worker)
    await s.cycle()
    del backend.jobs[f"job-{worker}"]  # the backend's listing drops a job that still runs
    for second in range(1, 31):
        (registration,) = s.workers.workers
        s.workers.workers = [replace(registration, checkin_time=1_000_000.0 + second)]
        s.clock.advance(1)
        await s.cycle()  # it keeps checking in: alive, whatever the listing says
    assert s.workers.checked_out == []


async def test_a_failed_checkout_is_tried_again_and_the_setting_turns_checkouts_off(
    service: Factory,
) -> None:
    s = await service({"on": {"policy": "fast", "worker_tag": "on"},
                       "off": {"policy": "fast", "worker_tag": "off",
                               "keep_exited_workers_listed": True}})  # fmt: skip
    stage(s.bundles, 1, tag="on")
    stage(s.bundles, 1, tag="off")
    await s.cycle()
    for name in ("on", "off"):
        (worker,) = s.backends[name].launched
        s.workers.register(worker)
    await s.cycle()  # both listed and registered: serving
    for name in ("on", "off"):
        s.backends[name].jobs.clear()  # both workers exit; CodaLab keeps listing them
    s.bundles.staged.clear()
    s.workers.checkout_error = TransientError("CodaLab at x: timed out")
    await s.cycle()
    s.clock.advance(12)
    with capture_logs() as logs:
        await s.cycle()
        await s.cycle()
    assert s.workers.checked_out == []
    failed = [
        (e["log_level"], e["attempts"]) for e in logs if e["event"] == "worker.checkout_failed"
    ]
    assert failed == [("warning", 1), ("info", 2)]
    s.workers.checkout_error = None
    await s.cycle()
    (on,) = s.backends["on"].launched
    assert s.workers.checked_out == [f"host-{on}"]  # the "off" pool's worker is left listed
    assert s.sample("codalab_scaler_checked_out_workers_total", pool="on", outcome="failed") == 2
    assert s.sample("codalab_scaler_checked_out_workers_total", pool="off",
                    outcome="checked_out") == 0  # fmt: skip


async def test_a_worker_that_never_registers_becomes_stuck_and_is_cancelled(
    service: Factory,
) -> None:
    s = await service({"f": {"policy": "fast", "provision_timeout_seconds": 60,
                              "cancel_stuck_workers": True}})  # fmt: skip
    stage(s.bundles, 1)
    await s.cycle()
    backend = s.backends["f"]
    (worker,) = backend.launched
    backend.activate_all()  # running, but its cl-worker never checks in
    s.clock.advance(30)
    await s.cycle()
    assert backend.cancelled == []
    s.clock.advance(31)
    with capture_logs() as logs:
        await s.cycle()
        await s.cycle()
    assert [e["job_id"] for e in logs if e["event"] == "worker.stuck"] == [f"job-{worker}"]
    assert backend.cancelled == [f"job-{worker}"]
    assert s.sample("codalab_scaler_stuck_workers_total", pool="f") == 1
    assert s.sample("codalab_scaler_cancelled_workers_total", pool="f", outcome="cancelled") == 1
    assert any(e["event"] == "pool.backing_off" for e in logs)


async def test_a_dry_run_only_says_which_stuck_worker_it_would_cancel(service: Factory) -> None:
    s = await service({"f": {"policy": "fast", "provision_timeout_seconds": 60,
                              "cancel_stuck_workers": True}}, dry_run=True)  # fmt: skip
    backend = s.backends["f"]
    backend.jobs["job-w1"] = JobState.ACTIVE  # launched earlier, its cl-worker never checks in
    await s.cycle()
    s.clock.advance(61)
    with capture_logs() as logs:
        await s.cycle()
        await s.cycle()
    would = [e["job_ids"] for e in logs if e["event"] == "scaler.dry_run_cancel"]
    assert would == [["job-w1"]]
    assert backend.cancelled == []
    assert s.sample("codalab_scaler_stuck_workers_total", pool="f") == 1
    assert s.sample("codalab_scaler_cancelled_workers_total", pool="f", outcome="cancelled") == 0


async def test_a_cancel_that_fails_is_counted_and_the_pool_does_not_back_off(
    service: Factory,
) -> None:
    s = await service({"f": {"policy": "fast", "provision_timeout_seconds": 60,
                              "cancel_stuck_workers": True}})  # fmt: skip
    backend = s.backends["f"]
    backend.jobs["job-w1"] = JobState.PENDING
    backend.cancel_error = TransientError("controller down")
    await s.cycle()
    s.clock.advance(61)
    with capture_logs() as logs:
        await s.cycle()
    failed = [e for e in logs if e["event"] == "worker.cancel_failed"]
    assert [(e["job_id"], e["error"]) for e in failed] == [("job-w1", "controller down")]
    assert s.sample("codalab_scaler_cancelled_workers_total", pool="f", outcome="failed") == 1
    assert not any(e["event"] == "pool.backing_off" for e in logs)


async def test_a_failed_cancel_is_tried_again_and_a_cancelled_job_is_not_cancelled_twice(
    service: Factory,
) -> None:
    s = await service({"f": {"policy": "fast", "provision_timeout_seconds": 60,
                              "cancel_stuck_workers": True}})  # fmt: skip
    backend = s.backends["f"]
    backend.jobs["job-w1"] = JobState.PENDING
    backend.cancel_error = TransientError("controller down")
    await s.cycle()
    s.clock.advance(61)
    with capture_logs() as logs:
        await s.cycle()  # found stuck: the cancel fails
        await s.cycle()  # still stuck: tried again, quieter
        backend.cancel_error = None
        await s.cycle()  # succeeds
        backend.jobs["job-w1"] = JobState.PENDING  # the fake forgets it; AWS Batch lists it a while
        await s.cycle()  # the backend still lists it (as AWS Batch does for a while): left alone
    failed = [(e["log_level"], e["attempts"]) for e in logs if e["event"] == "worker.cancel_failed"]
    assert failed == [("warning", 1), ("info", 2)]
    assert backend.cancelled == ["job-w1"]
    assert s.sample("codalab_scaler_cancelled_workers_total", pool="f", outcome="failed") == 2
    assert s.sample("codalab_scaler_cancelled_workers_total", pool="f", outcome="cancelled") == 1
    assert s.sample("codalab_scaler_stuck_workers_total", pool="f") == 1


async def test_unroutable_bundles_are_logged_once_per_reason_and_exported(
    service: Factory,
) -> None:
    s = await service({"cpu": {"policy": "fast"}})
    stage(s.bundles, 1, gpus=2)
    stage(s.bundles, 1, tag="elsewhere")
    with capture_logs() as logs:
        await s.cycle()
        await s.cycle()
    summaries = [e for e in logs if e["event"] == "bundles.unroutable"]
    assert len(summaries) == 1  # one warning for the pass, none on the next: nothing changed
    assert summaries[0]["reasons"] == {"no_pool_for_tag": 1, "too_large": 1}
    events = [(e["reason"], e["resource"]) for e in summaries[0]["examples"]]
    assert sorted(events, key=str) == [("no_pool_for_tag", None), ("too_large", "gpus")]
    assert s.sample("codalab_scaler_unroutable_bundles", reason="too_large") == 1
    assert s.sample("codalab_scaler_unroutable_bundles", reason="no_pool_for_tag") == 1
    status = build_status(s.ctx, HealthReport(ok=True, problems=(), loops={}))
    reasons = sorted(b["unroutable"]["reason"] for b in status["bundles"]["staged"])
    assert reasons == ["no_pool_for_tag", "too_large"]


async def test_malformed_workers_are_counted(service: Factory) -> None:
    s = await service({"f": {"policy": "fast"}})
    s.workers.malformed = (object(), object())
    await s.cycle()
    assert s.sample("codalab_scaler_malformed_workers_total") == 2


async def test_run_once_plans_every_pool_in_one_pass(service: Factory) -> None:
    s = await service({"a": {"policy": "fast"}, "b": {"policy": "fast"}})
    stage(s.bundles, 2)
    assert (await run_once(s.ctx)).ok
    assert [len(b.launched) for b in s.backends.values()] == [2, 0]


@pytest.mark.looptime
async def test_a_compat_service_decides_once_per_interval() -> None:
    backend, bundles = FakeBackend(), FakeBundles()
    bundles.stage(100)
    app = make_app(
        settings({"p": {"max_workers": 100, "min_seconds_between_workers": 0}}, sleep_time=2),
        clock=asyncio.get_running_loop().time,
        registry=CollectorRegistry(),
        overrides=Overrides(bundles=bundles, backends={"p": backend}),
    )
    async with started(app):
        await asyncio.sleep(60)
    assert 29 <= len(backend.launched) <= 31  # the original: at most 30; before: 58


@pytest.mark.looptime
async def test_the_live_service_runs_the_planner_with_its_workers_view() -> None:
    backend, bundles, workers = FakeBackend(), FakeBundles(), FakeWorkers()
    stage(bundles, 4)
    app = make_app(
        settings({"p": {"policy": "fast"}}, sleep_time=1),
        clock=asyncio.get_running_loop().time,
        registry=CollectorRegistry(),
        overrides=Overrides(bundles=bundles, backends={"p": backend}, workers=workers),
    )
    async with started(app) as ctx:
        await eventually(lambda: len(backend.launched) == 4, "four launches", interval=0.1)
        await asyncio.sleep(5)
        assert ctx.state.snapshot.workers.ok
    assert len(backend.launched) == 4
    assert all(state is JobState.PENDING for state in backend.jobs.values())


async def test_waits_are_measured_from_first_seen_to_launch_and_to_leaving(
    service: Factory,
) -> None:
    s = await service({"f": {"policy": "fast", "launch_burst": 1, "launch_rate_per_minute": 6}})
    stage(s.bundles, 2)
    await s.cycle()  # one token: one launch now, for one of the two bundles
    s.clock.advance(10)  # one token more
    await s.cycle()
    count = "codalab_scaler_bundle_launch_wait_seconds_count"
    total = "codalab_scaler_bundle_launch_wait_seconds_sum"
    assert (s.sample(count, pool="f"), s.sample(total, pool="f")) == (2, 10)
    status = build_status(s.ctx, HealthReport(ok=True, problems=(), loops={}))
    assert [b["waiting_seconds"] for b in status["bundles"]["staged"]] == [10, 10]
    s.clock.advance(5)
    s.bundles.staged.clear()  # both started
    await s.cycle()
    assert s.sample("codalab_scaler_bundle_staged_seconds_count", pool="f") == 2
    assert s.sample("codalab_scaler_bundle_staged_seconds_sum", pool="f") == 30


async def test_a_worker_registering_smaller_than_the_shape_backs_a_fast_pool_off(
    service: Factory,
) -> None:
    s = await service({"gpu": {"policy": "fast", "gpus": 1, "max_workers": 8}})
    stage(s.bundles, 1, gpus=1)
    await s.cycle()
    (worker,) = s.backends["gpu"].launched
    s.backends["gpu"].activate_all()
    await s.cycle()
    s.workers.register(worker)  # its cl-worker found no GPU
    with capture_logs() as logs:
        for _ in range(5):
            await s.cycle()
    (event,) = [e for e in logs if e["event"] == "worker.smaller_than_shape"]
    assert (event["registered"]["gpus"], event["shape"]["gpus"]) == (0, 1)
    # Without the backoff, every pass would launch another worker that finds no GPU either.
    assert [e["why"] for e in logs if e["event"] == "pool.backing_off"] == [
        "worker_smaller_than_shape"
    ]
    # The pass that saw it register had planned one more worker for the bundle; then none.
    assert len(s.backends["gpu"].launched) == 2
    status = build_status(s.ctx, HealthReport(ok=True, problems=(), loops={}))
    assert status["bundles"]["staged"][0]["unroutable"]["reason"] == "pools_backing_off"


async def test_status_lists_the_first_bundles_by_uuid_and_counts_them_all(
    service: Factory,
) -> None:
    s = await service({"cpu": {"policy": "fast", "max_workers": 200}})
    stage(s.bundles, 150)
    stage(s.bundles, 30, gpus=2)  # too large: unroutable, uuids after the first 150
    s.bundles.staged.reverse()  # the order CodaLab answers in does not matter
    await s.cycle()
    bundles = build_status(s.ctx, HealthReport(ok=True, problems=(), loops={}))["bundles"]
    assert (bundles["count"], bundles["unroutable_count"]) == (180, 30)
    rows = bundles["staged"]
    assert [r["uuid"] for r in rows] == [f"0x{i:032x}" for i in range(100)]
    assert {r["pool"] for r in rows} == {"cpu"}
    assert all(r["placed"]["where"] == "new" and r["unroutable"] is None for r in rows)
    s.bundles.staged = [b for b in s.bundles.staged if b.gpus or int(b.uuid, 16) >= 95]
    await s.cycle()
    bundles = build_status(s.ctx, HealthReport(ok=True, problems=(), loops={}))["bundles"]
    rows = bundles["staged"]
    assert [r["uuid"] for r in rows] == [f"0x{i:032x}" for i in range(95, 180)][:100]
    assert [r["unroutable"]["reason"] for r in rows[-30:]] == ["too_large"] * 30
    assert (rows[-1]["pool"], rows[-1]["placed"]) == (None, None)


async def test_a_bundle_held_back_on_a_serving_worker_is_not_demand_and_says_so(
    service: Factory,
) -> None:
    # A 2-cpu worker runs one of the user's bundles; CodaLab keeps the other staged
    # (the user is at their parallel-run quota), though the worker has a cpu free.
    s = await service({"f": {"policy": "fast", "cpus": 2}})
    stage(s.bundles, 1)
    assert await s.cycle() == {"f": ("staged_work", 1)}
    (worker,) = s.backends["f"].launched
    s.backends["f"].activate_all()
    s.workers.register(worker, cpus=2, runs=1)
    stage(s.bundles, 1)
    running, held = s.bundles.staged
    s.bundles.staged.remove(running)
    for _ in range(3):
        s.clock.advance(30)
        assert await s.cycle() == {"f": ("covered_by_workers", 0)}
    assert len(s.backends["f"].launched) == 1
    status = build_status(s.ctx, HealthReport(ok=True, problems=(), loops={}))
    (row,) = status["bundles"]["staged"]
    assert row["uuid"] == held.uuid
    assert row["placed"] == {"where": "serving", "worker": f"job-{worker}"}
    assert row["waiting_on"] == f"worker job-{worker} / host-{worker}"
    assert row["waiting_seconds"] == 60
    first_seen = datetime.fromisoformat(row["first_seen"])
    assert first_seen.utcoffset() == timedelta(0)
    assert row["first_seen"].endswith("Z")
    elapsed = datetime.now(UTC) - first_seen
    assert timedelta(seconds=58) <= elapsed <= timedelta(seconds=62 + 60)


async def test_bundles_placed_on_new_or_booting_workers_wait_on_nothing(service: Factory) -> None:
    s = await service({"f": {"policy": "fast", "launch_burst": 1, "launch_rate_per_minute": 1}})
    stage(s.bundles, 2)
    await s.cycle()  # one token: one launch
    await s.cycle()  # one bundle on that booting worker, one on a new one (no token yet)
    status = build_status(s.ctx, HealthReport(ok=True, problems=(), loops={}))
    rows = status["bundles"]["staged"]
    assert sorted(r["placed"]["where"] for r in rows) == ["booting", "new"]
    assert [r["waiting_on"] for r in rows] == [None, None]
