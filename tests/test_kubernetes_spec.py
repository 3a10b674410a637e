"""The pods and Secrets the kubernetes backend creates: valid for the API, and what they say.

Each manifest is validated against the official OpenAPI schema with
``kubernetes-validate --strict`` for the oldest and newest versions we
support, plus what the schema does not check (DNS-1123 names, restartPolicy).
"""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from codalab_scaler.core.model import JobState
from codalab_scaler.sources.backends.kubernetes import spec
from codalab_scaler.sources.backends.kubernetes.settings import KubernetesBackendSettings
from tests.defaults import worker_options

K8S_VERSIONS = ("1.29", "1.37")  # as tests/test_ops_deploy.py: oldest common, newest shipped
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
WID = "0123456789abcdef0123456789abcdef"

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu-pool": {
        "gpus": 2, "cpus": 8, "memory_mb": 65536,
        "node_selector": ["cloud.google.com/gke-accelerator=nvidia-tesla-t4", "pool=gpu"],
        "tolerations": ["nvidia.com/gpu:NoSchedule", "dedicated=codalab:NoExecute"],
    },
    "kubernetes-runtime": {
        "bundle_runtime": "kubernetes", "worker_service_account": "cl-worker",
        "nfs_volume_name": "codalab-nfs", "several_workers_per_node": True,
    },
    "operator-secret": {"password_secret": "codalab.pw", "password_secret_key": "pw"},
}  # fmt: skip


def inputs(pool: str = "gpu_big", **kw: Any) -> spec.PodInputs:
    settings = KubernetesBackendSettings(in_cluster=True, **kw)
    return spec.PodInputs(
        pool=pool, namespace="codalab", username="codalab",
        secret_name=settings.password_secret or spec.owned_secret_name(pool),
        secret_key=settings.password_secret_key, settings=settings,
    )  # fmt: skip


def validate(doc: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pod_is_valid_for_every_supported_version(variant: str) -> None:
    pod = spec.pod_manifest(inputs(**VARIANTS[variant]), worker_options(), WID)
    validate(pod)
    assert DNS_LABEL.fullmatch(pod["metadata"]["name"])
    assert pod["spec"]["restartPolicy"] in {"Always", "OnFailure", "Never"}
    assert pod["spec"]["restartPolicy"] == "Never"
    for volume in pod["spec"]["volumes"]:
        assert DNS_LABEL.fullmatch(volume["name"])


def test_longest_worker_id_still_makes_a_dns_label() -> None:
    pod = spec.pod_manifest(inputs(), worker_options(), "a" * 53)
    assert DNS_LABEL.fullmatch(pod["metadata"]["name"])
    assert spec.WORKER_ID.fullmatch("a" * 53)
    assert not spec.WORKER_ID.fullmatch("a" * 54)


def test_owned_secret_is_valid_and_named_as_dns() -> None:
    secret = spec.secret_manifest(
        spec.owned_secret_name("gpu_big"), "codalab", "gpu_big", "password", "pw"
    )
    validate(secret)
    assert secret["metadata"]["name"] == "codalab-scaler-gpu-big-password"


def test_pod_shape_command_and_placement() -> None:
    pod = spec.pod_manifest(inputs(**VARIANTS["gpu-pool"]), worker_options(tag="gpu"), WID)
    [container] = pod["spec"]["containers"]
    assert container["resources"]["limits"] == {
        "cpu": "8",
        "memory": "65536Mi",
        "nvidia.com/gpu": "2",
    }
    assert container["resources"]["requests"] == container["resources"]["limits"]
    command = container["command"]
    assert command[:2] == ["cl-worker", "--server"]
    assert command[command.index("--id") + 1] == f"cl-worker-{WID}-{WID}"
    assert command[command.index("--tag") + 1] == "gpu"
    assert pod["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4", "pool": "gpu"
    }  # fmt: skip
    assert pod["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "codalab", "effect": "NoExecute"},
    ]
    anti = pod["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert anti == [{
        "labelSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "codalab-scaler"}},
        "topologyKey": "kubernetes.io/hostname",
    }]  # fmt: skip
    assert pod["spec"]["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp", "/var/run/docker.sock"}


def test_kubernetes_runtime_uses_the_service_account_never_a_token() -> None:
    pod = spec.pod_manifest(inputs(**VARIANTS["kubernetes-runtime"]), worker_options(), WID)
    command = pod["spec"]["containers"][0]["command"]
    assert not [arg for arg in command if "token" in arg.lower()]
    assert "--kubernetes-auth-token" not in json.dumps(pod)
    assert pod["spec"]["serviceAccountName"] == "cl-worker"
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert "affinity" not in pod["spec"]
    assert command[-2:] == ["--bundle-runtime", "kubernetes"]
    assert {"name": "work", "persistentVolumeClaim": {"claimName": "codalab-nfs"}} in pod["spec"][
        "volumes"
    ]


def pod(phase: str, **status: Any) -> dict[str, Any]:
    labels = {"codalab-scaler/worker-id": WID}
    return {
        "metadata": {"name": "cl-worker-x", "labels": labels},
        "status": {"phase": phase, **status},
    }


@pytest.mark.parametrize(
    ("phase", "status", "state", "reason"),
    [
        ("Pending", {}, JobState.PENDING, ""),
        ("Unknown", {}, JobState.PENDING, ""),
        ("Running", {}, JobState.ACTIVE, ""),
        ("Succeeded", {}, None, ""),
        ("Failed", {"reason": "Evicted", "message": "low on memory"},
         JobState.FAILED, "Evicted: low on memory"),
        ("Pending", {"initContainerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]},
         JobState.FAILED, "ErrImagePull"),
    ],
)  # fmt: skip
def test_read_pod(phase: str, status: dict[str, Any], state: JobState | None, reason: str) -> None:
    view = spec.read_pod(pod(phase, **status))
    assert view is not None
    assert (view.state, view.reason) == (state, reason)


def test_a_pod_without_our_labels_is_not_a_worker() -> None:
    assert spec.read_pod({"metadata": {"name": "x", "labels": {}}, "status": {}}) is None
