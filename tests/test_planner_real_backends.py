"""The planner on the real backends CI runs: moto's AWS Batch and a real Slurm.

CodaLab is the simulator over real HTTP (bundle search, ``workers/info``), the
backend is the real one talking to its real peer, and the jobs are held
pending: moto keeps each stage of a job for a minute (``moto`` fixture),
Slurm's partition is DOWN.  No worker ever registers, so every launched worker
stays *booting*: a ``fast`` pool must count them and launch no more than the
staged bundles need; one booting past ``provision_timeout_seconds`` is stuck
and, with ``cancel_stuck_workers``, cancelled by the backend.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest_asyncio
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.model import JobState
from codalab_scaler.service.context import Context
from codalab_scaler.service.observe import poll_jobs
from codalab_scaler.service.planning import plan_pass, poll_demand, poll_workers
from codalab_scaler.service.wiring import Overrides
from codalab_scaler.simulator import CodaLabSimulator
from codalab_scaler.sources.backends import WorkerCredentials
from codalab_scaler.sources.backends.aws_batch.backend import CANCEL_REASON
from codalab_scaler.sources.backends.base import Backend
from codalab_scaler.sources.backends.slurm.backend import SlurmBatchBackend
from codalab_scaler.sources.backends.slurm.settings import SlurmBatchBackendSettings
from tests.harness import opened
from tests.moto_server import QUEUE, ROLE_ARN, SECRET_ARN, MotoBatch, aws_env, moto, moto_server
from tests.simulator_fixtures import SimFactory, sim_factory_fixture
from tests.slurm_cluster import SlurmCluster, slurm_cluster_fixture, slurm_fixture

__all__ = [  # fixtures used by name
    "aws_env",
    "moto",
    "moto_server",
    "sim_factory_fixture",
    "slurm_cluster_fixture",
    "slurm_fixture",
]

USER, PASSWORD = "codalab", "pw-real-backends-Q9"
BUNDLES = 5  # staged, one cpu each
WORKER_CPUS = 2  # two bundles per worker: the bin-packing needs ceil(5 / 2) workers
NEEDED = 3
PASSES = 6
PAUSE = 0.3  # seconds between passes: the backend lists what the last pass launched
STUCK_PASSES = 30  # bound on the passes a stuck worker may take to be found and cancelled

FAST = {
    "policy": "fast",
    "min_workers": 0,
    "max_workers": 20,  # generous: only the need may stop the pool
    "launch_rate_per_minute": 600,
    "launch_burst": 20,  # enough tokens to launch for every bundle several times over
}
STUCK = {
    "policy": "fast",
    "min_workers": 0,
    "max_workers": 1,
    "provision_timeout_seconds": 1.5,
    "cancel_stuck_workers": True,
}


class Passes:
    """Planner passes driven by hand: every poll of a pass, then one plan."""

    def __init__(self, ctx: Context, registry: CollectorRegistry, sim: CodaLabSimulator) -> None:
        self.ctx, self.registry, self.sim = ctx, registry, sim

    async def step(self) -> None:
        pools = self.ctx.pools.values()
        await asyncio.gather(
            poll_demand(self.ctx), poll_workers(self.ctx), *(poll_jobs(self.ctx, p) for p in pools)
        )
        await plan_pass(self.ctx)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def launched(self) -> float:
        return self.sample("codalab_scaler_launches_total", pool="p", outcome="launched")

    async def listed(self) -> list[JobState]:
        return sorted(job.state for job in await self.ctx.pools["p"].backend.list_jobs())


MakeBackend = Callable[[Settings], Backend]
Start = Callable[..., Awaitable[Passes]]


@pytest_asyncio.fixture
async def start(sim_factory: SimFactory) -> AsyncIterator[Start]:
    """``await start(pool, backend_table, make_backend=None, **top)``: one pool ``p``."""
    async with AsyncExitStack() as stack:

        async def make(
            pool: dict[str, Any],
            backend: dict[str, Any],
            make_backend: MakeBackend | None = None,
            **top: Any,
        ) -> Passes:
            sim = await sim_factory(users={USER: PASSWORD})
            settings = Settings.model_validate(
                {
                    "server": sim.url,
                    "username": USER,
                    "password": PASSWORD,
                    "sleep_time": 1,
                    "request_timeout_seconds": 5,
                    **top,
                    "pools": {"p": {**pool, "backend": backend}},
                }
            )
            backends = None if make_backend is None else {"p": make_backend(settings)}
            registry = CollectorRegistry()
            ctx = await stack.enter_async_context(
                opened(settings, registry=registry, overrides=Overrides(backends=backends))
            )
            return Passes(ctx, registry, sim)

        yield make


def aws_backend(moto: MotoBatch) -> dict[str, Any]:
    return {
        "kind": "aws-batch",
        "endpoint_url": moto.url,
        "job_queue": QUEUE,
        "password_secret_arn": SECRET_ARN,
        "execution_role_arn": ROLE_ARN,
        "cpus": WORKER_CPUS,
        "memory_mb": 8192,  # cpus, not memory, decide how many bundles fit a worker
    }


def slurm_backend(slurm: SlurmCluster, tmp_path: Path) -> dict[str, Any]:
    return {
        "kind": "slurm-batch",
        "partition": slurm.partition,
        "job_name": f"t{uuid.uuid4().hex[:8]}",
        "cpus": WORKER_CPUS,
        "gpus": 0,
        "memory_mb": 4000,  # the test node's RealMemory: sbatch accepts it
        "slurm_work_dir": str(tmp_path / "slurm"),
        "command_timeout_seconds": 5,
    }


def slurm_on(cluster: SlurmCluster) -> MakeBackend:
    """The real Slurm backend, with the test cluster's ``SLURM_CONF`` in its commands' env."""

    def make(settings: Settings) -> Backend:
        pool = settings.pools["p"]
        assert isinstance(pool.backend, SlurmBatchBackendSettings)
        options = pool.worker_options(settings.server)
        credentials = WorkerCredentials(USER, PASSWORD)
        return SlurmBatchBackend("p", options, pool.backend, credentials, env=cluster.env)

    return make


# -- a fast pool with its jobs held pending launches exactly what the bundles need -------


async def launches_only_the_need(run: Passes) -> None:
    for _ in range(BUNDLES):
        run.sim.add_bundle(USER, cpus=1, memory="1g", duration=600)
    for n in range(PASSES):
        await run.step()
        # Every pass: exactly the need, never above, whatever the tokens and max allow.
        assert run.launched() == NEEDED, f"pass {n + 1}"
        await asyncio.sleep(PAUSE)
    assert await run.listed() == [JobState.PENDING] * NEEDED  # the backend holds them pending
    plan = run.ctx.state.plan
    assert plan is not None
    p = plan.pools["p"]
    assert (p.needed, p.launch) == (0, 0)
    assert [placed.where.value for placed in p.placements] == ["booting"] * BUNDLES
    assert len({placed.worker for placed in p.placements}) == NEEDED


async def test_fast_pool_on_moto_with_jobs_held_pending_launches_only_the_need(
    start: Start, moto: MotoBatch
) -> None:
    run = await start(FAST, aws_backend(moto))
    await launches_only_the_need(run)
    names = await asyncio.to_thread(moto.statuses)
    assert len(names) == NEEDED  # and AWS Batch holds exactly that many


async def test_fast_pool_on_slurm_with_jobs_held_pending_launches_only_the_need(
    start: Start, slurm: SlurmCluster, tmp_path: Path
) -> None:
    backend = slurm_backend(slurm, tmp_path)
    run = await start(FAST, backend, slurm_on(slurm))
    with slurm.partition_down():
        await launches_only_the_need(run)
        ours = [s for s, name in slurm.jobs().values() if backend["job_name"] in name]
        assert ours == ["PENDING"] * NEEDED  # and Slurm holds exactly that many


# -- a worker that never registers is stuck, then cancelled by its backend ---------------


async def cancelled_once_stuck(run: Passes) -> None:
    """Pass until the one worker is stuck and cancelled, then twice more."""
    run.sim.add_bundle(USER, cpus=1, memory="1g", duration=600)
    for _ in range(STUCK_PASSES):
        await run.step()
        if run.sample("codalab_scaler_cancelled_workers_total", pool="p", outcome="cancelled"):
            break
        await asyncio.sleep(PAUSE)
    for _ in range(2):  # reported and cancelled once, however many passes still list it
        await asyncio.sleep(PAUSE)
        await run.step()
    assert run.sample("codalab_scaler_stuck_workers_total", pool="p") == 1
    assert run.sample("codalab_scaler_cancelled_workers_total", pool="p", outcome="cancelled") == 1
    assert run.sample("codalab_scaler_cancelled_workers_total", pool="p", outcome="failed") == 0
    assert run.sample("codalab_scaler_backoffs_total", pool="p") == 1
    assert run.launched() == 1  # backing off: no new worker yet
    assert run.ctx.state.snapshot.pools["p"].failed_starts == 0


async def test_a_worker_that_never_registers_is_cancelled_on_moto(
    start: Start, moto: MotoBatch
) -> None:
    run = await start(STUCK, aws_backend(moto))
    await cancelled_once_stuck(run)
    (job_id,) = [job.job_id for job in await run.ctx.pools["p"].backend.list_jobs()]
    job = moto.batch.describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["statusReason"] == CANCEL_REASON  # TerminateJob reached AWS for this job


async def test_a_worker_that_never_registers_is_cancelled_on_slurm(
    start: Start, slurm: SlurmCluster, tmp_path: Path
) -> None:
    backend = slurm_backend(slurm, tmp_path)
    run = await start(STUCK, backend, slurm_on(slurm))
    with slurm.partition_down():
        await cancelled_once_stuck(run)
        ours = [s for s, name in slurm.jobs().values() if backend["job_name"] in name]
        assert ours == ["CANCELLED"]
        assert await run.listed() == []  # ended, and not a failed start


async def test_a_dry_run_names_the_stuck_slurm_job_and_leaves_it(
    start: Start, slurm: SlurmCluster, tmp_path: Path
) -> None:
    backend = slurm_backend(slurm, tmp_path)
    with slurm.partition_down():
        earlier = await start(STUCK, backend, slurm_on(slurm))  # launched before the dry run
        earlier.sim.add_bundle(USER, cpus=1, memory="1g", duration=600)
        await earlier.step()
        assert earlier.launched() == 1
        (job_id,) = [job.job_id for job in await earlier.ctx.pools["p"].backend.list_jobs()]
        run = await start(STUCK, backend, slurm_on(slurm), dry_run=True)
        with capture_logs() as logs:
            for _ in range(STUCK_PASSES):
                await run.step()
                if run.sample("codalab_scaler_stuck_workers_total", pool="p"):
                    break
                await asyncio.sleep(PAUSE)
        assert [e["job_ids"] for e in logs if e["event"] == "scaler.dry_run_cancel"] == [[job_id]]
        assert slurm.jobs()[job_id][0] == "PENDING"  # no scancel
        assert (
            run.sample("codalab_scaler_cancelled_workers_total", pool="p", outcome="cancelled") == 0
        )
