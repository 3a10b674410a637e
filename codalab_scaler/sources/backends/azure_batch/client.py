"""The async ``BatchClient`` (azure-batch >= 15, API 2025-06-01), configured on purpose.

azure-core's own retries are off (``retry_total=0``) so the scaler's
tenacity policy is the only retry layer (it honours ``Retry-After``);
connect and read timeouts bound each request.  Shared key signs each
request with ``AzureNamedKeyCredential`` (the SDK's SharedKey policy);
Entra ID takes a token from azure-identity's default chain.  The SDK's
loggers are held at WARNING: its HTTP logging policy would log every
request's URL and headers at INFO.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from codalab_scaler.core.errors import ConfigError
from codalab_scaler.sources.backends.azure_batch.settings import (
    AzureBatchBackendSettings,
    check_account_key,
)

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential


def read_account_key(path: Path) -> str:
    """The key in ``path`` (owner-only), checked; ``ConfigError`` naming the field otherwise."""
    absolute = path.expanduser().resolve()
    try:
        mode = stat.S_IMODE(absolute.stat().st_mode)
        key = absolute.read_text().strip()
    except OSError as exc:
        raise ConfigError([f"account_key_file: cannot read {absolute} ({exc.strerror})"]) from None
    if mode & 0o077:
        raise ConfigError(
            [
                (
                    f"account_key_file: {absolute} has mode {mode:04o}; it holds the Batch "
                    f"account key, so only its owner may read it (chmod 600 {absolute})"
                )
            ]
        )
    try:
        check_account_key(key)
    except ValueError as exc:
        raise ConfigError([f"account_key_file: {absolute}: {exc}"]) from None
    return key


def shared_key(settings: AzureBatchBackendSettings) -> AzureNamedKeyCredential | None:
    """The shared-key credential, or None for Entra ID."""
    if settings.auth != "shared-key":
        return None
    if settings.account_key is not None:
        key = settings.account_key.get_secret_value().strip()
    else:
        assert settings.account_key_file is not None  # noqa: S101 - the settings model checked it
        key = read_account_key(settings.account_key_file)
    return AzureNamedKeyCredential(settings.account_name, key)


def entra_id_credential() -> AsyncTokenCredential:
    """azure-identity's default chain (environment, workload or managed identity, CLI)."""
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError:
        raise ConfigError(
            ["auth: entra-id needs azure-identity (pip install 'codalab-scaler[entra-id]')"]
        ) from None
    return DefaultAzureCredential()


def create_client(
    settings: AzureBatchBackendSettings,
    credential: AzureNamedKeyCredential | AsyncTokenCredential,
) -> BatchClient:
    options: dict[str, Any] = {
        "retry_total": 0,
        "connection_timeout": settings.connect_timeout_seconds,
        "read_timeout": settings.read_timeout_seconds,
        "logging_enable": False,
    }
    return BatchClient(settings.service_url, credential, **options)


def quiet_sdk_logs() -> None:
    logger = logging.getLogger("azure")
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
