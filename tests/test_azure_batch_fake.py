"""The azure-batch backend through the real SDK against the fake Batch service over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import LaunchRefused, RefusedError, TransientError
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.core.worker_command import WorkerOptions
from codalab_scaler.service.loops import run_once
from codalab_scaler.service.wiring import Overrides
from codalab_scaler.sources.backends.azure_batch.backend import AzureBatchBackend
from codalab_scaler.sources.backends.azure_batch.settings import AzureBatchBackendSettings
from codalab_scaler.sources.backends.base import WorkerCredentials
from tests.azure_batch_fake import ACCOUNT, JOB, KEY, Failure, FakeBatch, running
from tests.defaults import worker_options
from tests.fakes import FakeBundles
from tests.harness import opened

PASSWORD = "pw-NEVER-SHOWN-42"
CREDENTIALS = WorkerCredentials("codalab", PASSWORD)
NODE_PASSWORD_FILE = "/mnt/codalab/worker-password"
LOGS = "https://logs.blob.core.windows.net/worker-logs"

Make = Callable[..., AzureBatchBackend]


def wid(n: int, letter: str = "a") -> str:
    return f"{letter}{n:031d}"


def backend_settings(fake: FakeBatch, **kw: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "account_name": ACCOUNT,
        "account_key": KEY,
        "service_url": fake.url,
        "log_container_url": LOGS,
        "job_id": JOB,
        "worker_password_file": NODE_PASSWORD_FILE,
    }
    values.update(kw)
    return {k: v for k, v in values.items() if v is not None}


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeBatch]:
    async with running() as served:
        yield served


@pytest_asyncio.fixture
async def make(fake: FakeBatch) -> AsyncIterator[Make]:
    made: list[AzureBatchBackend] = []

    def build(pool: str = "default", options: WorkerOptions | None = None, **kw: Any) -> Any:
        settings = AzureBatchBackendSettings(**backend_settings(fake, **kw))
        backend = AzureBatchBackend(pool, options or worker_options(), settings, CREDENTIALS)
        made.append(backend)
        return backend

    try:
        yield build
    finally:
        for backend in made:
            await backend.aclose()


def states(jobs: Any) -> dict[str, JobState]:
    return {job.worker_id: job.state for job in jobs}


async def test_launched_tasks_are_listed_pending_with_their_ids(
    make: Make, fake: FakeBatch
) -> None:
    backend = make()
    ids = [await backend.launch(wid(i)) for i in range(2)]
    assert ids == [f"codalab-scaler-default-{wid(i)}" for i in range(2)]
    jobs = await backend.list_jobs()
    assert sorted(jobs, key=lambda j: j.job_id) == [
        WorkerJob(ids[i], JobState.PENDING, wid(i)) for i in range(2)
    ]
    task = fake.tasks()[ids[0]]
    assert task["containerSettings"]["imageName"] == "codalab/worker:latest"
    options = task["containerSettings"]["containerRunOptions"]
    work_dir = f"/tmp/cl_worker_{wid(0)}_work_dir"
    assert options == (
        "--cpus 1 --memory 2048M --volume /var/run/docker.sock:/var/run/docker.sock "
        f"--volume {work_dir}:{work_dir} --user root "
        f"--volume {NODE_PASSWORD_FILE}:{NODE_PASSWORD_FILE}:ro"
    )
    assert task["commandLine"].startswith("/bin/bash -c 'exec cl-worker --server ")
    assert f"--password-file {NODE_PASSWORD_FILE}'" in task["commandLine"]
    assert task["outputFiles"] == [
        {
            "filePattern": "../stderr.txt",
            "destination": {"container": {"containerUrl": LOGS, "path": ids[0]}},
            "uploadOptions": {"uploadCondition": "taskcompletion"},
        }
    ]
    assert "environmentSettings" not in task


async def test_the_listing_asks_for_the_stem_and_few_properties_and_follows_every_page(
    make: Make, fake: FakeBatch
) -> None:
    fake.page_size = 2
    backend = make()
    for i in range(5):
        await backend.launch(wid(i))
    other = make(pool="other")
    await other.launch(wid(9))
    fake.requests.clear()
    jobs = await backend.list_jobs()
    assert {job.worker_id for job in jobs} == {wid(i) for i in range(5)}
    lists = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/tasks")]
    assert len(lists) == 3  # 2 + 2 + 1, linked by odata.nextLink
    first = lists[0].query
    assert first["$filter"] == (
        "startswith(id,'codalab-scaler-default-') and "
        "(state eq 'active' or state eq 'preparing' or state eq 'running')"
    )
    assert first["$select"] == "id,state,executionInfo"
    assert [r.query.get("$skiptoken") for r in lists] == [None, "2", "4"]
    assert all(r.query["api-version"] == "2025-06-01" for r in fake.requests)
    assert all(r.headers["client-request-id"] for r in fake.requests)
    assert all(r.headers["ocp-date"] for r in fake.requests)


async def test_tasks_are_pending_then_active_then_gone_or_failed(
    make: Make, fake: FakeBatch
) -> None:
    backend = make()
    ok, crashed, unstarted = [await backend.launch(wid(i)) for i in range(3)]
    fake.set_state(ok, "preparing")
    assert set(states(await backend.list_jobs()).values()) == {JobState.PENDING}
    fake.set_state(ok, "running")
    fake.set_state(crashed, "running")
    assert states(await backend.list_jobs()) == {
        wid(0): JobState.ACTIVE,
        wid(1): JobState.ACTIVE,
        wid(2): JobState.PENDING,
    }
    fake.complete(ok, exit_code=0)  # idle exit: the worker's normal end
    fake.complete(crashed, exit_code=3)
    failure = {"category": "usererror", "code": "ContainerPullError", "message": "no image"}
    fake.complete(unstarted, exit_code=None, failure=failure)
    jobs = await backend.list_jobs()
    assert {(j.worker_id, j.state, j.reason) for j in jobs} == {
        (wid(1), JobState.FAILED, "exit code 3"),
        (wid(2), JobState.FAILED, "ContainerPullError: no image"),
    }
    assert await backend.list_jobs() == []  # each failed start is reported once


async def test_a_task_that_fails_before_any_listing_is_a_failed_start(
    make: Make, fake: FakeBatch
) -> None:
    backend = make()
    task_id = await backend.launch(wid(0))
    fake.complete(task_id, exit_code=1)
    assert await backend.list_jobs() == [WorkerJob(task_id, JobState.FAILED, wid(0), "exit code 1")]


async def test_a_new_instance_counts_the_tasks_already_there_and_a_duplicate_is_the_same_worker(
    make: Make, fake: FakeBatch
) -> None:
    first = make()
    task_id = await first.launch(wid(0))
    again = make()
    with capture_logs() as logs:
        assert await again.launch(wid(0)) == task_id  # 409 TaskExists: the same worker
    assert [e["already_existed"] for e in logs if e["event"] == "azure_batch.task_added"] == [True]
    assert len(fake.tasks()) == 1
    assert [j.worker_id for j in await again.list_jobs()] == [wid(0)]


async def test_a_wrong_key_is_refused_by_the_signature_check(make: Make, fake: FakeBatch) -> None:
    backend = make(account_key="d3Jvbmcta2V5")  # base64 of "wrong-key"
    with pytest.raises(RefusedError, match=r"AuthenticationFailed \(HTTP 403\)"):
        await backend.list_jobs()
    with pytest.raises(LaunchRefused, match="AuthenticationFailed"):
        await backend.launch(wid(0))
    assert fake.tasks() == {}


async def test_a_missing_job_is_refused_naming_it(make: Make) -> None:
    backend = make(job_id="no-such-job")
    with pytest.raises(RefusedError, match="job_id 'no-such-job'"):
        await backend.list_jobs()
    with pytest.raises(LaunchRefused, match="JobNotFound"):
        await backend.launch(wid(0))


@pytest.mark.parametrize(
    ("failure", "kind", "retry_after"),
    [
        (Failure(429, "TooManyRequests", retry_after="7"), TransientError, 7.0),
        (Failure(503, "ServerBusy"), TransientError, None),
        (Failure(500, "InternalError"), TransientError, None),
        (Failure(400, "InvalidPropertyValue"), LaunchRefused, None),
        (Failure(403, "InsufficientPermissions"), LaunchRefused, None),
        (Failure(409, "JobCompleted"), LaunchRefused, None),
    ],
)
async def test_create_errors_are_transient_or_refused(
    make: Make, fake: FakeBatch, failure: Failure, kind: type[Exception], retry_after: float | None
) -> None:
    backend = make()
    fake.fail_next("create", failure)
    with pytest.raises(kind, match=failure.code) as caught:
        await backend.launch(wid(0))
    if isinstance(caught.value, TransientError):
        assert caught.value.retry_after == retry_after
    assert await backend.launch(wid(0))  # the next call goes through


async def test_the_sdk_does_not_retry_on_its_own(make: Make, fake: FakeBatch) -> None:
    backend = make()
    await backend.list_jobs()
    fake.fail_next("list", Failure(503, "ServerBusy"), times=3)
    fake.requests.clear()
    with pytest.raises(TransientError, match="ServerBusy"):
        await backend.list_jobs()
    assert len(fake.requests) == 1


async def test_an_unreachable_service_is_transient(make: Make, unused_tcp_port: int) -> None:
    backend = make(service_url=f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(TransientError, match="ServiceRequestError"):
        await backend.list_jobs()


async def test_cancel_terminates_the_task(make: Make, fake: FakeBatch) -> None:
    backend = make()
    task_id = await backend.launch(wid(0))
    await backend.cancel(task_id)
    assert fake.tasks()[task_id]["state"] == "completed"
    await backend.cancel(task_id)  # already completed: done
    assert await backend.list_jobs() == []


@pytest.mark.parametrize("plaintext", [False, True])
async def test_the_password_is_in_no_stored_task_log_or_plan(
    make: Make, fake: FakeBatch, plaintext: bool
) -> None:
    sas = "?sv=2024&sp=cw&sig=SECRET-SAS"
    kw: dict[str, Any] = {"log_container_url": LOGS + sas}
    if plaintext:
        kw.update(worker_password_file=None, allow_plaintext_password=True)
    with capture_logs() as logs:
        backend = make(**kw)
        await backend.launch(wid(0))
        plan = await backend.describe_launch(wid(1))
        await backend.list_jobs()
    shown = json.dumps(logs) + json.dumps(plan)
    assert PASSWORD not in shown
    assert "SECRET-SAS" not in shown
    assert KEY not in shown
    assert any(e["event"] == "azure_batch.sas_in_tasks" for e in logs)
    (task,) = fake.tasks().values()
    environment = task.get("environmentSettings", [])
    if plaintext:
        assert {"name": "CODALAB_PASSWORD", "value": PASSWORD} in environment
        assert any(e["event"] == "azure_batch.plaintext_password" for e in logs)
        assert plan["task"]["environmentSettings"][1]["value"] == "[redacted]"
    else:
        assert PASSWORD not in json.dumps(fake.tasks())
        assert environment == []
    assert PASSWORD not in task["commandLine"] + task["containerSettings"]["containerRunOptions"]
    assert all(PASSWORD not in r.headers.get("authorization", "") for r in fake.requests)


async def test_a_failed_list_launches_nothing(fake: FakeBatch) -> None:
    settings = Settings.model_validate(
        {
            "username": "codalab",
            "password": PASSWORD,
            "pools": {
                "default": {
                    "min_workers": 1,
                    "max_workers": 2,
                    "backend": {"kind": "azure-batch", **backend_settings(fake)},
                }
            },
        }
    )
    fake.fail_next("list", Failure(500, "InternalError"), times=50)
    bundles = FakeBundles()
    bundles.stage(2)
    registry = CollectorRegistry()
    async with opened(settings, registry=registry, overrides=Overrides(bundles=bundles)) as ctx:
        result = await run_once(ctx)
    assert not result.ok
    assert fake.tasks() == {}
    launched = registry.get_sample_value(
        "codalab_scaler_launches_total", {"pool": "default", "outcome": "launched"}
    )
    assert launched == 0


async def test_a_hanging_service_is_a_read_timeout_and_transient(
    make: Make, fake: FakeBatch
) -> None:
    backend = make(read_timeout_seconds=0.3)
    await backend.list_jobs()
    fake.fail_next("list", Failure(500, "unused", hang=True))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TransientError, match="Timeout"):
        await backend.list_jobs()
    assert loop.time() - started < 5
