"""Settings of the ``azure-batch`` backend; imports no Azure SDK.

``--help`` and config validation read this module without importing azure.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)

from codalab_scaler.sources.backends.base import StrictModel

IMAGE_REPOSITORY = "codalab/worker"
# The names the Azure CLI reads (``az batch``), so an operator's shell already has them.
ACCOUNT_VARIABLE = "AZURE_BATCH_ACCOUNT"
KEY_VARIABLE = "AZURE_BATCH_ACCESS_KEY"
ENDPOINT_VARIABLE = "AZURE_BATCH_ENDPOINT"


def image_default(environ: Mapping[str, str]) -> str:
    """``codalab/worker:$CODALAB_VERSION``, the image the original ran."""
    return f"{IMAGE_REPOSITORY}:{environ.get('CODALAB_VERSION', 'latest')}"


def environ_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """The defaults that depend on the environment the loader was given."""
    defaults: dict[str, Any] = {"image": image_default(environ)}
    for key, variable in (
        ("account_name", ACCOUNT_VARIABLE),
        ("account_key", KEY_VARIABLE),
        ("service_url", ENDPOINT_VARIABLE),
    ):
        if environ.get(variable):
            defaults[key] = environ[variable]
    return defaults


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return value


class AzureBatchBackendSettings(StrictModel):
    """Workers as Azure Batch tasks of one job (subcommand ``azure-batch``).

    Task ids are ``<task_id_prefix>-<pool>-<worker id>`` (at most 64
    characters, checked when the pool opens).
    """

    kind: Literal["azure-batch"] = Field(default="azure-batch", description="Backend kind.")
    account_name: str = Field(
        description="Azure Batch account name. No default (required by the original too); "
        "also from AZURE_BATCH_ACCOUNT.",
    )
    account_key: SecretStr | None = Field(
        default=None,
        description="Azure Batch account key (shared key); never logged. Prefer "
        "AZURE_BATCH_ACCESS_KEY or account_key_file: a flag is visible to every local user.",
    )
    account_key_file: Path | None = Field(
        default=None,
        description="File holding the account key (mode 0600, surrounding blanks ignored). "
        "Unset: account_key.",
    )
    auth: Literal["shared-key", "entra-id"] = Field(
        default="shared-key",
        description="How the scaler signs in to Batch: shared-key (account_key, the "
        "original's way) or entra-id (Microsoft Entra ID through azure-identity's default "
        "credential chain: environment, workload or managed identity, Azure CLI).",
    )
    service_url: str = Field(
        description="Azure Batch service URL (https://<account>.<region>.batch.azure.com). "
        "No default (required by the original too); also from AZURE_BATCH_ENDPOINT.",
    )
    log_container_url: str = Field(
        description="URL of the Azure Storage blob container each worker's stderr.txt is "
        "uploaded to when its task completes, under <task id>/. No default (required by "
        "the original too). A SAS token in it is stored in every task: prefer "
        "log_container_identity.",
    )
    log_container_identity: str | None = Field(
        default=None,
        description="ARM resource id of a user-assigned managed identity of the pool that "
        "may write to log_container_url. Unset: the URL must carry a SAS token.",
    )
    job_id: str = Field(
        description="ID of the Azure Batch job tasks are added to and listed from. "
        "No default (required by the original too).",
    )
    cpus: PositiveInt = Field(
        default=1,
        description="CPUs each worker container may use (docker --cpus), a count. "
        "1: the original's default.",
    )
    gpus: NonNegativeInt = Field(
        default=0,
        description="GPUs each worker container gets (docker --gpus), a count. 0: the "
        "original's default (a CPU pool).",
    )
    memory_mb: PositiveInt = Field(
        default=2048,
        description="Memory each worker container may use (docker --memory), in MiB. "
        "2048: the original's default.",
    )
    user: str = Field(
        default="root",
        description="User the worker container runs as (docker --user). root: the "
        "original's default, which the worker image needs to start its run containers.",
    )
    image: str = Field(
        default_factory=lambda: image_default({}),
        description="Worker container image. Default: codalab/worker:$CODALAB_VERSION "
        "(latest when unset), as the original.",
    )
    task_id_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")] = Field(
        default="codalab-scaler",
        description="Task ids are <prefix>-<pool>-<worker id>, which is how this scaler "
        "finds its own tasks again; at most 20 characters. Scalers sharing a job need "
        "different prefixes.",
    )
    worker_password_file: str | None = Field(
        default=None,
        description="Absolute path, on the pool's nodes, of a file with the worker's CodaLab "
        "username on line 1 and password on line 2, provisioned by the operator (a start "
        "task, Key Vault extension...); mounted read-only into each worker, which reads it "
        "with --password-file. Required unless allow_plaintext_password.",
    )
    allow_plaintext_password: bool = Field(
        default=False,
        description="Without worker_password_file, put the password in each task's "
        "environment settings (readable by anyone who may read the job's tasks). "
        "Off: insecure, so opt in.",
    )
    connect_timeout_seconds: PositiveFloat = Field(
        default=10,
        description="Connect timeout of one Batch request, in seconds. 10: generous for a "
        "regional endpoint while a poll still ends well within the retry budget.",
    )
    read_timeout_seconds: PositiveFloat = Field(
        default=30,
        description="Read timeout of one Batch request, in seconds. 30: the service's own "
        "default time limit for one operation.",
    )

    @field_validator("service_url", "log_container_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("account_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_account_key(value.get_secret_value())
        return value

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, value: str) -> str:
        if not value or len(value) > 64 or not all(c.isalnum() or c in "-_" for c in value):  # noqa: PLR2004 - Batch's documented limit
            raise ValueError("must be 1-64 letters, digits, '-' or '_'")
        return value

    @field_validator("worker_password_file")
    @classmethod
    def _node_path(cls, value: str | None) -> str | None:
        if value is not None and (not posixpath.isabs(value) or "'" in value or " " in value):
            raise ValueError("must be an absolute path on the pool's nodes, without blanks")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> AzureBatchBackendSettings:
        if self.auth == "shared-key" and (self.account_key is None) == (
            self.account_key_file is None
        ):
            raise ValueError(
                "account_key: give exactly one of account_key (or AZURE_BATCH_ACCESS_KEY) and "
                "account_key_file for auth shared-key"
            )
        if self.auth == "entra-id" and (self.account_key or self.account_key_file):
            raise ValueError("account_key: not used with auth entra-id; leave it unset")
        if self.auth == "entra-id" and not self.service_url.startswith("https://"):
            raise ValueError("service_url: auth entra-id sends tokens over https only")
        if self.worker_password_file is None and not self.allow_plaintext_password:
            raise ValueError(
                "worker_password_file: required (a file on the pool's nodes); "
                "allow_plaintext_password puts the password in each task's environment instead"
            )
        return self


def check_account_key(key: str) -> bytes:
    """The key's bytes; ``ValueError`` (never showing the key) unless it is base64."""
    try:
        decoded = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a base64 account key (as the Azure portal shows it)") from None
    if not decoded:
        raise ValueError("empty account key")
    return decoded
