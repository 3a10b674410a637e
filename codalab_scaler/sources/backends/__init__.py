"""Backends and the explicit factory that picks one per pool (no plugin magic).

Each backend module is imported only when a pool uses it, so a deployment
of one backend does not need the others' libraries to start.
"""

from __future__ import annotations

from codalab_scaler.config.settings import (
    AwsBatchBackendSettings,
    LocalBackendSettings,
    PoolSettings,
    SlurmBatchBackendSettings,
)
from codalab_scaler.sources.backends.base import Backend, WorkerCredentials

__all__ = ["Backend", "WorkerCredentials", "create_backend"]


def create_backend(
    pool: str, settings: PoolSettings, server: str, credentials: WorkerCredentials
) -> Backend:
    """Build the backend a pool's settings name.

    ``credentials`` are what a worker needs to reach CodaLab; each backend
    decides how to hand them over safely.
    """
    backend = settings.backend
    options = settings.worker_options(server)
    if isinstance(backend, LocalBackendSettings):
        from codalab_scaler.sources.backends.local import LocalBackend

        return LocalBackend(pool, options, backend.state_dir, env=credentials.env())
    if isinstance(backend, AwsBatchBackendSettings):
        from codalab_scaler.sources.backends.aws_batch import AwsBatchBackend

        return AwsBatchBackend(pool, options, backend, credentials)
    if isinstance(backend, SlurmBatchBackendSettings):
        from codalab_scaler.sources.backends.slurm import SlurmBatchBackend

        return SlurmBatchBackend(pool, options, backend, credentials)
    raise AssertionError(f"no backend for {backend!r}")  # pragma: no cover - settings validated
