"""Backends and the seam the service opens them through (no plugin magic).

``open_backend`` is an async context manager: the service enters it in its
lifecycle and leaves it on every exit path; leaving releases clients and
connections while the workers keep running.  The kind is looked up in
``registry.BACKEND_KINDS``; its backend module is imported only when a pool
uses it, so a deployment of one backend does not need the others' libraries
to start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from codalab_scaler.core.worker_command import WorkerOptions
from codalab_scaler.sources.backends.base import Backend, WorkerCredentials
from codalab_scaler.sources.backends.registry import BackendSettings, backend_kind

__all__ = ["Backend", "WorkerCredentials", "open_backend"]


@asynccontextmanager
async def open_backend(
    pool: str, settings: BackendSettings, options: WorkerOptions, credentials: WorkerCredentials
) -> AsyncIterator[Backend]:
    """Open the backend ``settings`` name for ``pool``; leaving closes it (workers keep running)."""
    opener = backend_kind(settings.kind).opener()
    async with opener(pool, settings, options, credentials) as backend:
        yield backend
