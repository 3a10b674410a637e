"""Settings of the ``slurm-batch`` backend; imports no process machinery."""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from codalab_scaler.sources.backends.base import StrictModel

_SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # job-name parts, shell- and squeue-safe
_SLURM_VALUE = re.compile(r"[^\s'\"\\]+")  # one #SBATCH value: no blanks, quotes or backslashes
_LOGIN_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")  # as getpass.getuser reads them


def current_user(environ: Mapping[str, str]) -> str:
    """The login name, as ``getpass.getuser()`` finds it, from ``environ`` then the account.

    Empty when neither knows (a container without a passwd entry).
    """
    for name in _LOGIN_VARIABLES:
        if environ.get(name):
            return environ[name]
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return ""


def environ_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """The defaults that depend on the environment the loader was given."""
    return {"user": current_user(environ)}


class SlurmBatchBackendSettings(StrictModel):
    """Workers as Slurm batch jobs (subcommand ``slurm-batch``)."""

    kind: Literal["slurm-batch"] = Field(default="slurm-batch", description="Backend kind.")
    partition: str = Field(
        description="Slurm partition jobs are submitted to and listed in. No default: a "
        "cluster has no partition that is right for everyone.",
    )
    job_name: str = Field(
        default="codalab-slurm-worker",
        description="Job names start <user>-<job_name>-<pool>-, which is how this scaler "
        "finds its own jobs again. codalab-slurm-worker: the original's default.",
    )
    nodelist: str = Field(
        default="",
        description="Nodes to run jobs on (sbatch --nodelist). Empty: any node of the "
        "partition, the original's default.",
    )
    exclude: str = Field(
        default="",
        description="Comma-separated nodes never to run jobs on (sbatch --exclude). "
        "Empty: none, the original's default.",
    )
    cpus: PositiveInt = Field(
        default=1,
        description="CPUs each worker job requests, a count. 1: the original's default.",
    )
    gpus: NonNegativeInt = Field(
        default=1,
        description="GPUs each worker job requests, a count. 1: the original's default for "
        "slurm-batch; set 0 for a CPU partition.",
    )
    gpu_type: str | None = Field(
        default=None,
        description="GPU type to request (--gres=gpu:<type>:<n>). Unset: any GPU.",
    )
    constraint: str | None = Field(
        default=None,
        description="Node features to require (sbatch --constraint). Unset: none.",
    )
    memory_mb: PositiveInt = Field(
        default=2048,
        description="Memory each worker job requests, in MiB. 2048: the original's default.",
    )
    time: str = Field(
        default="10-0",
        description="Time limit of each job, in Slurm's format (days-hours). 10-0: the "
        "original's default; a worker that exits when idle rarely reaches it.",
    )
    account: str | None = Field(
        default=None,
        description="Slurm account to charge (sbatch --account). Unset: the user's default.",
    )
    user: str = Field(
        default_factory=lambda: current_user({}),
        description="Slurm user whose jobs are listed; must be the user the scaler runs as. "
        "Default: the current login name ($LOGNAME, $USER...), as the original.",
    )
    slurm_work_dir: Path = Field(
        default=Path("slurm-worker-scratch"),
        description="Directory for batch scripts and job logs, on a file system the "
        "compute nodes share. slurm-worker-scratch (relative to the working directory): "
        "the original's default.",
    )
    command_timeout_seconds: PositiveFloat = Field(
        default=20,
        description="Timeout of one sbatch, squeue or scancel call, in seconds. 20: a busy "
        "controller answers within seconds; longer means it is down, so try again later.",
    )

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
