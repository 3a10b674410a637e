"""The aws-batch backend against moto's AWS Batch server over real HTTP (aiobotocore)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import LaunchRefused, RefusedError
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.core.worker_command import WorkerOptions
from codalab_scaler.service.loops import run_once
from codalab_scaler.service.wiring import Overrides
from codalab_scaler.sources.backends.aws_batch.backend import CANCEL_REASON, AwsBatchBackend
from codalab_scaler.sources.backends.aws_batch.settings import AwsBatchBackendSettings
from codalab_scaler.sources.backends.base import WorkerCredentials
from tests.defaults import worker_options
from tests.fakes import FakeBundles
from tests.harness import opened
from tests.moto_server import QUEUE, ROLE_ARN, SECRET_ARN, MotoBatch, aws_env, moto, moto_server
from tests.waiting import eventually

__all__ = ["aws_env", "moto", "moto_server"]  # fixtures

PASSWORD = "pw-NEVER-SHOWN-42"
CREDENTIALS = WorkerCredentials("codalab", PASSWORD)

Make = Callable[..., AwsBatchBackend]


def wid(n: int, letter: str = "a") -> str:
    return f"{letter}{n:031d}"


@pytest_asyncio.fixture
async def make(moto: MotoBatch) -> AsyncIterator[Make]:
    made: list[AwsBatchBackend] = []

    def build(pool: str = "default", options: WorkerOptions | None = None, **kw: Any) -> Any:
        kw.setdefault("password_secret_arn", SECRET_ARN)
        kw.setdefault("execution_role_arn", ROLE_ARN)
        kw.setdefault("job_queue", QUEUE)
        settings = AwsBatchBackendSettings(endpoint_url=moto.url, **kw)
        backend = AwsBatchBackend(pool, options or worker_options(), settings, CREDENTIALS)
        made.append(backend)
        return backend

    try:
        yield build
    finally:
        for backend in made:
            await backend.aclose()


def by_state(jobs: Any) -> dict[JobState, set[str]]:
    found: dict[JobState, set[str]] = {state: set() for state in JobState}
    for job in jobs:
        found[job.state].add(job.worker_id)
    return found


async def test_launched_jobs_are_listed_pending_with_their_ids(make: Make, moto: MotoBatch) -> None:
    backend = make()
    job_ids = {await backend.launch(wid(i)): wid(i) for i in range(2)}
    jobs = await backend.list_jobs()
    assert {job.job_id: job.worker_id for job in jobs} == job_ids
    assert {job.state for job in jobs} == {JobState.PENDING}
    names = await asyncio.to_thread(moto.statuses)
    assert names == {f"codalab-scaler-default-{w}": "SUBMITTED" for w in job_ids.values()}
    described = await asyncio.to_thread(moto.batch.describe_jobs, jobs=list(job_ids))
    job = described["jobs"][0]
    assert job["tags"] == {
        "codalab-scaler:pool": "default",
        "codalab-scaler:worker-id": job_ids[job["jobId"]],
        "codalab-scaler:scaler": "codalab-scaler",
    }
    assert job["container"]["command"][:2] == ["/bin/bash", "-c"]
    assert f"cl_worker_{job_ids[job['jobId']]}_work_dir" in job["container"]["command"][2]


async def test_definition_is_registered_once_and_reused_by_a_new_instance(
    make: Make, moto: MotoBatch
) -> None:
    with capture_logs() as logs:
        first = make()
        for i in range(3):
            await first.launch(wid(i))
        second = make()  # a restarted scaler
        await second.launch(wid(9))
    revisions = moto.batch.describe_job_definitions(jobDefinitionName="codalab-worker")
    assert [d["revision"] for d in revisions["jobDefinitions"]] == [1]
    events = [entry["event"] for entry in logs if entry["event"].startswith("aws_batch.def")]
    assert events == ["aws_batch.definition_registered", "aws_batch.definition_reused"]


async def test_a_changed_property_registers_a_new_revision(make: Make, moto: MotoBatch) -> None:
    await make(image="codalab/worker:1.0").launch(wid(1))
    job_id = await make(image="codalab/worker:2.0").launch(wid(2))
    await make(image="codalab/worker:1.0").launch(wid(3))  # the older revision is still a match
    revisions = moto.batch.describe_job_definitions(jobDefinitionName="codalab-worker")
    images = {d["revision"]: d["containerProperties"]["image"] for d in revisions["jobDefinitions"]}
    assert images == {1: "codalab/worker:1.0", 2: "codalab/worker:2.0"}
    job = moto.batch.describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["jobDefinition"].endswith("job-definition/codalab-worker:2")


async def test_gpus_are_resource_requirements(make: Make, moto: MotoBatch) -> None:
    await make(gpus=2, cpus=4, memory_mb=8192).launch(wid(1))
    definition = moto.batch.describe_job_definitions(jobDefinitionName="codalab-worker")
    resources = definition["jobDefinitions"][0]["containerProperties"]["resourceRequirements"]
    assert {(r["type"], r["value"]) for r in resources} == {
        ("VCPU", "4"),
        ("MEMORY", "8192"),
        ("GPU", "2"),
    }


async def test_a_new_instance_counts_the_jobs_already_queued(make: Make) -> None:
    first = make()
    for i in range(3):
        await first.launch(wid(i))
    await first.aclose()
    jobs = await make().list_jobs()  # nothing in memory: rebuilt from the queue's job names
    assert by_state(jobs)[JobState.PENDING] == {wid(i) for i in range(3)}


async def test_only_this_pools_jobs_count(make: Make, moto: MotoBatch) -> None:
    await make().launch(wid(1))
    await make("default-b").launch(wid(2))  # a pool whose name extends this one's
    await make("gpu").launch(wid(3))
    await make(job_name_prefix="other-scaler").launch(wid(4))
    moto.submit_foreign("codalab-worker")  # what cl-worker-manager submits
    moto.submit_foreign(f"codalab-scaler-default-{wid(5)}-x")
    assert by_state(await make().list_jobs())[JobState.PENDING] == {wid(1)}
    assert by_state(await make("default-b").list_jobs())[JobState.PENDING] == {wid(2)}


async def test_job_filter_narrows_the_count(make: Make) -> None:
    backend = make(job_filter=r"codalab-scaler-default-a\d+")
    await backend.launch(wid(1, "a"))
    await backend.launch(wid(2, "b"))
    assert by_state(await backend.list_jobs())[JobState.PENDING] == {wid(1, "a")}


async def test_jobs_are_pending_then_active_then_gone(make: Make, moto: MotoBatch) -> None:
    # moto's job thread looks at the state every 0.5 s: with 0.4 s stages a job shows
    # RUNNING for 0.4 s before the thread finds no Docker engine and fails it (measured).
    moto.server.job_lifecycle(0.4)
    backend = make()
    await backend.launch(wid(1))
    seen: list[JobState] = []
    async with asyncio.timeout(15):
        while True:
            jobs = await backend.list_jobs()
            if jobs and (not seen or seen[-1] is not jobs[0].state):
                seen.append(jobs[0].state)
            if not jobs and JobState.ACTIVE in seen:
                break
            await asyncio.sleep(0.05)
    # SUBMITTED..STARTING, RUNNING, then FAILED (moto has no Docker engine here): the job
    # ran and failed, which is reported once, like any job that ends FAILED.
    assert seen == [JobState.PENDING, JobState.ACTIVE, JobState.FAILED]


async def test_a_job_that_ends_failed_unseen_running_is_reported_once(
    make: Make, moto: MotoBatch
) -> None:
    moto.server.job_lifecycle(0.2)
    backend = make()
    job_id = await backend.launch(wid(1))
    assert [job.state for job in await backend.list_jobs()] == [JobState.PENDING]

    async def failed() -> bool:
        statuses = await asyncio.to_thread(moto.statuses)
        return statuses.get(f"codalab-scaler-default-{wid(1)}") == "FAILED"

    await eventually(failed, "moto ends the job FAILED", within=15, interval=0.1)
    assert await backend.list_jobs() == [WorkerJob(job_id, JobState.FAILED, wid(1), "FAILED")]
    assert await backend.list_jobs() == []


async def test_a_missing_queue_is_refused(make: Make) -> None:
    backend = make(job_queue="no-such-queue")
    with pytest.raises(LaunchRefused, match=r"submit_job: ClientException .*no-such-queue"):
        await backend.launch(wid(1))
    with pytest.raises(RefusedError, match="list_jobs: ClientException"):
        await backend.list_jobs()


async def test_an_invalid_definition_is_refused(make: Make) -> None:
    with pytest.raises(LaunchRefused, match="register_job_definition: ClientException"):
        await make(memory_mb=2).launch(wid(1))


@pytest.mark.parametrize("plaintext", [False, True])
async def test_the_password_is_in_no_definition_log_or_plan(
    make: Make, moto: MotoBatch, plaintext: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    kw: dict[str, Any] = (
        {"password_secret_arn": None, "allow_plaintext_password": True} if plaintext else {}
    )
    with capture_logs() as logs:
        backend = make(**kw)
        job_id = await backend.launch(wid(1))
        await backend.list_jobs()
        plan = await backend.describe_launch(wid(2))
    definitions = moto.batch.describe_job_definitions(jobDefinitionName="codalab-worker")
    job = moto.batch.describe_jobs(jobs=[job_id])["jobs"][0]
    for text in (json.dumps(definitions, default=str), repr(logs), caplog.text, json.dumps(plan)):
        assert PASSWORD not in text
    environment = {e["name"]: e["value"] for e in job["container"]["environment"]}
    container = definitions["jobDefinitions"][0]["containerProperties"]
    assert environment["CODALAB_USERNAME"] == "codalab"
    if plaintext:
        assert environment["CODALAB_PASSWORD"] == PASSWORD  # in the job's overrides only
        assert not container.get("secrets")
        assert any(entry["event"] == "aws_batch.plaintext_password" for entry in logs)
    else:
        assert "CODALAB_PASSWORD" not in environment
        assert container["secrets"] == [{"name": "CODALAB_PASSWORD", "valueFrom": SECRET_ARN}]
        assert container["executionRoleArn"] == ROLE_ARN


async def test_a_refusing_pool_is_counted_and_its_bundles_fall_through(moto: MotoBatch) -> None:
    def pool(**backend: Any) -> dict[str, Any]:
        limits = {"min_workers": 0, "max_workers": 2, "max_launches_per_pass": 2}
        for key in ("no_prefilter", "priority"):  # pool settings
            if key in backend:
                limits[key] = backend.pop(key)
        backend = {"kind": "aws-batch", "endpoint_url": moto.url, "job_queue": QUEUE, **backend}
        backend.setdefault("password_secret_arn", SECRET_ARN)
        return {**limits, "backend": backend}

    settings = Settings.model_validate(
        {
            "username": "codalab",
            "password": PASSWORD,
            "pools": {
                "good": pool(),
                # First choice for the bundles, refused: it backs off and they fall through.
                "baddef": pool(
                    memory_mb=2, job_definition_name="too-small", no_prefilter=True, priority=1
                ),
                "badqueue": pool(job_queue="no-such-queue"),
            },
        }
    )
    bundles = FakeBundles()
    bundles.stage(2)
    registry = CollectorRegistry()
    overrides = Overrides(bundles=bundles)  # every backend is the real one, on moto
    async with opened(settings, registry=registry, overrides=overrides) as ctx:
        first = await run_once(ctx)
        result = await run_once(ctx)
    assert not first.ok

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert not result.ok
    assert sample("codalab_scaler_launches_total", pool="good", outcome="launched") == 2
    assert sample("codalab_scaler_launches_total", pool="baddef", outcome="refused") == 1
    assert sample(
        "codalab_scaler_poll_errors_total", pool="badqueue", source="jobs", kind="refused"
    )
    assert sample("codalab_scaler_launches_total", pool="badqueue", outcome="launched") == 0
    assert not ctx.fatal.is_set()
    assert {name.split("-")[2] for name in moto.statuses()} == {"good"}


async def test_cancel_terminates_a_held_job_and_its_end_is_no_failed_start(
    make: Make, moto: MotoBatch
) -> None:
    backend = make()
    cancelled = await backend.launch(wid(1))
    kept = await backend.launch(wid(2))
    restarted = make()  # lists the job pending, then finds it ended: knows it by its reason
    assert {job.job_id for job in await restarted.list_jobs()} == {cancelled, kept}
    await backend.cancel(cancelled)
    await backend.cancel(cancelled)  # idempotent
    await backend.cancel("00000000-0000-0000-0000-000000000000")  # unknown: gone already, fine
    job = moto.batch.describe_jobs(jobs=[cancelled])["jobs"][0]
    assert job["statusReason"] == CANCEL_REASON

    # moto keeps a terminated job in its held state until its lifecycle moves on (real Batch
    # fails a RUNNABLE job at once); a short lifecycle ends both jobs FAILED (no Docker here).
    moto.server.job_lifecycle(0.2)

    async def both_failed() -> bool:
        statuses = await asyncio.to_thread(moto.statuses)
        return [statuses.get(f"codalab-scaler-default-{wid(i)}") for i in (1, 2)] == ["FAILED"] * 2

    await eventually(both_failed, "moto ends both jobs FAILED", within=15, interval=0.1)
    # Only the job nobody cancelled is a failed start; the terminated one is simply gone.
    expected = [WorkerJob(kept, JobState.FAILED, wid(2), "FAILED")]
    assert await backend.list_jobs() == expected
    assert await restarted.list_jobs() == expected
    assert await backend.list_jobs() == []
