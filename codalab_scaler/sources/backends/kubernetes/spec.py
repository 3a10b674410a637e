"""Worker pods and the password Secret as Kubernetes wire-format data, and pods read back.

Pure: no I/O, no clock.  Every object the scaler creates is built here, so
the tests validate exactly what goes to the API server.
"""

from __future__ import annotations

import base64
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from codalab_scaler.core.model import JobState
from codalab_scaler.core.worker_command import (
    DEFAULT_WORK_DIR_PREFIX,
    WorkerOptions,
    build_command,
    resolve_hostname,
    work_dir_for,
)
from codalab_scaler.sources.backends.base import PASSWORD_ENV, USERNAME_ENV
from codalab_scaler.sources.backends.kubernetes.settings import (
    TOLERATION,
    KubernetesBackendSettings,
)

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "codalab-scaler"
NAME_LABEL = "app.kubernetes.io/name"
WORKER_NAME = "cl-worker"
POOL_LABEL = "codalab-scaler/pool"
WORKER_LABEL = "codalab-scaler/worker-id"
POD_PREFIX = "cl-worker-"
CONTAINER = "cl-worker"
DOCKER_SOCKET = "/var/run/docker.sock"
GPU_RESOURCE = "nvidia.com/gpu"
# A worker id becomes part of a pod name, a DNS-1123 label: at most 63 characters.
WORKER_ID = re.compile(r"[a-z0-9]{1,53}")
# A pool name is a label value here: it must also end with a letter or digit.
POOL_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?")
# Waiting reasons of a container that will not start by waiting longer.
START_FAILURES = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def pod_name(worker_id: str) -> str:
    return POD_PREFIX + worker_id


def pool_labels(pool: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, POOL_LABEL: pool}


def selector(pool: str) -> str:
    """The label selector that lists exactly this pool's worker pods."""
    return ",".join(f"{key}={value}" for key, value in pool_labels(pool).items())


def owned_secret_name(pool: str) -> str:
    """The Secret the scaler writes its own password into, per pool (a DNS-1123 name)."""
    return f"codalab-scaler-{pool.replace('_', '-')}-password"


@dataclass(frozen=True, slots=True)
class PodInputs:
    """What every worker pod of a pool shares; one pod differs only by its worker id."""

    pool: str
    namespace: str
    username: str
    secret_name: str
    secret_key: str
    settings: KubernetesBackendSettings


def tolerations(words: Sequence[str]) -> list[dict[str, str]]:
    """``key=value:Effect`` -> Equal, ``key:Effect`` -> Exists (validated by the settings)."""
    out = []
    for word in words:
        match = TOLERATION.fullmatch(word)
        if match is None:  # pragma: no cover - the settings refuse it
            raise ValueError(word)
        item = {"key": match["key"], "effect": match["effect"]}
        if match["value"] is None:
            item["operator"] = "Exists"
        else:
            item.update(operator="Equal", value=match["value"])
        out.append(item)
    return out


def node_selector(words: Sequence[str]) -> dict[str, str]:
    return dict(word.partition("=")[::2] for word in words)


def pod_manifest(inputs: PodInputs, options: WorkerOptions, worker_id: str) -> dict[str, Any]:
    """The worker's pod: labelled, one ``cl-worker`` container, the password by reference."""
    s = inputs.settings
    name = pod_name(worker_id)
    prefix = options.work_dir_prefix or DEFAULT_WORK_DIR_PREFIX
    work_dir = work_dir_for(options, worker_id)
    # The pod's hostname is its name: what the original's $(hostname -s) printed there.
    command = resolve_hostname(build_command(options, worker_id, work_dir), name)
    if s.bundle_runtime == "kubernetes":
        command += ["--bundle-runtime", "kubernetes"]
    quantity = {"cpu": str(s.cpus), "memory": f"{s.memory_mb}Mi"}
    if s.gpus:
        quantity[GPU_RESOURCE] = str(s.gpus)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if s.nfs_volume_name is not None:
        volumes.append({"name": "work", "persistentVolumeClaim": {"claimName": s.nfs_volume_name}})
    else:
        volumes.append({"name": "work", "hostPath": {"path": prefix, "type": "DirectoryOrCreate"}})
    mounts.append({"name": "work", "mountPath": posixpath.normpath(prefix)})
    if s.bundle_runtime == "docker":
        volumes.append({"name": "docker", "hostPath": {"path": DOCKER_SOCKET, "type": "Socket"}})
        mounts.append({"name": "docker", "mountPath": DOCKER_SOCKET})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": s.image,
        "command": command,
        "env": [
            {"name": USERNAME_ENV, "value": inputs.username},
            {
                "name": PASSWORD_ENV,
                "valueFrom": {
                    "secretKeyRef": {"name": inputs.secret_name, "key": inputs.secret_key}
                },
            },
        ],
        "resources": {"requests": dict(quantity), "limits": dict(quantity)},
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        # The docker runtime needs no cluster access: no token in the pod unless asked for.
        "automountServiceAccountToken": (
            s.bundle_runtime == "kubernetes" or s.worker_service_account is not None
        ),
    }
    if s.worker_service_account is not None:
        spec["serviceAccountName"] = s.worker_service_account
    if s.node_selector:
        spec["nodeSelector"] = node_selector(s.node_selector)
    if s.tolerations:
        spec["tolerations"] = tolerations(s.tolerations)
    if not s.several_workers_per_node:
        spec["affinity"] = {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": {MANAGED_BY: MANAGER}},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": inputs.namespace,
            "labels": {
                **pool_labels(inputs.pool),
                NAME_LABEL: WORKER_NAME,
                WORKER_LABEL: worker_id,
            },
        },
        "spec": spec,
    }


def secret_manifest(
    name: str, namespace: str, pool: str, key: str, password: str
) -> dict[str, Any]:
    """The Secret the scaler owns, holding its own CodaLab password for its workers."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": pool_labels(pool)},
        "data": {key: base64.b64encode(password.encode()).decode()},
    }


@dataclass(frozen=True, slots=True)
class PodView:
    """One listed pod as the scaler reads it.

    ``state`` is None for a pod that finished cleanly (it served and exited).
    ``start_failed`` marks a pod still Pending whose container cannot start.
    """

    name: str
    worker_id: str
    state: JobState | None
    reason: str = ""
    finished_at: datetime | None = None
    start_failed: bool = False


def read_pod(pod: Mapping[str, Any]) -> PodView | None:
    """What ``pod`` (wire format) means for capacity; None if it is not a worker pod."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    name = meta.get("name")
    worker_id = labels.get(WORKER_LABEL)
    if not isinstance(name, str) or not isinstance(worker_id, str):
        return None
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    statuses = [
        *(status.get("initContainerStatuses") or ()),
        *(status.get("containerStatuses") or ()),
    ]
    finished = _finished_at(status, statuses)
    if phase == "Running":
        return PodView(name, worker_id, JobState.ACTIVE)
    if phase == "Succeeded":
        return PodView(name, worker_id, None, "", finished)
    if phase == "Failed":
        return PodView(name, worker_id, JobState.FAILED, _failure(status, statuses), finished)
    for item in statuses:
        waiting = (item.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in START_FAILURES:
            reason = f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
            return PodView(name, worker_id, JobState.FAILED, reason, None, start_failed=True)
    return PodView(name, worker_id, JobState.PENDING)  # Pending, or Unknown (node unreachable)


def _failure(status: Mapping[str, Any], statuses: Sequence[Mapping[str, Any]]) -> str:
    for item in statuses:
        ended = (item.get("state") or {}).get("terminated") or {}
        if ended.get("exitCode"):
            return f"{ended.get('reason') or 'Error'} (exit code {ended['exitCode']})"
    reason = status.get("reason") or "Failed"
    return f"{reason}: {status.get('message', '')}".rstrip(": ")


def _finished_at(
    status: Mapping[str, Any], statuses: Sequence[Mapping[str, Any]]
) -> datetime | None:
    times = [
        ((item.get("state") or {}).get("terminated") or {}).get("finishedAt") for item in statuses
    ]
    times += [c.get("lastTransitionTime") for c in status.get("conditions") or ()]
    parsed = [parse_time(t) for t in times if isinstance(t, str)]
    found = [t for t in parsed if t is not None]
    return max(found) if found else None


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time of the API server (``2026-01-02T03:04:05Z``); None if malformed."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
