"""Backends and the seam the service opens them through (no plugin magic).

``open_backend`` is an async context manager: the service enters it in its
lifecycle and leaves it on every exit path; leaving releases clients and
connections while the workers keep running.  Each backend module is
imported only when a pool uses it, so a deployment of one backend does not
need the others' libraries to start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from codalab_scaler.core.worker_command import WorkerOptions
from codalab_scaler.sources.backends.base import Backend, WorkerCredentials

__all__ = ["Backend", "WorkerCredentials", "create_backend", "open_backend"]


def create_backend(
    pool: str, settings: Any, options: WorkerOptions, credentials: WorkerCredentials
) -> Any:
    """Build the backend ``settings`` (a pool's ``backend`` table) name, for pool ``pool``.

    ``credentials`` are what a worker needs to reach CodaLab; each backend
    decides how to hand them over safely.  Prefer ``open_backend``, which
    also closes it.
    """
    kind = settings.kind
    if kind == "local":
        from codalab_scaler.sources.backends.local import LocalBackend

        return LocalBackend(pool, options, settings.state_dir, env=credentials.env())
    if kind == "aws-batch":
        from codalab_scaler.sources.backends.aws_batch import AwsBatchBackend

        return AwsBatchBackend(pool, options, settings, credentials)
    if kind == "slurm-batch":
        from codalab_scaler.sources.backends.slurm import SlurmBatchBackend

        return SlurmBatchBackend(pool, options, settings, credentials)
    raise AssertionError(f"no backend for {kind!r}")  # pragma: no cover - settings validated


@asynccontextmanager
async def open_backend(
    pool: str, settings: Any, options: WorkerOptions, credentials: WorkerCredentials
) -> AsyncIterator[Backend]:
    """Open the backend ``settings`` name for ``pool``; leaving closes it (workers keep running)."""
    backend = create_backend(pool, settings, options, credentials)
    try:
        yield backend
    finally:
        await backend.aclose()
