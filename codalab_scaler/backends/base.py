"""The contract every backend keeps: list this scaler's jobs, launch one worker.

Consistency: ``list_jobs`` may lag behind ``launch`` (a job accepted a moment
ago may not be listed yet).  The scaler covers that gap by counting each
accepted launch as pending until its job id is listed or a timeout passes,
so a backend must return from ``launch`` the same ``job_id`` it will later
list.

Idempotency: ``launch`` is called once per worker id and never retried by
the scaler after the backend accepted it; a backend that retries internally
must make sure one worker id starts at most one job.

Errors: raise ``TransientError`` for "try again" (connection, timeout, 5xx,
throttling, controller down) and ``LaunchRefused`` for "no" (bad queue,
invalid definition, unusable command).  Anything else is a bug and ends the
process so that its supervisor restarts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from codalab_scaler.model import WorkerJob


class Backend(Protocol):
    """A place to run ``cl-worker`` jobs (local processes, AWS Batch, Slurm...)."""

    async def list_jobs(self) -> Sequence[WorkerJob]:
        """Every live job this scaler's pool launched, pending or active."""
        ...

    async def launch(self, worker_id: str) -> str:
        """Start one worker with this id; return the backend's job id."""
        ...

    async def aclose(self) -> None:
        """Release clients and connections; running jobs keep running."""
        ...
