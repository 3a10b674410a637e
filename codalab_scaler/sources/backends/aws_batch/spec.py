"""What this backend asks of AWS Batch, as plain data: job names, the job definition, a submit.

Nothing here does I/O, so each request can be checked as a value and shown
by a dry run.

* Job names are ``<job_name_prefix>-<pool>-<worker_id>``.  A job counts for
  a pool when its name starts with that pool's prefix and the rest is a
  worker id (letters, digits, ``_``: no ``-``), so pool ``a`` never counts
  the jobs of pool ``a-b`` or of another deployment's prefix.
* The job definition holds what is the same for every worker (image, shape,
  user, mounts, the password *reference*); it is registered under
  ``job_definition_name`` with a tag carrying a fingerprint of those
  properties, so any scaler process can find and reuse a revision it or an
  earlier process registered.
* What differs per worker travels in ``containerOverrides``: the command
  (worker id and work dir) and, only with ``allow_plaintext_password``, the
  password.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from codalab_scaler.core.worker_command import (
    DEFAULT_WORK_DIR_PREFIX,
    WorkerOptions,
    build_command,
    shell_word,
    work_dir_for,
)
from codalab_scaler.sources.backends.base import PASSWORD_ENV, USERNAME_ENV

PENDING_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING")
ACTIVE_STATUSES = ("RUNNING",)
SPEC_TAG = "codalab-scaler:spec"
POOL_TAG = "codalab-scaler:pool"
WORKER_TAG = "codalab-scaler:worker-id"
SCALER_TAG = "codalab-scaler:scaler"
REDACTED = "[redacted]"
DOCKER_SOCKET = "/var/run/docker.sock"
# The codalab/worker image's spot-interruption watcher, started as the original does (if present).
SPOT_WATCHER = "/opt/scripts/detect-ec2-spot-preemption.sh"
WORKER_ID = re.compile(r"[A-Za-z0-9_]{1,64}")


@dataclass(frozen=True, slots=True)
class JobNames:
    """The job names of one pool: ``<prefix>-<pool>-<worker_id>``."""

    prefix: str
    pool: str

    @property
    def stem(self) -> str:
        return f"{self.prefix}-{self.pool}-"

    def name(self, worker_id: str) -> str:
        return self.stem + worker_id

    def worker_id(self, job_name: str) -> str | None:
        """The worker id if ``job_name`` is one of this pool's jobs, else None."""
        if not job_name.startswith(self.stem):
            return None
        rest = job_name[len(self.stem) :]
        return rest if WORKER_ID.fullmatch(rest) else None


def container_command(options: WorkerOptions, worker_id: str) -> list[str]:
    """The worker's argv, run by bash (the image's spot watcher first, as the original)."""
    argv = build_command(options, worker_id, work_dir_for(options, worker_id))
    script = (
        f"if [ -x {SPOT_WATCHER} ]; then {SPOT_WATCHER} & fi\n"
        f"exec {' '.join(shell_word(arg) for arg in argv)}"
    )
    return ["/bin/bash", "-c", script]


def work_dir_prefix(options: WorkerOptions) -> str:
    """The host directory mounted into every job (same path inside), normalised."""
    return os.path.normpath(options.work_dir_prefix or DEFAULT_WORK_DIR_PREFIX)


@dataclass(frozen=True, slots=True)
class DefinitionInputs:
    """Everything the job definition is made of (the backend settings that shape the container)."""

    name: str
    image: str
    cpus: int
    gpus: int
    memory_mb: int
    user: str
    username: str
    work_dir_prefix: str
    password_secret_arn: str | None
    execution_role_arn: str | None


def definition_request(inputs: DefinitionInputs) -> dict[str, Any]:
    """The ``register_job_definition`` request, tagged with the fingerprint of its properties.

    Docker's socket is mounted so the worker can start run containers; the
    work-dir prefix is mounted at the same path, because the worker hands
    paths under its work dir to Docker on the host (volumes cannot be
    overridden per job, so each worker's own dir lives under the prefix).
    """
    resources = [
        {"type": "VCPU", "value": str(inputs.cpus)},
        {"type": "MEMORY", "value": str(inputs.memory_mb)},
    ]
    if inputs.gpus:
        resources.append({"type": "GPU", "value": str(inputs.gpus)})
    container: dict[str, Any] = {
        "image": inputs.image,
        "resourceRequirements": resources,
        "environment": [{"name": USERNAME_ENV, "value": inputs.username}],
        "volumes": [
            {"name": "docker_socket", "host": {"sourcePath": DOCKER_SOCKET}},
            {"name": "work_dir_prefix", "host": {"sourcePath": inputs.work_dir_prefix}},
        ],
        "mountPoints": [
            {"sourceVolume": "docker_socket", "containerPath": DOCKER_SOCKET, "readOnly": False},
            {
                "sourceVolume": "work_dir_prefix",
                "containerPath": inputs.work_dir_prefix,
                "readOnly": False,
            },
        ],
        "readonlyRootFilesystem": False,
        "user": inputs.user,
    }
    if inputs.password_secret_arn is not None:
        container["secrets"] = [{"name": PASSWORD_ENV, "valueFrom": inputs.password_secret_arn}]
    if inputs.execution_role_arn is not None:
        container["executionRoleArn"] = inputs.execution_role_arn
    request: dict[str, Any] = {
        "jobDefinitionName": inputs.name,
        "type": "container",
        "containerProperties": container,
        "retryStrategy": {"attempts": 1},
    }
    request["tags"] = {SPEC_TAG: fingerprint(request)}
    return request


def fingerprint(request: Mapping[str, Any]) -> str:
    """A short digest of a definition's properties (tags left out)."""
    body = {k: v for k, v in request.items() if k != "tags"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def contains(actual: Any, wanted: Any) -> bool:
    """``actual`` (as AWS describes it) has every property of ``wanted`` (what we register).

    AWS adds defaults of its own (``ulimits: []``, ``command: []``...), so
    extra keys are fine; lists must match element by element.
    """
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and contains(actual[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)


def matching_revision(
    revisions: Sequence[Mapping[str, Any]], wanted: Mapping[str, Any]
) -> str | None:
    """The ARN of the newest ACTIVE revision with exactly ``wanted``'s properties, if any."""
    tag = wanted["tags"][SPEC_TAG]
    body = {k: v for k, v in wanted.items() if k not in ("tags", "jobDefinitionName")}
    best: tuple[int, str] | None = None
    for revision in revisions:
        if revision.get("status", "ACTIVE") != "ACTIVE":
            continue
        if (revision.get("tags") or {}).get(SPEC_TAG) != tag or not contains(revision, body):
            continue
        number = int(revision.get("revision", 0))
        if best is None or number > best[0]:
            best = (number, str(revision["jobDefinitionArn"]))
    return None if best is None else best[1]


def submit_request(
    names: JobNames,
    options: WorkerOptions,
    worker_id: str,
    *,
    queue: str,
    definition: str,
    plaintext_password: str | None,
) -> dict[str, Any]:
    """The ``submit_job`` request of one worker (the password only in plaintext mode)."""
    overrides: dict[str, Any] = {"command": container_command(options, worker_id)}
    if plaintext_password is not None:
        overrides["environment"] = [{"name": PASSWORD_ENV, "value": plaintext_password}]
    return {
        "jobName": names.name(worker_id),
        "jobQueue": queue,
        "jobDefinition": definition,
        "containerOverrides": overrides,
        "tags": {POOL_TAG: names.pool, WORKER_TAG: worker_id, SCALER_TAG: names.prefix},
    }
