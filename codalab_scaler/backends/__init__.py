"""Backends and the explicit factory that picks one per pool (no plugin magic)."""

from __future__ import annotations

from collections.abc import Mapping

from codalab_scaler.backends.base import Backend
from codalab_scaler.settings import LocalBackendSettings, PoolSettings

__all__ = ["Backend", "create_backend"]


def create_backend(
    pool: str, settings: PoolSettings, server: str, worker_env: Mapping[str, str]
) -> Backend:
    """Build the backend a pool's settings name.

    ``worker_env`` is the environment a worker needs to reach CodaLab
    (credentials); each backend decides how to hand it over safely.
    """
    backend = settings.backend
    options = settings.worker_options(server)
    if isinstance(backend, LocalBackendSettings):
        from codalab_scaler.backends.local import LocalBackend

        return LocalBackend(pool, options, backend.state_dir, env=worker_env)
    raise AssertionError(f"no backend for {backend!r}")  # pragma: no cover - settings validated
