"""The planner over real HTTP: the simulator, the real client, real local workers.

The workers are the stand-in ``cl-worker`` (``codalab_scaler.simulator``),
started by the ``local`` backend: they log in, check in every second, take
bundles and exit when idle, so the planner sees real ``workers/info``.
"""

from __future__ import annotations

import asyncio
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest_asyncio
from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.service.context import Context
from codalab_scaler.service.health import HealthReport
from codalab_scaler.service.observe import poll_jobs
from codalab_scaler.service.planning import plan_pass, poll_demand, poll_workers
from codalab_scaler.service.status import build_status
from codalab_scaler.simulator import CodaLabSimulator
from tests.harness import opened
from tests.simulator_fixtures import SimFactory, sim_factory_fixture

__all__ = ["sim_factory_fixture"]  # the fixture is used by name

USER, PASSWORD = "codalab", "root-pw"


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


class Live:
    def __init__(self, ctx: Context, registry: CollectorRegistry, sim: CodaLabSimulator) -> None:
        self.ctx, self.registry, self.sim = ctx, registry, sim

    async def step(self) -> None:
        pools = self.ctx.pools.values()
        await asyncio.gather(
            poll_demand(self.ctx), poll_workers(self.ctx), *(poll_jobs(self.ctx, p) for p in pools)
        )
        await plan_pass(self.ctx)

    async def run(self, seconds: float, *, every: float = 0.5) -> None:
        for _ in range(int(seconds / every)):
            await self.step()
            await asyncio.sleep(every)

    def launched(self, pool: str) -> float:
        value = self.registry.get_sample_value(
            "codalab_scaler_launches_total", {"pool": pool, "outcome": "launched"}
        )
        return value or 0.0

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


LiveFactory = Callable[..., Awaitable[Live]]


@pytest_asyncio.fixture
async def live(sim_factory: SimFactory, tmp_path: Path) -> AsyncIterator[LiveFactory]:
    worker = _script(
        tmp_path / "cl-worker",
        f'exec "{sys.executable}" -m codalab_scaler.simulator.stand_in_worker "$@"',
    )
    async with AsyncExitStack() as stack:

        async def make(pools: dict[str, dict[str, Any]], **sim_options: Any) -> Live:
            sim = await sim_factory(users={USER: PASSWORD}, **sim_options)

            def pool(p: dict[str, Any]) -> dict[str, Any]:
                backend = {"kind": "local", "state_dir": str(tmp_path / "state"),
                           **p.pop("backend", {})}  # fmt: skip
                return {
                    "min_workers": 0,
                    "max_workers": 6,
                    "worker_executable": str(worker),
                    "worker_idle_seconds": 3,
                    "worker_checkin_frequency_seconds": 1,
                    "backend": backend,
                    **p,
                }

            settings = Settings.model_validate(
                {
                    "server": sim.url,
                    "username": USER,
                    "password": PASSWORD,
                    "sleep_time": 0.5,
                    "request_timeout_seconds": 2,
                    "pools": {name: pool(dict(p)) for name, p in pools.items()},
                }
            )
            registry = CollectorRegistry()
            ctx = await stack.enter_async_context(opened(settings, registry=registry))
            stack.push_async_callback(_stop_workers, ctx)
            return Live(ctx, registry, sim)

        yield make


async def _stop_workers(ctx: Context) -> None:
    for pool in ctx.pools.values():
        stop = getattr(pool.backend, "stop_all", None)
        if stop is not None:
            await stop(timeout=2)


async def test_two_overlapping_pools_and_three_bundles_launch_exactly_three(
    live: LiveFactory,
) -> None:
    s = await live({"a": {"policy": "fast"}, "b": {"policy": "fast"}})
    for _ in range(3):
        s.sim.add_bundle(USER, duration=3)
    await s.run(6)
    assert (s.launched("a"), s.launched("b")) == (3, 0)
    assert s.sim.bundles_in_state("staged") == []


async def test_a_gpu_bundle_goes_to_the_gpu_pool(live: LiveFactory, tmp_path: Path) -> None:
    # cl-worker finds its GPUs itself; the stand-in is told it has one.
    gpu_worker = _script(
        tmp_path / "gpu-worker",
        f'exec "{sys.executable}" -m codalab_scaler.simulator.stand_in_worker --gpus 1 "$@"',
    )
    gpu = {"policy": "fast", "backend": {"gpus": 1}, "worker_executable": str(gpu_worker)}
    s = await live({"cpu": {"policy": "fast"}, "gpu": gpu})
    s.sim.add_bundle(USER, gpus=1, duration=1)
    s.sim.add_bundle(USER, duration=1)
    await s.run(2)
    assert (s.launched("cpu"), s.launched("gpu")) == (1, 1)


async def test_a_refusing_pool_backs_off_and_its_bundles_fall_through(
    live: LiveFactory, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-cl-worker")
    s = await live({"bad": {"policy": "fast", "priority": 1, "worker_executable": missing},
                    "good": {"policy": "fast"}})  # fmt: skip
    for _ in range(2):
        s.sim.add_bundle(USER, duration=1)
    await s.run(3)
    # Both launches of the pass went out at once and were refused; one backoff.
    assert s.sample("codalab_scaler_launches_total", pool="bad", outcome="refused") == 2
    assert s.sample("codalab_scaler_backoffs_total", pool="bad") == 1
    assert s.launched("good") == 2


async def test_a_worker_that_never_registers_is_stuck_then_cancelled(
    live: LiveFactory, tmp_path: Path
) -> None:
    silent = _script(tmp_path / "silent-worker", "exec sleep 600")
    pool = {"policy": "fast", "max_workers": 1, "worker_executable": str(silent),
            "provision_timeout_seconds": 1.5, "cancel_stuck_workers": True}  # fmt: skip
    s = await live({"p": pool})
    s.sim.add_bundle(USER, duration=1)
    await s.run(3)
    assert s.sample("codalab_scaler_stuck_workers_total", pool="p") == 1
    assert s.sample("codalab_scaler_cancelled_workers_total", pool="p", outcome="cancelled") == 1
    jobs = s.ctx.state.snapshot.pools["p"].jobs.value
    assert jobs == ()  # SIGTERM-ed, reaped, not a failed start
    assert s.ctx.state.snapshot.pools["p"].failed_starts == 0


async def test_a_bundle_held_back_by_the_users_quota_waits_on_its_worker_and_is_not_demand(
    live: LiveFactory, tmp_path: Path
) -> None:
    # A 2-cpu worker; CodaLab runs one bundle of the user at a time (parallel-run quota 1).
    two_cpus = _script(
        tmp_path / "two-cpu-worker",
        f'exec "{sys.executable}" -m codalab_scaler.simulator.stand_in_worker --cpus 2 "$@"',
    )
    pool = {"policy": "fast", "backend": {"cpus": 2}, "worker_executable": str(two_cpus),
            "worker_idle_seconds": 30}  # fmt: skip
    s = await live({"p": pool}, run_quotas={USER: 1})
    uuids = [s.sim.add_bundle(USER, duration=30, memory="1g") for _ in range(2)]
    await s.run(6)
    assert s.launched("p") == 1  # both fit one worker; the held-back one is no demand
    (running,) = s.sim.bundles_in_state("running")
    (held,) = s.sim.bundles_in_state("staged")
    assert sorted([running, held]) == sorted(uuids)
    (job,) = s.ctx.state.snapshot.pools["p"].jobs.value or ()
    status = build_status(s.ctx, HealthReport(ok=True, problems=(), loops={}))
    (row,) = status["bundles"]["staged"]
    assert row["uuid"] == held
    assert row["placed"] == {"where": "serving", "worker": job.job_id}
    assert row["waiting_on"].startswith(f"worker {job.job_id} / ")
    assert row["waiting_on"].endswith(f"-{job.worker_id}")
