"""The aiobotocore Batch client, configured on purpose.

botocore's own retries are off (``total_max_attempts=1``: the first attempt
only) so the scaler's tenacity policy is the only retry layer; connect and
read timeouts bound each HTTP request.  Credentials come from botocore's
standard chain (environment, profile, instance or task role).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.session import ClientCreatorContext, get_session

from codalab_scaler.sources.backends.aws_batch.settings import AwsBatchBackendSettings

if TYPE_CHECKING:
    from types_aiobotocore_batch import BatchClient


def client_config(settings: AwsBatchBackendSettings) -> AioConfig:
    return AioConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
    )


def create_client(settings: AwsBatchBackendSettings) -> ClientCreatorContext[BatchClient]:
    """An async context manager that opens (and on exit closes) a Batch client."""
    return get_session().create_client(
        "batch",
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        config=client_config(settings),
    )


def quiet_sdk_debug_logs() -> None:
    """Botocore logs every request's parameters at DEBUG, containerOverrides included."""
    for name in ("botocore", "aiobotocore"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
