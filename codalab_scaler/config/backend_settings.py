"""Each backend's settings (``pools.<name>.backend``), told apart by ``kind``.

Defaults are the original ``cl-worker-manager`` subcommands' where it had
the flag.  A backend's settings name only what that backend needs; the
worker command itself comes from the pool settings.
"""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "codalab-scaler"


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER (some containers)
        return ""


class StrictModel(BaseModel):
    """Settings that reject unknown keys and never change once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalBackendSettings(StrictModel):
    """Workers as child processes of the scaler (the embedded default)."""

    kind: Literal["local"] = "local"
    cpus: PositiveInt = 1
    gpus: NonNegativeInt = 0
    memory_mb: PositiveInt = 2048
    state_dir: Path = Field(default_factory=default_state_dir)


class AwsBatchBackendSettings(StrictModel):
    """Workers as AWS Batch jobs (subcommand ``aws-batch``).

    Job names are ``<job_name_prefix>-<pool>-<worker id>`` (at most 128
    characters: the prefix is kept short enough for the longest pool name).
    """

    kind: Literal["aws-batch"] = "aws-batch"
    region: str = "us-east-1"
    job_definition_name: str = "codalab-worker"
    cpus: PositiveInt = 1
    gpus: NonNegativeInt = 0
    memory_mb: PositiveInt = 2048
    user: str = "root"
    job_queue: str = "codalab-batch-cpu"
    job_filter: str | None = None
    job_name_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,29}$")] = (
        "codalab-scaler"
    )
    endpoint_url: str | None = None
    image: str = Field(
        default_factory=lambda: "codalab/worker:" + os.environ.get("CODALAB_VERSION", "latest")
    )
    password_secret_arn: str | None = None
    allow_plaintext_password: bool = False
    execution_role_arn: str | None = None
    connect_timeout_seconds: PositiveFloat = 10
    read_timeout_seconds: PositiveFloat = 30

    @field_validator("job_definition_name")
    @classmethod
    def _definition_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", value):
            raise ValueError("must be 1-128 letters, digits, '-' or '_', starting alphanumeric")
        return value

    @field_validator("job_filter")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc})") from None
        return value

    @model_validator(mode="after")
    def _password_handover(self) -> AwsBatchBackendSettings:
        if self.password_secret_arn is None and not self.allow_plaintext_password:
            raise ValueError(
                "password_secret_arn: required (a Secrets Manager or SSM parameter ARN); "
                "allow_plaintext_password puts the password in each job's overrides instead"
            )
        return self


_SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # job-name parts, shell- and squeue-safe
_SLURM_VALUE = re.compile(r"[^\s'\"\\]+")  # one #SBATCH value: no blanks, quotes or backslashes


class SlurmBatchBackendSettings(StrictModel):
    """Workers as Slurm batch jobs (subcommand ``slurm-batch``)."""

    kind: Literal["slurm-batch"] = "slurm-batch"
    partition: str
    job_name: str = "codalab-slurm-worker"
    nodelist: str = ""
    exclude: str = ""
    cpus: PositiveInt = 1
    gpus: NonNegativeInt = 1
    gpu_type: str | None = None
    constraint: str | None = None
    memory_mb: PositiveInt = 2048
    time: str = "10-0"
    account: str | None = None
    user: str = Field(default_factory=current_user)
    slurm_work_dir: Path = Path("slurm-worker-scratch")
    command_timeout_seconds: PositiveFloat = 20

    @field_validator("job_name")
    @classmethod
    def _job_name(cls, value: str) -> str:
        if not _SLURM_NAME.fullmatch(value):
            raise ValueError(f"must match {_SLURM_NAME.pattern} (it starts every job's name)")
        return value

    @field_validator(
        "partition", "nodelist", "exclude", "gpu_type", "constraint", "time", "account"
    )
    @classmethod
    def _sbatch_value(cls, value: str | None) -> str | None:
        if value and not _SLURM_VALUE.fullmatch(value):
            raise ValueError("must not contain blanks, quotes or backslashes (an #SBATCH value)")
        return value

    @field_validator("partition")
    @classmethod
    def _partition(cls, value: str) -> str:
        if not value:
            raise ValueError("must name a Slurm partition")
        return value


BackendSettings = Annotated[
    LocalBackendSettings | AwsBatchBackendSettings | SlurmBatchBackendSettings,
    Field(discriminator="kind"),
]
