"""The ``azure-batch`` backend: list this pool's tasks of one Batch job, add one per worker.

Retries: azure-core's retries are off, so the scaler's tenacity policy is
the only retry layer.  The poller retries ``list_jobs``; a launch is not
retried here (the next pass launches again if the rules still ask), and
adding a task whose id exists already (``409 TaskExists``) is the same
worker: success.

Listing: ``GET /jobs/{job}/tasks`` with ``$filter`` (this pool's id stem
and the states active, preparing, running) and ``$select`` (id, state,
executionInfo), following ``odata.nextLink`` to the end.  active and
preparing are pending, running is active.  A task this instance listed or
launched that left the listing is fetched once: completed with a failure
info or a non-zero exit code is a failed start with its reason; gone
(deleted) before it ran, too.  Any failed call fails the whole listing
(a stale view, never zero).  The first listing also reads the job's task
counts, so a wrong ``job_id`` is a refusal that names it.

Credentials: the account key only signs requests (never sent, never
logged); the worker's password reaches it as a file on the node (see
``spec``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import structlog
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from codalab_scaler.core.errors import ConfigError, LaunchRefused, RefusedError, TransientError
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.core.worker_command import DEFAULT_WORK_DIR_PREFIX, WorkerOptions
from codalab_scaler.sources.backends.azure_batch import spec
from codalab_scaler.sources.backends.azure_batch.client import (
    create_client,
    entra_id_credential,
    quiet_sdk_logs,
    shared_key,
)
from codalab_scaler.sources.backends.azure_batch.errors import (
    TASK_EXISTS,
    error_code,
    translate,
)
from codalab_scaler.sources.backends.azure_batch.settings import AzureBatchBackendSettings
from codalab_scaler.sources.backends.base import WorkerCredentials

log = structlog.get_logger()

WORKER_ID_LENGTH = 32  # uuid4().hex, as the scaler makes them
MAX_PAGES = 10_000  # a peer that never stops paginating is a fault, not a job
PAGE_SIZE = 1000  # the most a list call returns per page


class AzureBatchBackend:
    """Runs each worker as one task of this pool's Azure Batch job."""

    def __init__(
        self,
        pool: str,
        options: WorkerOptions,
        settings: AzureBatchBackendSettings,
        credentials: WorkerCredentials,
        *,
        client: BatchClient | None = None,
    ) -> None:
        prefix = options.work_dir_prefix or DEFAULT_WORK_DIR_PREFIX
        if not PurePosixPath(prefix).is_absolute():
            raise ConfigError([f"pools.{pool}.worker_work_dir_prefix: must be an absolute path"])
        self._ids = spec.TaskIds(settings.task_id_prefix, pool)
        longest = len(self._ids.stem) + WORKER_ID_LENGTH
        if longest > spec.MAX_TASK_ID:
            raise ConfigError(
                [
                    (
                        f"pools.{pool}.backend.task_id_prefix: task ids {self._ids.stem}<worker "
                        f"id> would be {longest} characters, Batch allows {spec.MAX_TASK_ID}; "
                        "shorten the prefix or the pool name"
                    )
                ]
            )
        self._pool = pool
        self._options = options
        self._settings = settings
        self._username = credentials.username
        self._plaintext = credentials.password if settings.worker_password_file is None else None
        self._inputs = spec.TaskInputs(
            image=settings.image, cpus=settings.cpus, gpus=settings.gpus,
            memory_mb=settings.memory_mb, user=settings.user,
            log_container_url=settings.log_container_url,
            log_container_identity=settings.log_container_identity,
            worker_password_file=settings.worker_password_file,
        )  # fmt: skip
        self._credential = shared_key(settings) if client is None else None  # reads the key file
        self._client = client
        self._owns_client = client is None
        self._stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()
        self._job_checked = False
        # task id -> (worker id, seen running): the live tasks this instance listed or added
        self._live: dict[str, tuple[str, bool]] = {}
        quiet_sdk_logs()
        self._warn_about_settings()

    def _warn_about_settings(self) -> None:
        if self._plaintext is not None:
            log.warning(
                "azure_batch.plaintext_password",
                pool=self._pool,
                why="allow_plaintext_password: the worker's CodaLab password is stored in each "
                "task's environmentSettings, readable by anyone who may read the job's tasks",
            )
        url = self._settings.log_container_url
        if "sig=" in url and self._settings.log_container_identity is None:
            log.warning(
                "azure_batch.sas_in_tasks",
                pool=self._pool,
                log_container_url=spec.redact_url(url),
                why="the log container's SAS token is stored in each task's outputFiles; "
                "log_container_identity (a managed identity of the pool) avoids it",
            )

    async def _api(self) -> BatchClient:
        async with self._client_lock:
            if self._client is None:
                credential: Any = self._credential
                if credential is None:
                    credential = entra_id_credential()
                    await self._stack.enter_async_context(credential)
                client = create_client(self._settings, credential)
                self._client = await self._stack.enter_async_context(client)
            return self._client

    # -- listing --------------------------------------------------------------------------

    async def list_jobs(self) -> Sequence[WorkerJob]:
        api = await self._api()
        if not self._job_checked:
            await self._check_job(api)
        listed: list[WorkerJob] = []
        for task in await self._list_live(api):
            worker_id = self._ids.worker_id(task["id"])
            if worker_id is None:
                continue
            state = task.get("state")
            if state in spec.ACTIVE_STATES:
                listed.append(WorkerJob(task["id"], JobState.ACTIVE, worker_id))
            elif state in spec.PENDING_STATES:
                listed.append(WorkerJob(task["id"], JobState.PENDING, worker_id))
        return listed + await self._failed_starts(api, listed)

    async def _check_job(self, api: BatchClient) -> None:
        """Read the job's task counts once: a wrong job id is a refusal naming it."""
        try:
            with translate("get_job_task_counts"):
                counts = await api.get_job_task_counts(self._settings.job_id)
        except RefusedError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                raise job_not_found(self._settings.job_id) from exc.__cause__
            raise
        self._job_checked = True
        task_counts = counts.task_counts
        log.info(
            "azure_batch.job_found",
            pool=self._pool,
            job_id=self._settings.job_id,
            active=task_counts.active,
            running=task_counts.running,
            completed=task_counts.completed,
        )

    async def _list_live(self, api: BatchClient) -> list[dict[str, Any]]:
        """Every page of this pool's tasks not yet completed, as REST JSON."""
        pages = api.list_tasks(
            self._settings.job_id,
            filter=self._ids.live_filter(),
            select=list(spec.LISTED_PROPERTIES),
            max_results=PAGE_SIZE,
        ).by_page()
        found: list[dict[str, Any]] = []
        with translate("list_tasks"):
            for _ in range(MAX_PAGES):
                try:
                    page = await anext(pages)
                except StopAsyncIteration:
                    return found
                found += [task.as_dict() for task in [item async for item in page]]
        raise TransientError(f"Azure Batch list_tasks: more than {MAX_PAGES} pages of tasks")

    async def _failed_starts(self, api: BatchClient, listed: list[WorkerJob]) -> list[WorkerJob]:
        """Tasks seen before that left the listing and failed (or vanished unstarted)."""
        known = set(self._live)
        listed_ids = {job.job_id for job in listed}
        live = {
            job.job_id: (job.worker_id, job.state is JobState.ACTIVE or self._ran(job.job_id))
            for job in listed
        }
        failed: list[WorkerJob] = []
        for task_id in [t for t in known if t not in listed_ids]:
            worker_id, ran = self._live[task_id]
            task = await self._get_task(api, task_id)
            if task is None:
                if not ran:
                    failed.append(WorkerJob(task_id, JobState.FAILED, worker_id, "vanished"))
                continue
            state = task.get("state")
            if state != spec.COMPLETED:  # the listing lags behind
                live[task_id] = (worker_id, ran or state in spec.ACTIVE_STATES)
                continue
            reason = spec.failure_reason(task)
            if reason is not None:
                failed.append(WorkerJob(task_id, JobState.FAILED, worker_id, reason))
        # A launch that finished during this poll's awaits is kept for the next one.
        live.update({k: v for k, v in self._live.items() if k not in known and k not in live})
        self._live = live
        return failed

    async def _get_task(self, api: BatchClient, task_id: str) -> dict[str, Any] | None:
        try:
            with translate("get_task"):
                task = await api.get_task(
                    self._settings.job_id, task_id, select=list(spec.LISTED_PROPERTIES)
                )
        except RefusedError as exc:
            cause = exc.__cause__
            if not isinstance(cause, ResourceNotFoundError):
                raise
            if error_code(cause) == "JobNotFound":
                raise job_not_found(self._settings.job_id) from cause
            return None  # deleted
        return task.as_dict()

    def _ran(self, task_id: str) -> bool:
        return task_id in self._live and self._live[task_id][1]

    # -- launching ------------------------------------------------------------------------

    async def launch(self, worker_id: str) -> str:
        if not spec.WORKER_ID.fullmatch(worker_id):
            raise LaunchRefused(f"worker id {worker_id!r} must match {spec.WORKER_ID.pattern}")
        api = await self._api()
        request = self._request(worker_id, self._plaintext)
        task_id = str(request["id"])
        existed = False
        with translate("create_task", LaunchRefused):
            try:
                await api.create_task(self._settings.job_id, models.BatchTaskCreateOptions(request))
            except HttpResponseError as exc:
                if error_code(exc) != TASK_EXISTS:
                    raise
                existed = True  # an earlier attempt of this very worker got through
        self._live.setdefault(task_id, (worker_id, False))
        log.info(
            "azure_batch.task_added",
            pool=self._pool,
            worker_id=worker_id,
            task_id=task_id,
            job_id=self._settings.job_id,
            already_existed=existed,
        )
        return task_id

    def _request(self, worker_id: str, password: str | None) -> dict[str, Any]:
        return spec.create_task_request(
            self._ids,
            self._options,
            self._inputs,
            worker_id,
            username=self._username,
            plaintext_password=password,
        )

    async def describe_launch(self, worker_id: str) -> Mapping[str, Any]:
        password = None if self._plaintext is None else spec.REDACTED
        return {
            "jobId": self._settings.job_id,
            "task": spec.redacted(self._request(worker_id, password)),
        }

    async def cancel(self, job_id: str) -> None:
        """Terminate the task ``job_id`` (as ``launch`` returned it); done if it already ended."""
        api = await self._api()
        with translate("terminate_task"):
            try:
                await api.terminate_task(self._settings.job_id, job_id)
            except HttpResponseError as exc:
                if error_code(exc) not in ("TaskCompleted", "TaskNotFound"):
                    raise
        log.info("azure_batch.task_terminated", pool=self._pool, task_id=job_id)

    async def aclose(self) -> None:
        """Close the client this backend created (an injected one belongs to its owner)."""
        await self._stack.aclose()
        if self._owns_client:
            self._client = None


def job_not_found(job_id: str) -> RefusedError:
    return RefusedError(f"Azure Batch: job_id {job_id!r}: no such job in this account")


def create_backend(
    pool: str,
    settings: AzureBatchBackendSettings,
    options: WorkerOptions,
    credentials: WorkerCredentials,
) -> AzureBatchBackend:
    """Build the backend; its ``aclose`` releases it (the registry opens and closes it)."""
    return AzureBatchBackend(pool, options, settings, credentials)
