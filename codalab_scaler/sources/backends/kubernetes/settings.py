"""Settings of the ``kubernetes`` backend; imports no Kubernetes SDK.

``--help`` and config validation read this module without importing
kubernetes_asyncio.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

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
# A DNS-1123 label (namespace, Secret and service account names are subdomains; a label
# is the stricter form every one of them accepts).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
# A label key, with or without a prefix (kubernetes.io/hostname, gpu-pool).
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = re.compile(rf"({DNS_SUBDOMAIN.pattern}/)?{_LABEL_NAME}")
LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")
# key=value:Effect or key:Effect (kubectl taint's syntax, read the other way round).
TOLERATION = re.compile(
    rf"(?P<key>{LABEL_KEY.pattern})(=(?P<value>{LABEL_VALUE.pattern}))?"
    r":(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)"
)


def image_default(environ: Mapping[str, str]) -> str:
    """``codalab/worker:$CODALAB_VERSION``, the tag CodaLab's own deployment runs."""
    return f"{IMAGE_REPOSITORY}:{environ.get('CODALAB_VERSION', 'latest')}"


def environ_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """The defaults that depend on the environment the loader was given."""
    return {"image": image_default(environ)}


class KubernetesBackendSettings(StrictModel):
    """Workers as Kubernetes pods (subcommand ``kubernetes``).

    Pods are named ``cl-worker-<worker id>`` and labelled with the pool; the
    scaler finds its own pods again by label selector.
    """

    kind: Literal["kubernetes"] = Field(default="kubernetes", description="Backend kind.")
    cluster_host: str | None = Field(
        default=None,
        description="URL of the Kubernetes API server (the original's required flag). "
        "Unset: kubeconfig or in_cluster says where the cluster is.",
    )
    auth_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for cluster_host; never logged. Prefer the environment "
        "variable CODALAB_SCALER_POOLS__<POOL>__BACKEND__AUTH_TOKEN, a kubeconfig or "
        "in_cluster: a flag is visible to every local user. Unset: none.",
    )
    cert_path: Path | None = Field(
        default=None,
        description="CA certificate file of cluster_host (the original's flag). Unset: "
        "the system's CA bundle, or the certificate given by cert.",
    )
    cert: str | None = Field(
        default=None,
        description="Contents of the CA certificate of cluster_host, PEM (the original's "
        "flag); written to a private temporary file, and used rather than cert_path when "
        "both are given. Unset: cert_path.",
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig file to reach the cluster with, as kubectl's --kubeconfig. "
        "Unset: in_cluster or cluster_host.",
    )
    context: str | None = Field(
        default=None,
        description="Context of the kubeconfig to use. Unset: its current-context.",
    )
    in_cluster: bool = Field(
        default=False,
        description="Use the service account of the pod the scaler runs in. Off: "
        "kubeconfig or cluster_host.",
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace worker pods (and the password Secret) live in. Unset: with "
        "in_cluster the scaler's own namespace, else default.",
    )
    image: str = Field(
        default_factory=lambda: image_default({}),
        description="Worker container image. Default: codalab/worker:$CODALAB_VERSION "
        "(latest when unset), as the original.",
    )
    nfs_volume_name: str | None = Field(
        default=None,
        description="PersistentVolumeClaim mounted at the worker work dir prefix, shared "
        "by the workers (the original's flag). Unset: a host directory of the node.",
    )
    bundle_runtime: Literal["docker", "kubernetes"] = Field(
        default="docker",
        description="How workers run bundles: docker (the node's Docker socket is "
        "mounted) or kubernetes (bundles become pods; the worker uses its service "
        "account). docker: the original's default.",
    )
    cpus: PositiveInt = Field(
        default=1,
        description="CPUs each worker pod requests and is limited to, a count. 1: the "
        "original's default.",
    )
    gpus: NonNegativeInt = Field(
        default=0,
        description="GPUs (nvidia.com/gpu) each worker pod requests, a count. 0: the "
        "original's default.",
    )
    memory_mb: PositiveInt = Field(
        default=2048,
        description="Memory each worker pod requests and is limited to, in MiB. 2048: the "
        "original's default.",
    )
    node_selector: list[str] = Field(
        default_factory=list,
        description="Node labels a worker pod needs, as key=value words (a GPU node "
        "pool). Empty: any node.",
    )
    tolerations: list[str] = Field(
        default_factory=list,
        description="Taints worker pods tolerate, as key=value:Effect or key:Effect words "
        "(kubectl taint's syntax). Empty: none.",
    )
    worker_service_account: str | None = Field(
        default=None,
        description="Service account worker pods run as (cluster access for the "
        "kubernetes bundle runtime). Unset: the namespace's default, with no token "
        "mounted for the docker runtime.",
    )
    several_workers_per_node: bool = Field(
        default=False,
        description="Let several worker pods of this scaler share a node. Off: one worker "
        "per node, as the original (a required pod anti-affinity).",
    )
    password_secret: str | None = Field(
        default=None,
        description="Name of an existing Secret whose key password_secret_key holds the "
        "worker's CodaLab password. Unset: the scaler writes its own password into a "
        "Secret codalab-scaler-<pool>-password that it owns.",
    )
    password_secret_key: str = Field(
        default="password",
        description="Key of the password in password_secret. password: the usual name.",
    )
    finished_pod_ttl_seconds: NonNegativeInt = Field(
        default=3600,
        description="Seconds a finished worker pod (succeeded or failed) is kept for "
        "inspection before the scaler deletes it. 3600: an hour to read its logs.",
    )
    api_timeout_seconds: PositiveFloat = Field(
        default=30,
        description="Timeout of one request to the API server, in seconds. 30: a list of a "
        "few hundred pods answers in well under a second.",
    )

    @field_validator("namespace", "worker_service_account")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        if value is not None and not DNS_LABEL.fullmatch(value):
            raise ValueError("must be a DNS-1123 label (lower-case letters, digits and '-')")
        return value

    @field_validator("password_secret", "nfs_volume_name")
    @classmethod
    def _dns_subdomain(cls, value: str | None) -> str | None:
        if value is not None and not DNS_SUBDOMAIN.fullmatch(value):
            raise ValueError("must be a DNS-1123 subdomain (lower-case letters, digits, '-', '.')")
        return value

    @field_validator("password_secret_key")
    @classmethod
    def _secret_key(cls, value: str) -> str:
        if not re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", value):
            raise ValueError("must be letters, digits, '-', '_' or '.' (a Secret's key)")
        return value

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, value: list[str]) -> list[str]:
        for word in value:
            key, sep, label = word.partition("=")
            if not sep or not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(label):
                raise ValueError(f"{word!r} is not key=value with a valid label key and value")
        return value

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, value: list[str]) -> list[str]:
        for word in value:
            if not TOLERATION.fullmatch(word):
                raise ValueError(
                    f"{word!r} is not key=value:Effect or key:Effect "
                    "(Effect: NoSchedule, PreferNoSchedule or NoExecute)"
                )
        return value

    @model_validator(mode="after")
    def _one_way_in(self) -> KubernetesBackendSettings:
        ways = [
            name
            for name, given in (
                ("in_cluster", self.in_cluster),
                ("kubeconfig", self.kubeconfig is not None),
                ("cluster_host", self.cluster_host is not None),
            )
            if given
        ]
        if not ways:
            raise ValueError(
                "cluster_host: required unless kubeconfig or in_cluster says where the cluster is"
            )
        if len(ways) > 1:
            raise ValueError(f"{ways[1]}: give only one of in_cluster, kubeconfig, cluster_host")
        if self.cluster_host is not None:
            if not re.match(r"^https?://[^/\s]+", self.cluster_host):
                raise ValueError("cluster_host: must be an http:// or https:// URL")
            if self.auth_token is None:
                raise ValueError("auth_token: required with cluster_host")
        elif self.auth_token is not None or self.cert is not None or self.cert_path is not None:
            raise ValueError(
                "auth_token: the original's auth_token, cert and cert_path go with "
                "cluster_host only (a kubeconfig or in_cluster carries its own)"
            )
        if self.context is not None and self.kubeconfig is None:
            raise ValueError("context: needs kubeconfig")
        return self
