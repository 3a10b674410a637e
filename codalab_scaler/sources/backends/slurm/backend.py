"""Workers as Slurm batch jobs: ``squeue`` to observe, ``sbatch`` to launch, ``scancel`` to cancel.

Job names are ``<user>-<job_name>-<pool>-<worker_id>``: the original's
``<user>-<job_name>-`` prefix plus the pool, so one squeue call filtered by
user and partition finds exactly this pool's jobs, after a restart too.

Memory is bounded by the live jobs: ``_tracked`` holds each job this instance
launched or saw pending/running, and forgets it when squeue shows it ended
(reported once as ``FAILED`` if it failed) or no longer lists it.

Cancel: ``scancel <job id>`` through the same runner, timeout and
environment as sbatch and squeue.  The job then shows ``CANCELLED`` (an end,
not a failure); one this instance cancelled is never reported as a failed
start, even if it vanishes or ends otherwise.  A job already ended or unknown
to Slurm is a success: recent Slurm exits 0 for it, older releases print
"Invalid job id specified" or "already completing or completed", which are
read the same way.  A dry run never reaches ``cancel`` (the service logs what
it would cancel instead).
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from codalab_scaler.core.errors import ConfigError, LaunchRefused, RefusedError, TransientError
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.core.worker_command import WorkerOptions, build_command, work_dir_for
from codalab_scaler.sources.backends.base import WorkerCredentials
from codalab_scaler.sources.backends.slurm import commands, script, squeue
from codalab_scaler.sources.backends.slurm.credentials import (
    check_password_file,
    write_password_file,
)
from codalab_scaler.sources.backends.slurm.settings import SlurmBatchBackendSettings

log = structlog.get_logger()

UNSEEN_FORGET_SECONDS = 600.0  # a submitted job squeue never listed is forgotten after this
# What older scancel releases say (exit 1) about a job that is gone already.
_ALREADY_GONE = re.compile(
    r"invalid job id specified|already completing or completed|job has already finished",
    re.IGNORECASE,
)


@dataclass(slots=True)
class _Tracked:
    worker_id: str
    since: float  # when this instance first knew of the job (monotonic)
    seen: bool = False  # listed by squeue at least once
    ran: bool = False  # seen running (or otherwise holding resources)
    cancelled: bool = False  # scancel-ed by this instance: its end is no failed start


class SlurmBatchBackend:
    """Submits one batch job per worker; lists the pool's jobs with one squeue call."""

    def __init__(
        self,
        pool: str,
        options: WorkerOptions,
        settings: SlurmBatchBackendSettings,
        credentials: WorkerCredentials,
        *,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_user(settings.user)
        self._pool = pool
        self._options = options
        self._settings = settings
        self._credentials = credentials
        self._clock = clock
        # Absolute: the job runs elsewhere (a compute node, another directory).
        self._work_dir = settings.slurm_work_dir.expanduser().resolve()
        self._prefix = f"{settings.user}-{settings.job_name}-{pool}-"
        self._squeue_argv = squeue.squeue_argv(settings.user, settings.partition)
        self._env = commands.job_environment(env)
        if credentials.password_file is not None:
            self._password_file = check_password_file(credentials.password_file)
            self._write_password = False
        else:  # written by the first launch: its content never changes
            self._password_file = self._work_dir / f".codalab-password-{pool}"
            self._write_password = True
        self._tracked: dict[str, _Tracked] = {}
        self._unknown_states: set[str] = set()

    # -- observe -----------------------------------------------------------

    async def list_jobs(self) -> Sequence[WorkerJob]:
        text = await self._run(self._squeue_argv, stderr_is_error=True)
        rows, malformed = squeue.parse(text)
        for line in malformed:
            log.warning("slurm.squeue_line_malformed", pool=self._pool, line=line[:200])
        mine = squeue.ours(rows, self._prefix)
        jobs: list[WorkerJob] = []
        for job_id, (row, worker_id) in mine.items():
            job = self._observe(job_id, row, worker_id)
            if job is not None:
                jobs.append(job)
        jobs += self._forget_unlisted(mine)
        return jobs

    def _observe(self, job_id: str, row: squeue.Row, worker_id: str) -> WorkerJob | None:
        phase = row.phase
        if phase is None:
            if row.state not in self._unknown_states:
                self._unknown_states.add(row.state)
                log.warning("slurm.unknown_state", pool=self._pool, job_id=job_id, state=row.state)
            phase = squeue.Phase.ACTIVE  # counts towards the maximum, covers no staged bundle
        tracked = self._tracked.get(job_id)
        if phase in (squeue.Phase.PENDING, squeue.Phase.ACTIVE):
            if tracked is None:
                tracked = self._tracked[job_id] = _Tracked(worker_id, self._clock())
                log.info("slurm.job_found", pool=self._pool, job_id=job_id, state=row.state)
            tracked.seen = True
            if phase is squeue.Phase.ACTIVE:
                tracked.ran = True
                return WorkerJob(job_id, JobState.ACTIVE, worker_id)
            return WorkerJob(job_id, JobState.PENDING, worker_id)
        if tracked is None:
            return None  # ended before this instance saw it alive: reported by then, or not ours
        del self._tracked[job_id]
        detail = f"{row.state} ({row.reason})" if row.reason not in ("", "None") else row.state
        if phase is squeue.Phase.FAILED and not tracked.cancelled:
            when = "after running" if tracked.ran else "before running"
            return WorkerJob(job_id, JobState.FAILED, worker_id, reason=f"{detail} {when}")
        log.info("slurm.job_ended", pool=self._pool, job_id=job_id, state=detail)
        return None

    def _forget_unlisted(self, listed: Mapping[str, object]) -> list[WorkerJob]:
        failed = []
        now = self._clock()
        for job_id, tracked in list(self._tracked.items()):
            if job_id in listed:
                continue
            if tracked.seen:
                del self._tracked[job_id]
                if not tracked.ran and not tracked.cancelled:
                    reason = "vanished from squeue before it ever ran"
                    failed.append(WorkerJob(job_id, JobState.FAILED, tracked.worker_id, reason))
                else:
                    log.info("slurm.job_ended", pool=self._pool, job_id=job_id, state="gone")
            elif now - tracked.since > UNSEEN_FORGET_SECONDS:
                del self._tracked[job_id]
                log.warning("slurm.job_never_listed", pool=self._pool, job_id=job_id)
        return failed

    # -- act ---------------------------------------------------------------

    async def launch(self, worker_id: str) -> str:
        files, argv = self._prepare(worker_id)
        if self._write_password:
            write_password_file(self._password_file, self._credentials)
            self._write_password = False
        output = await self._run(argv)
        # --parsable prints "<job id>" or "<job id>;<cluster>"
        job_id = output.strip().splitlines()[0].split(";")[0] if output.strip() else ""
        if not job_id.isdigit():
            # The job may exist all the same: squeue lists it by name, so nothing is lost.
            raise TransientError(f"sbatch printed no job id: {output.strip()[:200]!r}")
        self._tracked[job_id] = _Tracked(worker_id, self._clock())
        log.info(
            "slurm.job_submitted",
            pool=self._pool,
            worker_id=worker_id,
            job_id=job_id,
            job_name=files.job_name,
            script=str(files.script),
        )
        return job_id

    async def cancel(self, job_id: str) -> None:
        """``scancel`` the job; one already ended or unknown to Slurm is a success."""
        if not (job_id.isdigit() and job_id.isascii()):
            raise RefusedError(f"Slurm job id {job_id!r} is not a number")
        try:
            await self._run(["scancel", job_id])
        except (commands.SlurmRefused, commands.SlurmTransient) as exc:
            if exc.failure.returncode is None or not _ALREADY_GONE.search(exc.failure.stderr):
                raise
            log.info("slurm.job_already_gone", pool=self._pool, job_id=job_id)
            return
        tracked = self._tracked.get(job_id)
        if tracked is not None:
            tracked.cancelled = True
        log.info("slurm.job_cancelled", pool=self._pool, job_id=job_id)

    async def describe_launch(self, worker_id: str) -> Mapping[str, Any]:
        files, argv = self._prepare(worker_id)
        return {
            "script": str(files.script),
            "sbatch": argv,
            "job_name": files.job_name,
            "output": str(files.output),
            "password_file": str(self._password_file),
        }

    async def aclose(self) -> None:
        """Nothing to release: jobs keep running; a new instance finds them by name."""

    # -- helpers -----------------------------------------------------------

    def _prepare(self, worker_id: str) -> tuple[script.JobFiles, list[str]]:
        """Write the worker's batch script; return its files and the sbatch argv."""
        if not (worker_id.isalnum() and worker_id.isascii()):
            raise LaunchRefused(f"worker id {worker_id!r} must be letters and digits only")
        files = script.JobFiles(self._work_dir / worker_id, self._prefix + worker_id)
        default_prefix = str(files.directory)
        command = build_command(
            self._options, worker_id, work_dir_for(self._options, worker_id, default_prefix)
        )
        text = script.render(
            self._settings, files, script.worker_argv(command, self._password_file)
        )
        try:
            files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(files.script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        except PermissionError as exc:
            raise LaunchRefused(f"cannot write {exc.filename}: {exc.strerror}") from exc
        except OSError as exc:
            raise TransientError(f"cannot write {files.script}: {exc}") from exc
        return files, ["sbatch", "--parsable", str(files.script)]

    async def _run(self, argv: list[str], *, stderr_is_error: bool = False) -> str:
        return await commands.run(
            argv,
            timeout=self._settings.command_timeout_seconds,
            env=self._env,
            stderr_is_error=stderr_is_error,
        )


def _check_user(user: str) -> None:
    """Squeue lists jobs by ``user``; sbatch submits as us: they must be the same user."""
    if not user:
        raise ConfigError(["user: unknown (no passwd entry and no $USER); give --user"])
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return  # no passwd entry: nothing to compare with
    if user != me:
        raise ConfigError(
            [(f"user: {user!r} is not the user sbatch submits as ({me!r}); its jobs would never "
             "be listed, so every poll would launch more")]
        )  # fmt: skip


def create_backend(
    pool: str,
    settings: SlurmBatchBackendSettings,
    options: WorkerOptions,
    credentials: WorkerCredentials,
) -> SlurmBatchBackend:
    """Build the backend; its ``aclose`` releases it (the registry opens and closes it)."""
    return SlurmBatchBackend(pool, options, settings, credentials)
