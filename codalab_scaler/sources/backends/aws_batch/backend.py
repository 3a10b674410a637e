"""The ``aws-batch`` backend: list this pool's Batch jobs, submit one per worker.

Retries: botocore's own retries are switched off (``total_max_attempts=1``)
so the scaler's tenacity policy is the only retry layer: each retry is
bounded, jittered and counted in ``codalab_scaler_retries_total``.  The
poller retries ``list_jobs``; a failed launch is not retried (a submit that
timed out may have created the job), the next pass launches again if the
rules still ask for it.  Connect and read timeouts bound each HTTP request.

Listing: one ``list_jobs`` call per status (SUBMITTED, PENDING, RUNNABLE,
STARTING are pending; RUNNING is active), concurrently, each following
``nextToken`` to the end.  No ``filters``: AWS ignores ``jobStatus`` when a
filter is given and would return every finished job of the retention
period too; names are matched here instead (``spec.JobNames``, then
``job_filter``).  Counts come from the queue alone, so a restarted scaler
sees what an earlier one launched.  A job this instance listed that ended
FAILED (the worker exited non-zero, or Batch failed it), or vanished before
it was seen running, is reported once as a failed start, as Slurm's are:
not only when a poll happened to see it pending, so a worker that crashes
within one poll interval is counted all the same.  One that left the listing
but is described as still alive (a listing that lags or lost a page) is
counted as alive: a short listing must never launch a worker twice.  An
answer without its list (an HTML page behind a proxy, a body botocore could
not read) is a transient error, never "no jobs".

Cancel: ``TerminateJob`` with the reason ``CANCEL_REASON`` (Batch returns it
as the job's ``statusReason``).  Batch fails a SUBMITTED, PENDING or RUNNABLE
job and stops a running one's container; the job stays listed until Batch has
done so.  Batch answers 200 for a job already finished and for an unknown id
(aws-cli issue 2551), and an answer saying the job is not found is read the
same way: a job already gone is a success.  Other refusals and transient
errors are classified by ``errors.translate`` as for every other call.  A
cancelled job that ends FAILED (or vanishes) is not a failed start: this
instance remembers the ids it cancelled, and a restarted one recognises
``CANCEL_REASON``.

Credentials: the standard AWS chain (environment, profile, instance role);
neither they nor the worker's password are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import structlog

from codalab_scaler.core.errors import ConfigError, LaunchRefused, RefusedError, TransientError
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.core.worker_command import WorkerOptions
from codalab_scaler.sources.backends.aws_batch import spec
from codalab_scaler.sources.backends.aws_batch.client import create_client, quiet_sdk_debug_logs
from codalab_scaler.sources.backends.aws_batch.errors import translate
from codalab_scaler.sources.backends.aws_batch.settings import AwsBatchBackendSettings
from codalab_scaler.sources.backends.base import WorkerCredentials

if TYPE_CHECKING:
    from types_aiobotocore_batch import BatchClient

log = structlog.get_logger()

PAGE_SIZE = 1000  # the most ListJobs returns per page when jobStatus is given
DESCRIBE_CHUNK = 100  # the most DescribeJobs accepts per call
MAX_PAGES = 10_000  # a peer that never stops paginating is a fault, not a queue
CANCEL_REASON = "codalab-scaler: stuck, never registered"  # the job's statusReason afterwards
_NOT_FOUND = re.compile(r"not found|does not exist|no such job", re.IGNORECASE)


class AwsBatchBackend:
    """Runs each worker as one AWS Batch job of this pool's queue."""

    def __init__(
        self,
        pool: str,
        options: WorkerOptions,
        settings: AwsBatchBackendSettings,
        credentials: WorkerCredentials,
        *,
        client: BatchClient | None = None,
    ) -> None:
        prefix = spec.work_dir_prefix(options)
        if not PurePosixPath(prefix).is_absolute():
            raise ConfigError([f"pools.{pool}.worker_work_dir_prefix: must be an absolute path"])
        self._pool = pool
        self._options = options
        self._settings = settings
        self._names = spec.JobNames(settings.job_name_prefix, pool)
        self._filter = None if settings.job_filter is None else re.compile(settings.job_filter)
        self._plaintext = credentials.password if settings.password_secret_arn is None else None
        self._inputs = spec.DefinitionInputs(
            name=settings.job_definition_name, image=settings.image, cpus=settings.cpus,
            gpus=settings.gpus, memory_mb=settings.memory_mb, user=settings.user,
            username=credentials.username, work_dir_prefix=prefix,
            password_secret_arn=settings.password_secret_arn,
            execution_role_arn=settings.execution_role_arn,
        )  # fmt: skip
        self._wanted = spec.definition_request(self._inputs)  # pure: built once
        self._client = client
        self._owns_client = client is None
        self._stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()
        self._definition_lock = asyncio.Lock()
        self._definition_arn: str | None = None
        # job id -> (worker id, seen running): the live jobs this instance listed
        self._live: dict[str, tuple[str, bool]] = {}
        self._cancelled: set[str] = set()  # ids this instance terminated, while in _live
        quiet_sdk_debug_logs()
        self._warn_about_settings()

    def _warn_about_settings(self) -> None:
        settings = self._settings
        if self._plaintext is not None:
            log.warning(
                "aws_batch.plaintext_password",
                pool=self._pool,
                why="allow_plaintext_password: the worker's CodaLab password travels in each "
                "job's containerOverrides, readable by anyone allowed batch:DescribeJobs",
            )
        if settings.password_secret_arn is not None and settings.execution_role_arn is None:
            log.warning(
                "aws_batch.no_execution_role",
                pool=self._pool,
                why="AWS Batch needs execution_role_arn to read password_secret_arn",
            )
        if self._filter is not None and not self._filter.fullmatch(self._names.name("0" * 32)):
            log.warning(
                "aws_batch.job_filter_excludes_own_jobs",
                pool=self._pool,
                job_filter=settings.job_filter,
                job_names=self._names.stem + "<worker id>",
            )

    async def _api(self) -> BatchClient:
        async with self._client_lock:
            if self._client is None:
                with translate("client"):
                    creating = create_client(self._settings)
                    self._client = await self._stack.enter_async_context(creating)
            return self._client

    # -- listing --------------------------------------------------------------------------

    async def list_jobs(self) -> Sequence[WorkerJob]:
        api = await self._api()
        statuses = (*spec.PENDING_STATUSES, *spec.ACTIVE_STATUSES)
        results = await asyncio.gather(
            *(self._list_status(api, status) for status in statuses), return_exceptions=True
        )
        jobs: list[WorkerJob] = []
        for status, result in zip(statuses, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            state = JobState.ACTIVE if status in spec.ACTIVE_STATUSES else JobState.PENDING
            jobs += [WorkerJob(job_id, state, worker_id) for job_id, worker_id in result]
        return jobs + await self._failed_starts(api, jobs)

    async def _list_status(self, api: BatchClient, status: str) -> list[tuple[str, str]]:
        """(job id, worker id) of this pool's jobs in ``status``, every page."""
        found = []
        request = {
            "jobQueue": self._settings.job_queue,
            "jobStatus": status,
            "maxResults": PAGE_SIZE,
        }
        async for page in _pages(api.list_jobs, request, "list_jobs", f"{status} jobs"):
            for summary in _listed(page, "jobSummaryList", "list_jobs"):
                name = summary.get("jobName", "")
                worker_id = self._names.worker_id(name)
                if worker_id is not None and self._counts(name):
                    found.append((summary["jobId"], worker_id))
        return found

    async def _failed_starts(self, api: BatchClient, jobs: list[WorkerJob]) -> list[WorkerJob]:
        """Jobs listed before that left the listing: still alive, or ended FAILED.

        Or vanished unstarted.  Alive ones are counted: a listing that missed them
        must not launch more.
        """
        listed = {job.job_id for job in jobs}
        known = set(self._live)
        gone = [job_id for job_id in self._live if job_id not in listed]
        described: dict[str, Mapping[str, Any]] = {}
        for start in range(0, len(gone), DESCRIBE_CHUNK):
            with translate("describe_jobs"):
                answer = await api.describe_jobs(jobs=gone[start : start + DESCRIBE_CHUNK])
            described.update(
                {job["jobId"]: job for job in _listed(answer, "jobs", "describe_jobs")}
            )
        live = {
            j.job_id: (j.worker_id, j.state is JobState.ACTIVE or self._ran(j.job_id)) for j in jobs
        }
        failed: list[WorkerJob] = []
        lagging: list[WorkerJob] = []
        for job_id in gone:
            worker_id, ran = self._live[job_id]
            job = described.get(job_id)
            status = None if job is None else job.get("status")
            if _ended_cancelled(job, cancelled=job_id in self._cancelled):
                log.info("aws_batch.cancelled_job_ended", pool=self._pool, job_id=job_id)
                continue
            if job is None:
                if ran:
                    continue  # served, then aged out of Batch's retention
                reason = "vanished while pending"
            elif status == "FAILED":
                reason = _failure_reason(job)
            elif status in (*spec.PENDING_STATUSES, *spec.ACTIVE_STATUSES):
                # The listing lags or lost a page: the job is alive and counts all the same.
                active = status in spec.ACTIVE_STATUSES
                live[job_id] = (worker_id, ran or active)
                if self._counts(str(job.get("jobName", ""))):
                    state = JobState.ACTIVE if active else JobState.PENDING
                    lagging.append(WorkerJob(job_id, state, worker_id))
                continue
            else:  # SUCCEEDED: it served and exited cleanly
                continue
            failed.append(WorkerJob(job_id, JobState.FAILED, worker_id, reason))
        # A launch that finished during this poll's awaits is kept for the next one.
        live.update({k: v for k, v in self._live.items() if k not in known and k not in live})
        self._live = live
        self._cancelled &= live.keys()
        return lagging + failed

    def _counts(self, name: str) -> bool:
        """A job of this pool's name that ``job_filter`` (if any) keeps."""
        return self._filter is None or self._filter.fullmatch(name) is not None

    def _ran(self, job_id: str) -> bool:
        return job_id in self._live and self._live[job_id][1]

    # -- launching ------------------------------------------------------------------------

    async def launch(self, worker_id: str) -> str:
        if not spec.WORKER_ID.fullmatch(worker_id):
            raise LaunchRefused(f"worker id {worker_id!r} must match {spec.WORKER_ID.pattern}")
        api = await self._api()
        definition = await self._definition(api)
        request = self._submit_request(worker_id, definition, self._plaintext)
        try:
            with translate("submit_job", LaunchRefused):
                response = await api.submit_job(**request)
        except LaunchRefused:
            self._definition_arn = None  # look again next time: it may have been deregistered
            raise
        job_id = response["jobId"]
        self._live[job_id] = (worker_id, False)  # a failed start even if no listing ever shows it
        log.info(
            "aws_batch.job_submitted",
            pool=self._pool,
            worker_id=worker_id,
            job_id=job_id,
            job_name=request["jobName"],
            job_queue=self._settings.job_queue,
        )
        return job_id

    def _submit_request(self, worker_id: str, definition: str, password: str | None) -> Any:
        return spec.submit_request(
            self._names,
            self._options,
            worker_id,
            queue=self._settings.job_queue,
            definition=definition,
            plaintext_password=password,
        )

    async def _definition(self, api: BatchClient) -> str:
        """The ARN of a revision with this pool's properties: found, or registered once."""
        async with self._definition_lock:
            if self._definition_arn is not None:
                return self._definition_arn
            wanted = self._wanted
            revisions: list[Mapping[str, Any]] = []
            request = {"jobDefinitionName": self._inputs.name, "status": "ACTIVE"}
            operation = "describe_job_definitions"
            pages = _pages(
                api.describe_job_definitions, request, operation, "revisions", LaunchRefused
            )
            async for page in pages:
                revisions += page.get("jobDefinitions", [])
            arn = spec.matching_revision(revisions, wanted)
            if arn is not None:
                log.info("aws_batch.definition_reused", pool=self._pool, job_definition=arn)
            else:
                with translate("register_job_definition", LaunchRefused):
                    registered = await api.register_job_definition(**wanted)
                arn = registered["jobDefinitionArn"]
                log.info("aws_batch.definition_registered", pool=self._pool, job_definition=arn)
            self._definition_arn = arn
            return arn

    # -- cancelling -----------------------------------------------------------------------

    async def cancel(self, job_id: str) -> None:
        """TerminateJob ``job_id`` with ``CANCEL_REASON``; a job already gone is a success."""
        api = await self._api()
        try:
            with translate("terminate_job"):
                await api.terminate_job(jobId=job_id, reason=CANCEL_REASON)
        except RefusedError as exc:
            if not _NOT_FOUND.search(str(exc)):
                raise
            log.info("aws_batch.job_already_gone", pool=self._pool, job_id=job_id, answer=str(exc))
            return
        if job_id in self._live:
            self._cancelled.add(job_id)
        log.info("aws_batch.job_terminated", pool=self._pool, job_id=job_id, reason=CANCEL_REASON)

    async def describe_launch(self, worker_id: str) -> Mapping[str, Any]:
        password = None if self._plaintext is None else spec.REDACTED
        plan = self._submit_request(worker_id, self._inputs.name, password)
        return {**plan, "jobDefinitionProperties": copy.deepcopy(self._wanted)}

    async def aclose(self) -> None:
        """Close the client this backend created (an injected one belongs to its owner)."""
        await self._stack.aclose()
        if self._owns_client:
            self._client = None


async def _pages(
    call: Callable[..., Awaitable[Mapping[str, Any]]],
    request: Mapping[str, Any],
    operation: str,
    what: str,
    refused: type[RefusedError] = RefusedError,
) -> AsyncIterator[Mapping[str, Any]]:
    """Every page ``call(**request)`` answers, following ``nextToken``; errors as ``translate``.

    Past ``MAX_PAGES`` the peer is at fault: ``TransientError``, never a partial answer.
    """
    request = dict(request)
    for _ in range(MAX_PAGES):
        with translate(operation, refused):
            page = await call(**request)
        yield page
        token = page.get("nextToken")
        if not token:
            return
        request["nextToken"] = token
    raise TransientError(f"AWS Batch {operation}: more than {MAX_PAGES} pages of {what}")


def _listed(answer: Mapping[str, Any], key: str, operation: str) -> list[Any]:
    """The list ``key`` of an answer.

    An answer without one is not Batch's (a proxy's page, a body botocore could
    not read) and must never read as "no jobs".
    """
    items = answer.get(key)
    if not isinstance(items, list):
        raise TransientError(f"AWS Batch {operation}: the answer has no {key} list")
    return items


def _ended_cancelled(job: Mapping[str, Any] | None, *, cancelled: bool) -> bool:
    """A job this scaler terminated that has now ended FAILED or vanished: no failed start."""
    if job is None:
        return cancelled
    if job.get("status") != "FAILED":
        return False
    return cancelled or job.get("statusReason") == CANCEL_REASON


def _failure_reason(job: Mapping[str, Any]) -> str:
    """Batch's reason, with the worker's exit code when its container ran."""
    reason = str(job.get("statusReason") or "FAILED")
    container = job.get("container")
    exit_code = container.get("exitCode") if isinstance(container, Mapping) else None
    return reason if exit_code is None else f"{reason} (exit code {exit_code})"


def create_backend(
    pool: str,
    settings: AwsBatchBackendSettings,
    options: WorkerOptions,
    credentials: WorkerCredentials,
) -> AwsBatchBackend:
    """Build the backend; its ``aclose`` releases it (the registry opens and closes it)."""
    return AwsBatchBackend(pool, options, settings, credentials)
