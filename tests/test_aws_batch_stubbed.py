"""The aws-batch backend where moto cannot go: pages, throttling, errors, failed starts.

A small fake with the Batch client's method names is injected for paging and
failed starts (moto returns one page whatever ``maxResults`` says); the
retry layering is checked through real aiobotocore against a loopback
aiohttp server that answers like AWS does when it throttles or breaks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import pytest
import pytest_asyncio
from aiohttp import web
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import LaunchRefused, RefusedError, TransientError
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.service.observe import poll_jobs
from codalab_scaler.service.wiring import Overrides
from codalab_scaler.sources.backends.aws_batch.backend import CANCEL_REASON, AwsBatchBackend
from codalab_scaler.sources.backends.aws_batch.errors import translate
from codalab_scaler.sources.backends.aws_batch.settings import AwsBatchBackendSettings
from codalab_scaler.sources.backends.base import WorkerCredentials
from tests.defaults import worker_options
from tests.fakes import FakeBundles
from tests.harness import opened
from tests.moto_server import aws_env

if TYPE_CHECKING:
    from types_aiobotocore_batch import BatchClient

__all__ = ["aws_env"]  # fixture

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:pw"
PAGE = 100  # what the fake returns per page, whatever maxResults asks


def client_error(code: str, status: int, message: str = "no") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "ListJobs")


def name(worker: str, pool: str = "p") -> str:
    return f"codalab-scaler-{pool}-{worker}"


class FakeBatch:
    """Jobs by status, served in pages of ``PAGE``; errors to raise first, calls recorded."""

    def __init__(self) -> None:
        self.jobs: dict[str, list[dict[str, str]]] = {}
        self.described: dict[str, dict[str, Any]] = {}
        self.errors: list[BaseException] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def add(self, status: str, count: int, pool: str = "p", start: int = 0) -> None:
        for i in range(start, start + count):
            worker = f"{status.lower()}_{i:05d}"
            summary = {"jobId": f"{pool}-{worker}", "jobName": name(worker, pool)}
            self.jobs.setdefault(status, []).append(summary)

    async def list_jobs(self, **request: Any) -> dict[str, Any]:
        self.calls.append(("list_jobs", request))
        if self.errors:
            raise self.errors.pop(0)
        jobs = self.jobs.get(request["jobStatus"], [])
        start = int(request.get("nextToken", "0"))
        end = start + min(PAGE, request["maxResults"])
        page: dict[str, Any] = {"jobSummaryList": jobs[start:end]}
        if end < len(jobs):
            page["nextToken"] = str(end)
        return page

    async def describe_jobs(self, jobs: list[str]) -> dict[str, Any]:
        self.calls.append(("describe_jobs", {"jobs": jobs}))
        return {"jobs": [self.described[j] for j in jobs if j in self.described]}

    async def describe_job_definitions(self, **request: Any) -> dict[str, Any]:
        self.calls.append(("describe_job_definitions", request))
        return {"jobDefinitions": []}

    async def register_job_definition(self, **request: Any) -> dict[str, Any]:
        self.calls.append(("register_job_definition", request))
        return {"jobDefinitionArn": "arn:aws:batch:us-east-1:1:job-definition/codalab-worker:1"}

    async def submit_job(self, **request: Any) -> dict[str, Any]:
        self.calls.append(("submit_job", request))
        if self.errors:
            raise self.errors.pop(0)
        return {"jobId": "job-" + request["jobName"]}

    async def terminate_job(self, **request: Any) -> dict[str, Any]:
        self.calls.append(("terminate_job", request))
        if self.errors:
            raise self.errors.pop(0)
        return {}


def backend_with(fake: FakeBatch, **settings: Any) -> AwsBatchBackend:
    return AwsBatchBackend(
        "p",
        worker_options(),
        AwsBatchBackendSettings(password_secret_arn=ARN, **settings),
        WorkerCredentials("u", "pw"),
        client=cast("BatchClient", fake),
    )


async def test_every_page_of_every_status_is_counted_exactly() -> None:
    fake = FakeBatch()
    fake.add("RUNNABLE", 250)
    fake.add("RUNNABLE", 40, pool="other")  # another pool's jobs, on the same pages
    fake.add("SUBMITTED", 100)
    fake.add("RUNNING", 130)
    fake.add("SUCCEEDED", 10)  # finished: never asked for
    jobs = await backend_with(fake).list_jobs()
    states = [job.state for job in jobs]
    assert (states.count(JobState.PENDING), states.count(JobState.ACTIVE)) == (350, 130)
    assert len({job.job_id for job in jobs}) == 480
    tokens = sorted(
        (r["jobStatus"], r.get("nextToken", "")) for call, r in fake.calls if call == "list_jobs"
    )
    assert tokens == sorted(
        [
            *[("RUNNABLE", ""), ("RUNNABLE", "100"), ("RUNNABLE", "200")],
            *[("SUBMITTED", ""), ("PENDING", ""), ("STARTING", "")],
            *[("RUNNING", ""), ("RUNNING", "100")],
        ]
    )
    assert all("filters" not in r and r["jobQueue"] == "codalab-batch-cpu" for _, r in fake.calls)


async def test_the_statuses_are_listed_concurrently() -> None:
    fake = FakeBatch()
    in_flight = 0
    all_in = asyncio.Event()
    list_jobs = fake.list_jobs

    async def slow_list(**request: Any) -> dict[str, Any]:
        nonlocal in_flight
        in_flight += 1
        if in_flight == 5:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 5)  # returns only once all five are waiting
        return await list_jobs(**request)

    fake.list_jobs = slow_list  # type: ignore[method-assign]  # instrumenting the fake
    assert await backend_with(fake).list_jobs() == []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error("TooManyRequestsException", 429), TransientError),
        (client_error("ThrottlingException", 400), TransientError),
        (client_error("ServerException", 500), TransientError),
        (client_error("ServiceUnavailable", 503), TransientError),
        (EndpointConnectionError(endpoint_url="http://x"), TransientError),
        (ConnectTimeoutError(endpoint_url="http://x"), TransientError),
        (ReadTimeoutError(endpoint_url="http://x"), TransientError),
        (client_error("ClientException", 400), RefusedError),
        (client_error("AccessDeniedException", 403), RefusedError),
        (NoCredentialsError(), RefusedError),
    ],
)
def test_errors_are_transient_or_refused(error: Exception, kind: type[Exception]) -> None:
    with pytest.raises(kind, match="AWS Batch list_jobs"), translate("list_jobs"):
        raise error


@pytest.mark.parametrize(("headers", "pause"), [({"retry-after": "7"}, 7.0), ({}, None)])
def test_a_pause_aws_asks_for_travels_with_the_error(
    headers: dict[str, str], pause: float | None
) -> None:
    error = client_error("TooManyRequestsException", 429)
    error.response["ResponseMetadata"]["HTTPHeaders"] = headers
    with pytest.raises(TransientError) as raised, translate("list_jobs"):
        raise error
    assert raised.value.retry_after == pause


def throttled(retry_after: str) -> ClientError:
    error = client_error("TooManyRequestsException", 429)
    error.response["ResponseMetadata"]["HTTPHeaders"] = {"retry-after": retry_after}
    return error


@pytest.mark.parametrize(
    ("error", "kind", "pause"),
    [
        (throttled("5"), TransientError, 5.0),
        (client_error("ServerException", 500), TransientError, None),
        (EndpointConnectionError(endpoint_url="http://x"), TransientError, None),
        (client_error("AccessDeniedException", 403), RefusedError, None),
        (client_error("ClientException", 400, "'reason' is a required field"), RefusedError, None),
        (client_error("ClientException", 400, "Job not found"), None, None),  # gone: success
    ],
)
async def test_cancel_errors_are_classified_like_every_other_call(
    error: Exception, kind: type[Exception] | None, pause: float | None
) -> None:
    fake = FakeBatch()
    fake.errors = [error]
    backend = backend_with(fake)
    if kind is None:
        await backend.cancel("job-1")
    else:
        with pytest.raises(kind, match="AWS Batch terminate_job") as raised:
            await backend.cancel("job-1")
        assert getattr(raised.value, "retry_after", None) == pause
    assert fake.calls == [("terminate_job", {"jobId": "job-1", "reason": CANCEL_REASON})]


def test_anything_else_is_a_bug_and_propagates() -> None:
    with pytest.raises(KeyError), translate("list_jobs"):
        raise KeyError("jobSummaryList")


async def test_a_throttled_poll_is_retried_and_counted_by_the_service() -> None:
    fake = FakeBatch()
    fake.add("RUNNING", 3)
    fake.errors = [client_error("TooManyRequestsException", 429)]
    settings = Settings.model_validate(
        {
            "username": "u",
            "password": "pw",
            "retry_backoff_seconds": 0.01,
            "pools": {"p": {"backend": {"kind": "aws-batch", "password_secret_arn": ARN}}},
        }
    )
    registry = CollectorRegistry()
    overrides = Overrides(bundles=FakeBundles(), backends={"p": backend_with(fake)})
    async with opened(settings, registry=registry, overrides=overrides) as ctx:
        assert await poll_jobs(ctx, ctx.pools["p"]) is True
    assert registry.get_sample_value(
        "codalab_scaler_retries_total", {"peer": "backend", "pool": "p"}
    ) == pytest.approx(1)
    view = ctx.state.snapshot.pools["p"].jobs
    assert view.ok
    assert view.value is not None
    assert len(view.value) == 3


async def test_failed_starts_are_reported_once() -> None:
    fake = FakeBatch()
    fake.add("PENDING", 5)
    backend = backend_with(fake)
    assert len(await backend.list_jobs()) == 5
    ids = [job["jobId"] for job in fake.jobs["PENDING"]]
    fake.jobs["PENDING"] = fake.jobs["PENDING"][4:]  # the first four left the listing
    fake.described = {
        ids[0]: {"jobId": ids[0], "status": "FAILED", "statusReason": "CannotPullContainerError"},
        ids[1]: {"jobId": ids[1], "status": "SUCCEEDED"},
        ids[2]: {"jobId": ids[2], "status": "RUNNABLE"},  # the listing lags behind
    }  # ids[3]: gone without a trace
    jobs = await backend.list_jobs()
    assert [job for job in jobs if job.state is JobState.FAILED] == [
        WorkerJob(ids[0], JobState.FAILED, ids[0].removeprefix("p-"), "CannotPullContainerError"),
        WorkerJob(ids[3], JobState.FAILED, ids[3].removeprefix("p-"), "vanished while pending"),
    ]
    fake.described[ids[2]] = {"jobId": ids[2], "status": "FAILED"}
    again = await backend.list_jobs()
    assert [(job.job_id, job.state) for job in again] == [
        (ids[4], JobState.PENDING),
        (ids[2], JobState.FAILED),
    ]
    assert [job.state for job in await backend.list_jobs()] == [JobState.PENDING]


async def test_a_job_that_ran_is_a_failed_start_only_if_it_ended_failed() -> None:
    fake = FakeBatch()
    fake.add("PENDING", 3)
    backend = backend_with(fake)
    await backend.list_jobs()
    fake.jobs["RUNNING"], fake.jobs["PENDING"] = fake.jobs["PENDING"], []
    assert [job.state for job in await backend.list_jobs()] == [JobState.ACTIVE] * 3
    ids = [job["jobId"] for job in fake.jobs["RUNNING"]]
    fake.jobs["RUNNING"] = []
    fake.described = {
        ids[0]: {"jobId": ids[0], "status": "SUCCEEDED"},  # idle, exited 0
        ids[1]: {
            "jobId": ids[1],
            "status": "FAILED",
            "statusReason": "Essential container in task exited",
            "container": {"exitCode": 3},
        },
    }  # ids[2]: aged out of Batch's memory after it ran: nothing to report
    assert await backend.list_jobs() == [
        WorkerJob(
            ids[1],
            JobState.FAILED,
            ids[1].removeprefix("p-"),
            "Essential container in task exited (exit code 3)",
        )
    ]
    assert await backend.list_jobs() == []


async def test_a_refused_submit_looks_for_the_definition_again() -> None:
    fake = FakeBatch()
    backend = backend_with(fake)
    fake.errors = [client_error("ClientException", 400)]
    with pytest.raises(LaunchRefused, match="submit_job"):
        await backend.launch("a" * 32)
    await backend.launch("b" * 32)
    await backend.launch("c" * 32)
    calls = [call for call, _ in fake.calls]
    assert calls.count("describe_job_definitions") == 2
    assert calls.count("submit_job") == 3


async def test_a_worker_id_that_would_blur_job_names_is_refused() -> None:
    with pytest.raises(LaunchRefused, match="worker id"):
        await backend_with(FakeBatch()).launch("a-b")


# -- real aiobotocore against a loopback server: botocore does not retry on its own ------------


@pytest_asyncio.fixture
async def failing_aws(aws_env: None) -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []
    answers = {
        "/v1/listjobs": (429, "TooManyRequestsException"),
        "/v1/submitjob": (500, "ServerException"),
    }

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        status, code = answers.get(request.path, (400, "ClientException"))
        return web.json_response(
            {"__type": code, "message": "try later"},
            status=status,
            headers={"x-amzn-errortype": code},
        )

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_botocore_itself_does_not_retry(failing_aws: tuple[str, list[str]]) -> None:
    url, seen = failing_aws
    backend = AwsBatchBackend(
        "p",
        worker_options(),
        AwsBatchBackendSettings(password_secret_arn=ARN, endpoint_url=url),
        WorkerCredentials("u", "pw"),
    )
    try:
        with pytest.raises(TransientError, match="TooManyRequestsException"):
            await backend.list_jobs()
        assert sorted(seen) == ["/v1/listjobs"] * 5  # one request per status, no second try
        seen.clear()
        with pytest.raises(LaunchRefused, match="describe_job_definitions: ClientException"):
            await backend.launch("a" * 32)
        assert seen == ["/v1/describejobdefinitions"]
    finally:
        await backend.aclose()


async def test_an_unreachable_endpoint_is_transient(aws_env: None, unused_tcp_port: int) -> None:
    settings = AwsBatchBackendSettings(
        password_secret_arn=ARN,
        endpoint_url=f"http://127.0.0.1:{unused_tcp_port}",
        connect_timeout_seconds=1,
    )
    backend = AwsBatchBackend("p", worker_options(), settings, WorkerCredentials("u", "pw"))
    try:
        with pytest.raises(TransientError, match="EndpointConnectionError"):
            await backend.list_jobs()
    finally:
        await backend.aclose()


async def test_a_launched_job_that_fails_before_any_listing_is_a_failed_start() -> None:
    fake = FakeBatch()
    backend = backend_with(fake)
    job_id = await backend.launch("w1")
    fake.described = {job_id: {"jobId": job_id, "status": "FAILED", "statusReason": "no host"}}
    assert await backend.list_jobs() == [WorkerJob(job_id, JobState.FAILED, "w1", "no host")]
    assert await backend.list_jobs() == []
