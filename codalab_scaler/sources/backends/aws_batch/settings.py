"""Settings of the ``aws-batch`` backend; imports no AWS SDK.

``--help`` and config validation read this module without importing boto.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from codalab_scaler.sources.backends.base import StrictModel

IMAGE_REPOSITORY = "codalab/worker"


def image_default(environ: Mapping[str, str]) -> str:
    """``codalab/worker:$CODALAB_VERSION``, the tag CodaLab's own deployment runs."""
    return f"{IMAGE_REPOSITORY}:{environ.get('CODALAB_VERSION', 'latest')}"


def environ_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """The defaults that depend on the environment the loader was given."""
    return {"image": image_default(environ)}


class AwsBatchBackendSettings(StrictModel):
    """Workers as AWS Batch jobs (subcommand ``aws-batch``).

    Job names are ``<job_name_prefix>-<pool>-<worker id>`` (at most 128
    characters: the prefix is kept short enough for the longest pool name).
    """

    kind: Literal["aws-batch"] = Field(default="aws-batch", description="Backend kind.")
    region: str = Field(
        default="us-east-1",
        description="AWS region the job queue lives in. us-east-1: the original's default.",
    )
    job_definition_name: str = Field(
        default="codalab-worker",
        description="Name of the job definition this scaler registers (a new revision only "
        "when its content changes). codalab-worker: the original's default.",
    )
    cpus: PositiveInt = Field(
        default=1,
        description="vCPUs each worker job requests, a count. 1: the original's default.",
    )
    gpus: NonNegativeInt = Field(
        default=0,
        description="GPUs each worker job requests, a count. 0: the original's default "
        "(a CPU queue).",
    )
    memory_mb: PositiveInt = Field(
        default=2048,
        description="Memory each worker job requests, in MiB. 2048: the original's default.",
    )
    user: str = Field(
        default="root",
        description="User the worker container runs as. root: the original's default, "
        "which the worker image needs to start its run containers.",
    )
    job_queue: str = Field(
        default="codalab-batch-cpu",
        description="AWS Batch job queue jobs are submitted to and listed from. "
        "codalab-batch-cpu: the original's default.",
    )
    job_filter: str | None = Field(
        default=None,
        description="Regular expression; count only this pool's jobs whose names fully match. "
        "Unset: every job this pool named counts, which is what one scaler per queue wants.",
    )
    job_name_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,29}$")] = Field(
        default="codalab-scaler",
        description="Jobs are named <prefix>-<pool>-<worker id>; at most 30 characters so "
        "that the name stays within Batch's 128. Scalers sharing a queue need different "
        "prefixes.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="AWS Batch endpoint URL. Unset: the region's own endpoint; set it for "
        "a VPC endpoint or a local stand-in.",
    )
    image: str = Field(
        default_factory=lambda: image_default({}),
        description="Worker container image. Default: codalab/worker:$CODALAB_VERSION "
        "(latest when unset), the tag CodaLab's own deployment runs.",
    )
    password_secret_arn: str | None = Field(
        default=None,
        description="Secrets Manager or SSM parameter ARN holding the worker's CodaLab "
        "password, injected by Batch at start. Required unless allow_plaintext_password: "
        "a password must not sit in job overrides by default.",
    )
    allow_plaintext_password: bool = Field(
        default=False,
        description="Without password_secret_arn, put the password in each job's overrides "
        "(visible to anyone who can describe jobs). Off: insecure, so opt in.",
    )
    execution_role_arn: str | None = Field(
        default=None,
        description="IAM role AWS Batch uses to read password_secret_arn. Unset: the "
        "compute environment's role, enough when it may read the secret.",
    )
    connect_timeout_seconds: PositiveFloat = Field(
        default=10,
        description="Connect timeout of one AWS request, in seconds. 10: generous for a "
        "regional endpoint while a poll still ends well within the retry budget.",
    )
    read_timeout_seconds: PositiveFloat = Field(
        default=30,
        description="Read timeout of one AWS request, in seconds. 30: as the CodaLab "
        "request timeout; Batch list calls answer in well under a second.",
    )

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
