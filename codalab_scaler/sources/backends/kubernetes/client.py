"""Opening the API client: a kubeconfig, the pod's service account, or the original's flags.

kubernetes_asyncio is untyped; its objects are handled as ``Any`` here and
in ``backend``, and what comes back is read as wire-format data (``spec``).
"""

from __future__ import annotations

import contextlib
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as _client
from kubernetes_asyncio import config as _config

from codalab_scaler.core.errors import ConfigError
from codalab_scaler.sources.backends.base import write_private_file
from codalab_scaler.sources.backends.kubernetes.settings import KubernetesBackendSettings

CLIENT: Any = _client
CONFIG: Any = _config
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class Connection:
    api: Any  # kubernetes_asyncio.client.ApiClient
    namespace: str


@contextlib.asynccontextmanager
async def connect(pool: str, settings: KubernetesBackendSettings) -> AsyncIterator[Connection]:
    """An API client for ``settings`` and the namespace to work in; closed on leaving.

    A configuration the client cannot load (no such kubeconfig or context, not
    in a pod) is a ``ConfigError`` naming the setting.
    """
    configuration = CLIENT.Configuration()
    namespace = settings.namespace
    with tempfile.TemporaryDirectory(prefix="codalab-scaler-k8s-") as scratch:
        try:
            if settings.in_cluster:
                CONFIG.load_incluster_config(client_configuration=configuration)
                if namespace is None:
                    # A few bytes the kubelet mounted, read once at start-up.
                    namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()  # noqa: ASYNC240
            elif settings.kubeconfig is not None:
                if not settings.kubeconfig.is_file():
                    raise ConfigError(
                        [f"pools.{pool}.backend.kubeconfig: no such file {settings.kubeconfig}"]
                    )
                await CONFIG.load_kube_config(
                    config_file=str(settings.kubeconfig),
                    context=settings.context,
                    client_configuration=configuration,
                    persist_config=False,
                )
            else:
                _original_flags(configuration, settings, Path(scratch))
            # Builds the TLS context: an unreadable or invalid CA fails here.
            api = CLIENT.ApiClient(configuration)
        except (CONFIG.ConfigException, OSError, ssl.SSLError) as exc:
            raise ConfigError([f"pools.{pool}.backend.{_source(settings)}: {exc}"]) from None
        try:
            yield Connection(api=api, namespace=namespace or DEFAULT_NAMESPACE)
        finally:
            await api.close()


def _source(settings: KubernetesBackendSettings) -> str:
    """The setting that says how to reach the cluster, to name in an error."""
    if settings.in_cluster:
        return "in_cluster"
    if settings.kubeconfig is not None:
        return "kubeconfig"
    return "cert" if settings.cert else "cert_path"


def _original_flags(configuration: Any, settings: KubernetesBackendSettings, scratch: Path) -> None:
    """``cluster_host`` with ``auth_token`` and the CA of ``cert`` or ``cert_path``."""
    configuration.host = settings.cluster_host
    if settings.auth_token is not None:
        configuration.api_key = {"BearerToken": settings.auth_token.get_secret_value()}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
    if settings.cert is not None:
        ca = scratch / "ca.crt"
        write_private_file(ca, settings.cert.encode())
        configuration.ssl_ca_cert = str(ca)
    elif settings.cert_path is not None:
        configuration.ssl_ca_cert = str(settings.cert_path)
