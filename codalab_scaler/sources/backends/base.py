"""The contract every backend keeps: list this scaler's jobs, launch one worker, cancel one.

A pool only lists, launches, cancels and describes a launch; opening and
closing a backend belong to its opener (see ``registry.BackendKind.opener``).

Consistency: ``list_jobs`` may lag behind ``launch`` (a job accepted a moment
ago may not be listed yet).  The scaler covers that gap by counting each
accepted launch as pending until its job id is listed or a timeout passes,
so a backend must return from ``launch`` the same ``job_id`` it will later
list.

Failed starts: a job that ended failed (the worker exited non-zero, or the
backend failed it) or vanished before it ran may be listed once with
``JobState.FAILED`` and a reason; the poller counts it, logs it and keeps it
out of the capacity view.  Report it whether or not a poll saw it running:
a worker that crashes within one poll interval must count all the same.

Idempotency: ``launch`` is called once per worker id and never retried by
the scaler after the backend accepted it; a backend that retries internally
must make sure one worker id starts at most one job.

Cancel: ``cancel(job_id)`` ends one job ``list_jobs`` listed (a stuck worker,
with ``cancel_stuck_workers``).  It is idempotent: a job already ended, gone
or unknown to the backend is a success, so a second call, or a call racing the
job's own end, never fails.  The job may stay listed (pending or active) until
the backend has ended it; when it ends, it is not reported as a failed start.

Dry run: ``describe_launch`` says what ``launch`` would submit (and may write
local files such as a batch script) without touching the backend.

Errors: raise ``TransientError`` for "try again" (connection, timeout, 5xx,
throttling, controller down) and ``RefusedError`` for "no" (``LaunchRefused``
from ``launch``: bad queue, invalid definition, unusable command).  Anything
else is a bug and ends the process so that its supervisor restarts it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from codalab_scaler.core.errors import LaunchRefused, ScalerError, TransientError
from codalab_scaler.core.model import WorkerJob

USERNAME_ENV = "CODALAB_USERNAME"
PASSWORD_ENV = "CODALAB_PASSWORD"  # noqa: S105 - the variable's name, not a password

# exec failures that will not get better by retrying: no such file, not executable...
UNUSABLE_EXECUTABLE = frozenset(
    {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.ENOTDIR}
)


@dataclass(frozen=True, slots=True)
class WorkerCredentials:
    """What a worker needs to log in to CodaLab; each backend hands it over its own safe way.

    ``password_file`` is the operator's two-line file when one was given
    (``--password-file``); ``repr`` never shows the password.
    """

    username: str
    password: str = field(repr=False)
    password_file: Path | None = None

    def env(self) -> dict[str, str]:
        return {USERNAME_ENV: self.username, PASSWORD_ENV: self.password}


class Backend(Protocol):
    """A place to run ``cl-worker`` jobs (local processes, AWS Batch, Slurm...)."""

    async def list_jobs(self) -> Sequence[WorkerJob]:
        """Every live job this scaler's pool launched, pending or active."""
        ...

    async def launch(self, worker_id: str) -> str:
        """Start one worker with this id; return the backend's job id."""
        ...

    async def describe_launch(self, worker_id: str) -> Mapping[str, Any]:
        """What ``launch`` would submit, for a dry run; never contains a credential."""
        ...

    async def cancel(self, job_id: str) -> None:
        """End the job ``job_id`` (as ``launch`` returned it and ``list_jobs`` lists it).

        Idempotent: a job already ended, gone or unknown is a success.  Raises
        ``TransientError`` (try again later) or ``RefusedError`` (the backend
        said no: no permission, a malformed id).
        """
        ...


class StrictModel(BaseModel):
    """Settings that reject unknown keys and never change once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def exec_failure(exc: OSError, executable: str) -> ScalerError:
    """What a failure to start ``executable`` means: refused if retrying cannot help."""
    if exc.errno in UNUSABLE_EXECUTABLE:
        return LaunchRefused(f"cannot execute {executable!r}: {exc.strerror}")
    return TransientError(f"cannot start {executable!r}: {exc}")


def write_private_file(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` with mode 0600, all or nothing; raises ``OSError``.

    Written to a per-process temporary name created by ``os.open`` itself with
    mode 0600 (never chmod-ed afterwards; ``O_EXCL | O_NOFOLLOW``: never
    through a planted file or symlink), then renamed into place.  No fsync.
    The temporary file never outlives the call.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
