"""slurm-batch against a real single-node Slurm (2 CPUs) that this module starts and stops.

In-process scenarios drive the real backend through the service's own
poll/decide/launch steps (fake bundles, fake scaler clock); the last test runs
the installed ``codalab-scaler slurm-batch`` executable against the CodaLab
simulator, with the stand-in ``cl-worker`` running as Slurm jobs.
"""

from __future__ import annotations

import signal
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import RefusedError, TransientError
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.service.context import Context
from codalab_scaler.service.observe import poll_jobs
from codalab_scaler.service.wiring import Overrides
from codalab_scaler.sources.backends import WorkerCredentials
from codalab_scaler.sources.backends.slurm.backend import SlurmBatchBackend
from codalab_scaler.sources.backends.slurm.settings import SlurmBatchBackendSettings
from tests.fakes import FakeBundles, FakeClock
from tests.harness import OnePool, opened
from tests.scaler_process import Launcher, creds, launcher, scrape
from tests.simulator_fixtures import SimFactory, sim_factory_fixture
from tests.slurm_cluster import SlurmCluster, slurm_cluster_fixture, slurm_fixture
from tests.waiting import eventually

# the fixtures this module uses
__all__ = ["launcher", "sim_factory_fixture", "slurm_cluster_fixture", "slurm_fixture"]

PASSWORD = "pw-slurm-Kx7!never-leaks"
BIN = Path(sys.executable).parent
POLL = 0.3  # seconds between looks at Slurm or the job's files: there are no events to wait on


def worker_executable(tmp_path: Path, body: str) -> Path:
    """A cl-worker stand-in: records its environment and argv in its job's dir, then ``body``."""
    path = tmp_path / f"worker-{uuid.uuid4().hex[:6]}"
    path.write_text(
        f'#!/bin/sh\nenv > "$PWD/job.env"\nprintf "%s\\n" "$@" > "$PWD/job.args"\n{body}\n'
    )
    path.chmod(0o755)
    return path


class Plan:
    """What a scenario runs with: settings, a real Slurm backend, fake bundles and clock."""

    def __init__(
        self, cluster: SlurmCluster, tmp_path: Path, executable: Path, cpus: int = 1, **pool: Any
    ) -> None:
        top = {k: pool.pop(k) for k in list(pool) if k in Settings.model_fields}
        self.job_name = f"t{uuid.uuid4().hex[:8]}"
        self.settings = Settings.model_validate(
            {
                "username": "alice", "password": PASSWORD, "sleep_time": 1,
                "retry_attempts": 1, **top,
                "pools": {"p": {
                    "min_workers": 0, "max_workers": 10, "min_seconds_between_workers": 0,
                    "no_prefilter": True,
                    "worker_executable": str(executable),
                    "backend": {
                        "kind": "slurm-batch", "partition": cluster.partition,
                        "cpus": cpus, "gpus": 0, "memory_mb": 100, "job_name": self.job_name,
                        "slurm_work_dir": str(tmp_path / "slurm"), "command_timeout_seconds": 5,
                    },
                    **pool,
                }},
            }
        )  # fmt: skip
        self.cluster = cluster
        # The scaler's own environment holds the password: it must not reach the jobs.
        self.env = {**cluster.env, "CODALAB_PASSWORD": PASSWORD, "CODALAB_USERNAME": "alice"}
        self.backend = self.new_backend()
        self.clock = FakeClock()
        self.bundles = FakeBundles()

    def new_backend(self) -> SlurmBatchBackend:
        pool = self.settings.pools["p"]
        assert isinstance(pool.backend, SlurmBatchBackendSettings)
        options = pool.worker_options(self.settings.server)
        creds = WorkerCredentials("alice", PASSWORD)
        return SlurmBatchBackend("p", options, pool.backend, creds, env=self.env)


class Scenario(OnePool):
    """A service whose only real peer is Slurm: fake bundles, a fake clock for the rules."""

    def __init__(self, ctx: Context, registry: CollectorRegistry, plan: Plan) -> None:
        super().__init__(ctx, registry)
        self.plan = plan
        self.job_name = plan.job_name
        self.backend = plan.backend
        self.bundles = plan.bundles
        self.clock = plan.clock

    def new_backend(self) -> SlurmBatchBackend:
        return self.plan.new_backend()


ScenarioFactory = Callable[..., Awaitable[Scenario]]


@pytest_asyncio.fixture
async def scenario() -> AsyncIterator[ScenarioFactory]:
    """``await scenario(cluster, tmp_path, executable, cpus=1, **pool)``, closed after the test."""
    async with AsyncExitStack() as stack:

        async def make(*args: Any, **pool: Any) -> Scenario:
            plan = Plan(*args, **pool)
            registry = CollectorRegistry()
            overrides = Overrides(bundles=plan.bundles, backends={"p": plan.backend})
            ctx = await stack.enter_async_context(
                opened(plan.settings, clock=plan.clock, registry=registry, overrides=overrides)
            )
            return Scenario(ctx, registry, plan)

        yield make


# Sync on purpose: ruff's ASYNC240 flags blocking pathlib calls written in async tests.
def read(path: Path) -> str:
    return path.read_text()


def exists(path: Path) -> bool:
    return path.exists()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def states(jobs: list[WorkerJob] | tuple[WorkerJob, ...]) -> list[JobState]:
    return sorted(job.state for job in jobs)


async def test_pending_then_running_extra_jobs_wait_and_restart_recovers(
    slurm: SlurmCluster, tmp_path: Path, scenario: ScenarioFactory
) -> None:
    s = await scenario(slurm, tmp_path, worker_executable(tmp_path, "exec sleep 120"))
    ids = [await s.backend.launch(uuid.uuid4().hex) for _ in range(3)]
    first = list(await s.backend.list_jobs())
    assert {job.job_id for job in first} == set(ids)
    assert JobState.PENDING in states(first)  # a job is listed pending before it runs

    async def two_run_one_waits() -> bool:
        return states(list(await s.backend.list_jobs())) == [
            JobState.ACTIVE, JobState.ACTIVE, JobState.PENDING,
        ]  # fmt: skip

    await eventually(two_run_one_waits, "2 running (2 CPUs), 1 pending", within=20, interval=POLL)
    # A new instance (a restarted scaler) finds the same jobs and workers by name.
    before = sorted((j.job_id, j.worker_id, j.state) for j in await s.backend.list_jobs())
    with capture_logs() as logs:
        after = sorted((j.job_id, j.worker_id, j.state) for j in await s.new_backend().list_jobs())
    assert after == before
    assert sum(entry["event"] == "slurm.job_found" for entry in logs) == 3


async def test_credentials_reach_the_worker_only_through_a_0600_file(
    slurm: SlurmCluster, tmp_path: Path, scenario: ScenarioFactory
) -> None:
    s = await scenario(slurm, tmp_path, worker_executable(tmp_path, "exec sleep 120"))
    worker_id = uuid.uuid4().hex
    with capture_logs() as logs:
        job_id = await s.backend.launch(worker_id)
    job_dir = tmp_path / "slurm" / worker_id
    env_dump = job_dir / "job.env"

    async def dumped() -> bool:
        return exists(env_dump) and exists(job_dir / "job.args")

    await eventually(dumped, "the worker wrote its environment", within=20, interval=POLL)
    args = read(job_dir / "job.args").splitlines()
    password_file = Path(args[args.index("--password-file") + 1])
    assert mode(password_file) == 0o600
    assert read(password_file) == f"alice\n{PASSWORD}\n"
    assert f"SLURM_JOB_ID={job_id}" in read(env_dump)
    script_text = read(job_dir / f"root-{s.job_name}-p-{worker_id}.slurm")
    job_record = slurm.run("scontrol", "show", "job", "-dd", job_id)
    for where in (read(env_dump), script_text, job_record, repr(logs)):
        assert PASSWORD not in where
        assert "CODALAB_PASSWORD" not in where


async def test_scaler_stops_at_max_and_when_pending_covers_staged(
    slurm: SlurmCluster, tmp_path: Path, scenario: ScenarioFactory
) -> None:
    sleeper = worker_executable(tmp_path, "exec sleep 120")
    s = await scenario(slurm, tmp_path, sleeper, max_workers=3, max_launches_per_pass=5)
    s.bundles.stage(5)
    assert await s.cycle() == ("staged_work", 3)
    assert await s.cycle() == ("at_max", 0)
    assert len(await s.backend.list_jobs()) == 3
    slurm.scancel_all()

    # Workers of 2 CPUs: one runs, the next waits for the node; pending 1 covers staged 1.
    s = await scenario(slurm, tmp_path / "b", sleeper, cpus=2)
    s.bundles.stage(1, cpus=2)
    assert await s.cycle() == ("staged_work", 1)

    async def running() -> bool:
        return states(list(await s.backend.list_jobs())) == [JobState.ACTIVE]

    await eventually(running, "the first worker runs", within=20, interval=POLL)
    assert await s.cycle() == ("staged_work", 1)  # active workers do not cover staged work
    reason, launched = await s.cycle()
    assert (reason, launched) == ("pending_covers_staged", 0)
    snapshot = s.ctx.state.snapshot.pools["p"].jobs.value
    assert snapshot is not None
    assert states(snapshot) == [JobState.ACTIVE, JobState.PENDING]


async def test_a_worker_that_exits_non_zero_is_a_failed_start_and_the_limit_ends_the_service(
    slurm: SlurmCluster, tmp_path: Path, scenario: ScenarioFactory
) -> None:
    s = await scenario(
        slurm, tmp_path, worker_executable(tmp_path, "exit 3"),
        exit_after_num_failed=2, max_launches_per_pass=2,
    )  # fmt: skip
    s.bundles.stage(2)
    with capture_logs() as logs:
        assert await s.cycle() == ("staged_work", 2)

        async def halted() -> bool:
            await poll_jobs(s.ctx, s.pool)
            return s.ctx.fatal.is_set()

        await eventually(halted, "two failed starts end the service", within=20, interval=POLL)
    assert s.sample("codalab_scaler_failed_starts_total", pool="p") == 2
    failed = [entry for entry in logs if entry["event"] == "worker.failed_start"]
    assert len(failed) == 2
    assert all(entry["reason"].startswith("FAILED (NonZeroExitCode)") for entry in failed)
    assert s.ctx.fatal.reason == "jobs:p: 2 workers failed to start (limit 2)"


async def test_controller_down_gives_a_stale_view_and_no_launch_then_recovers(
    slurm: SlurmCluster, tmp_path: Path, scenario: ScenarioFactory
) -> None:
    s = await scenario(slurm, tmp_path, worker_executable(tmp_path, "exec sleep 120"))
    s.bundles.stage(3)
    assert await s.cycle() == ("staged_work", 1)
    slurm.stop_controller()
    s.clock.advance(10)  # past the staleness limit (3 x sleep_time)
    with capture_logs() as logs:
        assert await s.cycle() == ("stale_view", 0)
        assert await s.cycle() == ("stale_view", 0)
    assert s.sample("codalab_scaler_observation_ok", pool="p", source="jobs") == 0
    failures = [e for e in logs if e["event"] == "poll.failed" and e["source"] == "jobs"]
    assert failures
    assert failures[0]["kind"] == "transient"
    assert [e["log_level"] for e in failures].count("warning") == 1  # once per outage
    errors = s.sample("codalab_scaler_poll_errors_total", pool="p", source="jobs", kind="transient")
    assert errors == 2  # yet every failed poll is counted
    assert s.sample("codalab_scaler_launches_total", pool="p", outcome="launched") == 1
    assert not s.ctx.fatal.is_set()

    slurm.start_controller()

    async def recovered() -> bool:
        return await poll_jobs(s.ctx, s.pool)

    await eventually(recovered, "squeue answers again", within=20, interval=POLL)
    assert s.sample("codalab_scaler_observation_ok", pool="p", source="jobs") == 1
    assert await s.cycle() == ("staged_work", 1)
    assert len(await s.backend.list_jobs()) == 2  # the job from before the outage is still known


async def test_dry_run_writes_the_script_and_submits_nothing(
    slurm: SlurmCluster, tmp_path: Path, scenario: ScenarioFactory
) -> None:
    s = await scenario(slurm, tmp_path, worker_executable(tmp_path, "exec sleep 120"), dry_run=True)
    s.bundles.stage(1)
    with capture_logs() as logs:
        assert await s.cycle() == ("staged_work", 0)  # a dry run launches nothing
    would = next(e for e in logs if e["event"] == "scaler.dry_run_launch")["would"]
    script_text = read(Path(would["script"]))
    assert f"#SBATCH --job-name={would['job_name']}" in script_text
    assert would["sbatch"][-1] == would["script"]
    assert not any(name.startswith(f"root-{s.job_name}") for _, name in slurm.jobs().values())
    assert not exists(Path(would["password_file"]))
    assert PASSWORD not in repr(logs) + script_text


async def test_cancel_scancels_a_held_job_and_its_end_is_no_failed_start(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    backend = Plan(slurm, tmp_path, worker_executable(tmp_path, "exec sleep 120")).backend
    with slurm.partition_down():
        cancelled = await backend.launch("w1")
        kept = await backend.launch("w2")
        assert states(list(await backend.list_jobs())) == [JobState.PENDING] * 2
        await backend.cancel(cancelled)
        await backend.cancel(cancelled)  # idempotent: already CANCELLED
        await backend.cancel("999999")  # unknown to Slurm: gone already, fine
        with pytest.raises(RefusedError, match="not a number"):
            await backend.cancel("1 --user=root")  # never reaches scancel's argv
        assert slurm.jobs()[cancelled][0] == "CANCELLED"
        # The cancelled job ends (CANCELLED, not a failed start); the other one still waits.
        assert await backend.list_jobs() == [WorkerJob(kept, JobState.PENDING, "w2")]
        assert slurm.jobs()[kept][0] == "PENDING"


async def test_cancel_with_the_controller_down_is_transient(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    backend = Plan(slurm, tmp_path, worker_executable(tmp_path, "exec sleep 120")).backend
    slurm.stop_controller()
    with pytest.raises(TransientError, match="scancel"):
        await backend.cancel("1")


# -- end to end: the executable, the CodaLab simulator and Slurm ----------------------


@pytest.mark.process
async def test_executable_scales_slurm_workers_for_staged_bundles(
    slurm: SlurmCluster, tmp_path: Path, sim_factory: SimFactory, launcher: Launcher
) -> None:
    sim = await sim_factory(users={"codalab": PASSWORD})
    for _ in range(3):
        sim.add_bundle(duration=600)
    job_name = f"e2e{uuid.uuid4().hex[:6]}"
    scaler = await launcher(
        "--server", sim.url, "--sleep-time", "0.5",
        "--min-workers", "0", "--max-workers", "2", "--min-seconds-between-workers", "0",
        "--no-prefilter", "--worker-executable", str(BIN / "codalab-sim-worker"),
        "--http-host", "127.0.0.1", "--http-port", "0", "--log-format", "json",
        "slurm-batch", "--partition", slurm.partition, "--gpus", "0", "--memory-mb", "100",
        "--job-name", job_name, "--slurm-work-dir", str(tmp_path / "slurm"),
        base=slurm.env, env=creds(PASSWORD),
    )  # fmt: skip
    port = (await scaler.event("http.listening", within=30))["port"]
    await scaler.event("scaler.decided", within=30, reason="at_max", active=2)

    async def workers_registered() -> bool:
        return len(sim.workers) == 2

    await eventually(
        workers_registered, "both Slurm workers checked in with CodaLab", within=30, interval=POLL
    )
    _, metrics = await scrape(port)
    assert 'codalab_scaler_worker_jobs{pool="default",state="active"} 2.0' in metrics
    assert 'codalab_scaler_launches_total{outcome="launched",pool="default"} 2.0' in metrics
    jobs = [name for _, name in slurm.jobs().values() if name.startswith(f"root-{job_name}-")]
    assert len(jobs) == 2
    scaler.proc.send_signal(signal.SIGTERM)
    assert await scaler.exit_code(within=15) == 0
    assert PASSWORD not in "\n".join(scaler.raw) + metrics


@pytest.mark.process
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
async def test_jobs_survive_a_stop_mid_burst_and_are_never_submitted_twice(
    slurm: SlurmCluster,
    tmp_path: Path,
    sim_factory: SimFactory,
    launcher: Launcher,
    how: signal.Signals,
) -> None:
    sim = await sim_factory(users={"codalab": PASSWORD})
    for _ in range(3):
        sim.add_bundle(duration=600)
    job_name = f"rs{uuid.uuid4().hex[:6]}"
    args = [
        "--server", sim.url, "--sleep-time", "0.3",
        "--min-workers", "0", "--max-workers", "2", "--min-seconds-between-workers", "0",
        "--no-prefilter", "--worker-executable", str(worker_executable(tmp_path, "exec sleep 120")),
        "--http-host", "127.0.0.1", "--http-port", "0", "--log-format", "json",
        "slurm-batch", "--partition", slurm.partition, "--gpus", "0", "--memory-mb", "100",
        "--job-name", job_name, "--slurm-work-dir", str(tmp_path / "slurm"),
    ]  # fmt: skip

    def ours() -> list[str]:
        return [name for _, name in slurm.jobs().values() if f"-{job_name}-" in f"-{name}"]

    first = await launcher(*args, base=slurm.env, env=creds(PASSWORD))
    await first.event("scaler.launched", within=30)
    first.proc.send_signal(how)
    assert await first.exit_code(within=20) == (-signal.SIGKILL if how is signal.SIGKILL else 0)
    submitted_by_first = len(ours())  # an sbatch cut short either made its job or not
    assert 1 <= submitted_by_first <= 2

    second = await launcher(*args, base=slurm.env, env=creds(PASSWORD))
    await second.event("scaler.decided", within=30, reason="at_max")
    second.proc.send_signal(signal.SIGTERM)
    assert await second.exit_code(within=20) == 0
    jobs = ours()
    assert len(jobs) == 2  # never above max, across both instances
    assert len(set(jobs)) == 2  # job names carry the worker id: none submitted twice
    relaunched = [e for e in second.lines if e.get("event") == "scaler.launched"]
    assert len(relaunched) == 2 - submitted_by_first
