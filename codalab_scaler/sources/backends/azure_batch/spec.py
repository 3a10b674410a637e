"""What this backend asks of Azure Batch, as plain data in the REST API's JSON shape.

Nothing here does I/O, so each request can be checked as a value and shown
by a dry run.

* Task ids are ``<task_id_prefix>-<pool>-<worker_id>``.  A task counts for a
  pool when its id starts with that pool's stem and the rest is a worker id
  (letters, digits, ``_``: no ``-``), so pool ``a`` never counts the tasks
  of pool ``a-b``.  The listing asks Batch for the stem with ``$filter``.
* A task runs the ``codalab/worker`` image with the original's container
  run options (``--cpus``, ``--memory``, Docker's socket and the worker's
  work dir mounted, ``--user``) and uploads ``stderr.txt`` to the log
  container when it completes.
* The worker's password never travels in the task: the operator's file on
  the node is mounted read-only and named by ``--password-file``.  Only
  with ``allow_plaintext_password`` does it go into the task's
  environment settings.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from codalab_scaler.core.worker_command import (
    WorkerOptions,
    build_command,
    shell_word,
    work_dir_for,
)
from codalab_scaler.sources.backends.base import PASSWORD_ENV, USERNAME_ENV

WORKER_ID = re.compile(r"[A-Za-z0-9_]{1,64}")
MAX_TASK_ID = 64  # Batch's limit on a task id
PENDING_STATES = ("active", "preparing")
ACTIVE_STATES = ("running",)
COMPLETED = "completed"
LISTED_PROPERTIES = ("id", "state", "executionInfo")
REDACTED = "[redacted]"
DOCKER_SOCKET = "/var/run/docker.sock"
LOG_FILE_PATTERN = "../stderr.txt"  # the task's stderr, next to its working directory


@dataclass(frozen=True, slots=True)
class TaskIds:
    """The task ids of one pool: ``<prefix>-<pool>-<worker_id>``."""

    prefix: str
    pool: str

    @property
    def stem(self) -> str:
        return f"{self.prefix}-{self.pool}-"

    def task_id(self, worker_id: str) -> str:
        return self.stem + worker_id

    def worker_id(self, task_id: str) -> str | None:
        """The worker id if ``task_id`` is one of this pool's tasks, else None."""
        if not task_id.startswith(self.stem):
            return None
        rest = task_id[len(self.stem) :]
        return rest if WORKER_ID.fullmatch(rest) else None

    def live_filter(self) -> str:
        """The ``$filter`` of this pool's tasks that have not completed."""
        states = " or ".join(f"state eq '{state}'" for state in (*PENDING_STATES, *ACTIVE_STATES))
        return f"startswith(id,'{self.stem}') and ({states})"


@dataclass(frozen=True, slots=True)
class TaskInputs:
    """The backend settings that shape every task of a pool."""

    image: str
    cpus: int
    gpus: int
    memory_mb: int
    user: str
    log_container_url: str
    log_container_identity: str | None
    worker_password_file: str | None


def command_line(options: WorkerOptions, worker_id: str, password_file: str | None) -> str:
    """``/bin/bash -c '<cl-worker argv>'``, as the original (Batch runs no shell itself)."""
    argv = build_command(options, worker_id, work_dir_for(options, worker_id))
    if password_file is not None:
        argv += ["--password-file", password_file]
    script = "exec " + " ".join(shell_word(arg) for arg in argv)
    return f"/bin/bash -c {shlex.quote(script)}"


def container_run_options(inputs: TaskInputs, work_dir: str) -> str:
    """The original's ``docker run`` options, plus the password file mounted read-only."""
    options = [
        f"--cpus {inputs.cpus}",
        f"--memory {inputs.memory_mb}M",
        f"--volume {DOCKER_SOCKET}:{DOCKER_SOCKET}",
        f"--volume {shlex.quote(work_dir)}:{shlex.quote(work_dir)}",
        f"--user {shlex.quote(inputs.user)}",
    ]
    if inputs.gpus:
        options.append(f"--gpus {inputs.gpus}")
    if inputs.worker_password_file is not None:
        path = inputs.worker_password_file
        options.append(f"--volume {path}:{path}:ro")
    return " ".join(options)


def create_task_request(
    ids: TaskIds,
    options: WorkerOptions,
    inputs: TaskInputs,
    worker_id: str,
    *,
    username: str,
    plaintext_password: str | None,
) -> dict[str, Any]:
    """The body of ``POST /jobs/{jobId}/tasks`` for one worker (``BatchTaskCreateOptions``)."""
    task_id = ids.task_id(worker_id)
    work_dir = work_dir_for(options, worker_id)
    container: dict[str, Any] = {"containerUrl": inputs.log_container_url, "path": task_id}
    if inputs.log_container_identity is not None:
        container["identityReference"] = {"resourceId": inputs.log_container_identity}
    request: dict[str, Any] = {
        "id": task_id,
        "displayName": f"codalab worker {worker_id} of pool {ids.pool}",
        "commandLine": command_line(options, worker_id, inputs.worker_password_file),
        "containerSettings": {
            "imageName": inputs.image,
            "containerRunOptions": container_run_options(inputs, work_dir),
        },
        "outputFiles": [
            {
                "filePattern": LOG_FILE_PATTERN,
                "destination": {"container": container},
                "uploadOptions": {"uploadCondition": "taskcompletion"},
            }
        ],
        # A worker that fails is counted and reported by the scaler, not rerun by Batch.
        "constraints": {"maxTaskRetryCount": 0},
    }
    if plaintext_password is not None:
        request["environmentSettings"] = [
            {"name": USERNAME_ENV, "value": username},
            {"name": PASSWORD_ENV, "value": plaintext_password},
        ]
    return request


def redact_url(url: str) -> str:
    """``url`` without its query (a SAS token is a credential), for logs and dry runs."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=REDACTED if parts.query else ""))


def redacted(request: dict[str, Any]) -> dict[str, Any]:
    """A copy of a create-task body safe to show: no password, no SAS token."""
    shown = dict(request)
    if "environmentSettings" in shown:
        shown["environmentSettings"] = [
            {**item, "value": REDACTED} if item["name"] == PASSWORD_ENV else item
            for item in shown["environmentSettings"]
        ]
    files = []
    for output in shown.get("outputFiles", []):
        container = output["destination"]["container"]
        safe = {**container, "containerUrl": redact_url(container["containerUrl"])}
        files.append({**output, "destination": {"container": safe}})
    shown["outputFiles"] = files
    return shown


def failure_reason(task: dict[str, Any]) -> str | None:
    """Why a completed task counts as a failed start, or None if it ended cleanly.

    A failure info (image pull, container start, upload...) or a non-zero
    exit code is a failure; exit code 0 (idle exit) is the worker's normal end.
    """
    info = task.get("executionInfo") or {}
    failure = info.get("failureInfo")
    exit_code = info.get("exitCode")
    if failure:
        code = failure.get("code") or failure.get("category") or "failure"
        message = failure.get("message")
        reason = f"{code}: {message}" if message else str(code)
        return reason if exit_code is None else f"{reason} (exit code {exit_code})"
    if exit_code not in (None, 0):
        return f"exit code {exit_code}"
    return None
