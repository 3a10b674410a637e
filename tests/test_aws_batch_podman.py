"""The aws-batch backend against moto's Batch server running each job as a real container.

moto talks to rootful podman's Docker API (``tests/podman_engine.py``), so a
job passes SUBMITTED..STARTING (0.3 s each here), is RUNNING for as long as
its container runs, then SUCCEEDED or FAILED by the container's exit code.
The container runs the command the backend submitted (``/bin/bash -c`` with
the spot-watcher prefix and ``exec <worker_executable> <cl-worker flags>``)
in the busybox test image, whose fake ``cl-worker`` idles ``--idle-seconds``
and exits.  Skips when podman is not installed or not root.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import botocore.session
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.service.loops import run_once
from codalab_scaler.service.observe import poll_jobs
from codalab_scaler.service.wiring import Overrides
from codalab_scaler.sources.backends.aws_batch.backend import AwsBatchBackend
from codalab_scaler.sources.backends.aws_batch.settings import AwsBatchBackendSettings
from codalab_scaler.sources.backends.base import WorkerCredentials
from tests.defaults import worker_options
from tests.fakes import FakeBundles
from tests.harness import opened
from tests.moto_server import (
    QUEUE,
    REGION,
    ROLE_ARN,
    SECRET_ARN,
    MotoBatch,
    MotoServer,
    aws_env,
    prepare,
    running_moto_server,
)
from tests.podman_engine import CRASHING_WORKER, IMAGE, WORKER, PodmanEngine, podman_engine
from tests.waiting import eventually

__all__ = ["aws_env", "podman_engine"]  # fixtures

CREDENTIALS = WorkerCredentials("codalab", "pw-not-used-here")
STAGE_SECONDS = 0.3  # each of SUBMITTED, PENDING, RUNNABLE, STARTING
POLL = 0.1
DEADLINE = 20.0  # any one job: about 1.2 s pending + its idle seconds + moto's 0.5 s ticks

Make = Callable[..., AwsBatchBackend]


def wid(n: int) -> str:
    return f"a{n:031d}"


@pytest.fixture(scope="session")
def podman_moto_server(
    podman_engine: PodmanEngine, unused_tcp_port_factory: Callable[[], int]
) -> Iterator[MotoServer]:
    env = {"DOCKER_HOST": podman_engine.docker_host, "MOTO_DOCKER_NETWORK_MODE": "host"}
    with running_moto_server(unused_tcp_port_factory(), env=env) as server:
        yield server


@pytest.fixture
def moto(
    podman_moto_server: MotoServer, podman_engine: PodmanEngine, aws_env: None
) -> Iterator[MotoBatch]:
    """A clean moto whose jobs run in podman; every container removed after the test."""
    podman_moto_server.job_lifecycle(STAGE_SECONDS)  # use_docker, time-based stages
    try:
        yield prepare(podman_moto_server)
    finally:
        podman_engine.remote("rm", "--all", "--force", "--time", "0")


@pytest_asyncio.fixture
async def make(moto: MotoBatch) -> AsyncIterator[Make]:
    made: list[AwsBatchBackend] = []

    def build(executable: str = WORKER, idle_seconds: int = 4) -> AwsBatchBackend:
        settings = AwsBatchBackendSettings(
            endpoint_url=moto.url,
            job_queue=QUEUE,
            image=IMAGE,
            password_secret_arn=SECRET_ARN,
            execution_role_arn=ROLE_ARN,
        )
        options = worker_options(executable=executable, idle_seconds=idle_seconds)
        backend = AwsBatchBackend("default", options, settings, CREDENTIALS)
        made.append(backend)
        return backend

    try:
        yield build
    finally:
        for backend in made:
            await backend.aclose()


async def timeline(backend: AwsBatchBackend) -> tuple[list[JobState], list[WorkerJob], float]:
    """Poll until the backend's one job has come and gone: states seen, failed starts, active s."""
    seen: list[JobState] = []
    failed: list[WorkerJob] = []
    active_since: float | None = None
    active = 0.0
    async with asyncio.timeout(DEADLINE):
        while True:
            jobs = await backend.list_jobs()
            failed += [job for job in jobs if job.state is JobState.FAILED]
            listed = [job for job in jobs if job.state is not JobState.FAILED]
            now = time.monotonic()
            if listed and (not seen or seen[-1] is not listed[0].state):
                seen.append(listed[0].state)
                if listed[0].state is JobState.ACTIVE:
                    active_since = now
            if not listed and active_since is not None:
                active = now - active_since
                active_since = None
            if not jobs and seen:
                return seen, failed, active
            await asyncio.sleep(POLL)


def ended(moto: MotoBatch, job_id: str) -> dict[str, Any]:
    """The job's summary in its final state (``container.exitCode`` is only in summaries)."""
    for status in ("SUCCEEDED", "FAILED"):
        for job in moto.batch.list_jobs(jobQueue=QUEUE, jobStatus=status)["jobSummaryList"]:
            if job["jobId"] == job_id:
                return dict(job)
    raise AssertionError(f"job {job_id} has not ended")


def container_log(moto: MotoBatch, job_id: str) -> list[str]:
    stream = moto.batch.describe_jobs(jobs=[job_id])["jobs"][0]["container"]["logStreamName"]
    session = botocore.session.get_session()
    logs: Any = session.create_client("logs", endpoint_url=moto.url, region_name=REGION)
    events = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream)["events"]
    return [str(event["message"]) for event in events]


async def test_a_running_job_is_active_while_its_container_runs(
    make: Make, moto: MotoBatch
) -> None:
    backend = make(idle_seconds=4)
    job_id = await backend.launch(wid(1))
    assert [job.state for job in await backend.list_jobs()] == [JobState.PENDING]

    async def started() -> bool:
        return (await backend.list_jobs())[0].state is not JobState.PENDING

    await eventually(started, "the job leaves PENDING", within=DEADLINE, interval=POLL)
    for _ in range(5):  # the container sleeps 4 s: ACTIVE on every poll for 2 s
        assert await backend.list_jobs() == [WorkerJob(job_id, JobState.ACTIVE, wid(1))]
        await asyncio.sleep(0.4)
    seen, failed, _ = await timeline(backend)
    assert seen == [JobState.ACTIVE]  # then gone: no failed start on the way out
    assert failed == []
    assert await backend.list_jobs() == []
    summary = await asyncio.to_thread(ended, moto, job_id)
    assert (summary["status"], summary["container"]["exitCode"]) == ("SUCCEEDED", 0)
    # The container ran the submitted command: bash -c '... exec <worker> <cl-worker flags>'.
    lines = await asyncio.to_thread(container_log, moto, job_id)
    assert lines == ["fake cl-worker: idle for 4 s, then exit 0"]


async def test_the_whole_life_of_a_job_pending_active_gone(make: Make, moto: MotoBatch) -> None:
    backend = make(idle_seconds=3)
    started = time.monotonic()
    job_id = await backend.launch(wid(2))
    seen, failed, active = await timeline(backend)
    assert seen == [JobState.PENDING, JobState.ACTIVE]
    assert failed == []
    assert active >= 2.5, f"ACTIVE for {active:.1f} s of a 3 s container"
    assert time.monotonic() - started < DEADLINE
    assert (await asyncio.to_thread(ended, moto, job_id))["status"] == "SUCCEEDED"


async def test_a_worker_that_ran_and_exited_non_zero_is_a_failed_start_once(
    make: Make, moto: MotoBatch
) -> None:
    """A job that ends FAILED is reported once, whether or not a poll saw it running."""
    backend = make(CRASHING_WORKER, idle_seconds=2)
    job_id = await backend.launch(wid(3))
    seen, failed, _ = await timeline(backend)
    assert seen == [JobState.PENDING, JobState.ACTIVE]
    summary = await asyncio.to_thread(ended, moto, job_id)
    assert (summary["status"], summary["container"]["exitCode"]) == ("FAILED", 3)
    assert [(job.job_id, job.worker_id) for job in failed] == [(job_id, wid(3))]
    assert await backend.list_jobs() == []  # and never again
    assert await backend.list_jobs() == []


async def test_the_service_counts_the_running_worker_active(moto: MotoBatch) -> None:
    backend = {
        "kind": "aws-batch",
        "endpoint_url": moto.url,
        "job_queue": QUEUE,
        "image": IMAGE,
        "password_secret_arn": SECRET_ARN,
        "execution_role_arn": ROLE_ARN,
    }
    pool = {
        "min_workers": 1,
        "max_workers": 1,
        "min_seconds_between_workers": 0,
        "worker_executable": WORKER,
        "worker_idle_seconds": 3,
        "backend": backend,
    }
    settings = Settings.model_validate(
        {"username": "codalab", "password": "pw-not-used-here", "pools": {"p": pool}}
    )
    registry = CollectorRegistry()
    overrides = Overrides(bundles=FakeBundles())  # the real backend, on moto and podman

    def jobs(state: str) -> float | None:
        labels = {"pool": "p", "state": state}
        return registry.get_sample_value("codalab_scaler_worker_jobs", labels)

    async with opened(settings, registry=registry, overrides=overrides) as ctx:
        assert (await run_once(ctx)).ok  # min_workers 1: one launch
        assert jobs("pending") == 1
        pool_runtime = ctx.pools["p"]
        active_polls = 0
        async with asyncio.timeout(DEADLINE):
            while active_polls == 0 or jobs("active") == 1:
                assert await poll_jobs(ctx, pool_runtime)
                if jobs("active") == 1:
                    assert jobs("pending") == 0
                    active_polls += 1
                await asyncio.sleep(0.2)
        assert active_polls >= 5  # a 3 s container, polled every 0.2 s
        assert (jobs("active"), jobs("pending")) == (0, 0)
        failed = registry.get_sample_value("codalab_scaler_failed_starts_total", {"pool": "p"})
        assert not failed
