"""The contract every backend keeps: list this scaler's jobs, launch one worker.

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

Dry run: ``describe_launch`` says what ``launch`` would submit (and may write
local files such as a batch script) without touching the backend.

Errors: raise ``TransientError`` for "try again" (connection, timeout, 5xx,
throttling, controller down) and ``LaunchRefused`` for "no" (bad queue,
invalid definition, unusable command).  Anything else is a bug and ends the
process so that its supervisor restarts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from codalab_scaler.model import WorkerJob


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
        return {"CODALAB_USERNAME": self.username, "CODALAB_PASSWORD": self.password}


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

    async def aclose(self) -> None:
        """Release clients and connections; running jobs keep running."""
        ...
