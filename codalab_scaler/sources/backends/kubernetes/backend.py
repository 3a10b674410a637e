"""The ``kubernetes`` backend: list this pool's worker pods by label, create one per worker.

Listing: one ``list_namespaced_pod`` with this pool's label selector
(``app.kubernetes.io/managed-by=codalab-scaler,codalab-scaler/pool=<pool>``),
following ``limit``/``continue`` to the end; never a name substring or a
phase field selector, so Pending pods count (the original counted Running
pods only and launched again while the first was still booting).  Pending
is booting, Running is serving; a Failed pod, or a Pending one whose
container cannot start (``ImagePullBackOff``, ``ErrImagePull``,
``CreateContainer*Error``...) is reported once as a failed start.  A pod
that cannot start is deleted at once (it would hold its node's resources
forever); finished pods are deleted ``finished_pod_ttl_seconds`` after they
ended.  A failed list raises: the poller keeps the last view, marked stale.

Launching: the pod is named after the worker id, so a create answered 409
AlreadyExists is the same worker (a retried or repeated launch), not a new
one.  The CodaLab password reaches the pod only through a Secret
(``secretKeyRef``): the operator's ``password_secret``, or one the scaler
writes from its own credentials before its first launch.

Retries: the client does not retry; the poller retries ``list_jobs`` with
the scaler's policy (honouring ``Retry-After``); a failed create is not
retried, the next pass decides again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

import structlog

from codalab_scaler.core.errors import ConfigError, LaunchRefused, TransientError
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.core.worker_command import WorkerOptions
from codalab_scaler.sources.backends.base import WorkerCredentials
from codalab_scaler.sources.backends.kubernetes import spec
from codalab_scaler.sources.backends.kubernetes.client import CLIENT, Connection, connect
from codalab_scaler.sources.backends.kubernetes.errors import status_of, translate
from codalab_scaler.sources.backends.kubernetes.settings import KubernetesBackendSettings

log = structlog.get_logger()

PAGE_SIZE = 500  # pods per list call: small answers, few calls for a large pool
MAX_PAGES = 10_000  # a peer that never stops paginating is a fault, not a pool
REDACTED = "<redacted>"

# The API calls this backend makes, as RBAC sees them: (API group, resource) -> verbs.
# Secrets only for the password Secret the scaler writes (no password_secret).
# tests/test_ops_deploy.py checks that the code calls exactly these and that the
# HA overlay's Role grants exactly these (docs/backends/kubernetes.md lists them).
RBAC: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset({"list", "create", "delete"}),
    ("", "secrets"): frozenset({"create", "get", "update"}),
}

Wall = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class KubernetesBackend:
    """Runs each worker as one pod in this pool's namespace."""

    def __init__(
        self,
        pool: str,
        options: WorkerOptions,
        settings: KubernetesBackendSettings,
        credentials: WorkerCredentials,
        *,
        connection: Connection | None = None,
        wall: Wall = _utcnow,
    ) -> None:
        if not spec.POOL_NAME.fullmatch(pool):
            why = "a kubernetes pool's name is a label value: it must end with a letter or digit"
            raise ConfigError([f"pools.{pool}: {why}"])
        self._pool = pool
        self._options = options
        self._settings = settings
        self._credentials = credentials
        self._owns_secret = settings.password_secret is None
        self._wall = wall
        self._timeout = settings.api_timeout_seconds
        self._stack = contextlib.AsyncExitStack()
        self._connect_lock = asyncio.Lock()
        self._secret_lock = asyncio.Lock()
        self._secret_ready = not self._owns_secret
        self._reported: set[str] = set()  # failed pods already reported once
        self._conn: Connection | None = None
        self._core: Any = None
        self._inputs: spec.PodInputs | None = None
        if connection is not None:
            self._use(connection)

    def _use(self, connection: Connection) -> None:
        self._conn = connection
        self._core = CLIENT.CoreV1Api(connection.api)
        self._inputs = spec.PodInputs(
            pool=self._pool, namespace=connection.namespace,
            username=self._credentials.username,
            secret_name=self._settings.password_secret or spec.owned_secret_name(self._pool),
            secret_key=self._settings.password_secret_key, settings=self._settings,
        )  # fmt: skip

    async def open(self) -> None:
        """Connect now (``open_backend`` does): a configuration the client refuses exits 2."""
        async with self._connect_lock:
            if self._conn is None:
                self._use(
                    await self._stack.enter_async_context(connect(self._pool, self._settings))
                )

    async def _ready(self) -> tuple[Any, spec.PodInputs]:
        await self.open()
        assert self._inputs is not None  # noqa: S101 - set by open, for mypy
        return self._core, self._inputs

    def _serialize(self, answer: Any) -> Any:
        assert self._conn is not None  # noqa: S101 - only called on an answer of the API
        return self._conn.api.sanitize_for_serialization(answer)

    async def aclose(self) -> None:
        """Close the client this backend opened (a lent connection belongs to its owner)."""
        await self._stack.aclose()

    # -- listing --------------------------------------------------------------------------

    async def list_jobs(self) -> Sequence[WorkerJob]:
        pods = await self._list_pods()
        now = self._wall()
        ttl = timedelta(seconds=self._settings.finished_pod_ttl_seconds)
        jobs: list[WorkerJob] = []
        doomed: list[tuple[str, str]] = []
        listed: set[str] = set()
        for pod in pods:
            view = spec.read_pod(pod)
            if view is None:
                continue
            listed.add(view.name)
            if view.state in (JobState.PENDING, JobState.ACTIVE):
                jobs.append(WorkerJob(view.name, view.state, view.worker_id))
                continue
            if view.state is JobState.FAILED and view.name not in self._reported:
                self._reported.add(view.name)
                jobs.append(WorkerJob(view.name, JobState.FAILED, view.worker_id, view.reason))
            if view.start_failed:
                doomed.append((view.name, "cannot_start"))
            elif view.finished_at is None or now - view.finished_at >= ttl:
                doomed.append((view.name, "finished"))
        self._reported &= listed
        for name, why in doomed:
            await self._delete_quietly(name, why)
        return jobs

    async def _list_pods(self) -> list[Mapping[str, Any]]:
        """Every pod of this pool, following ``continue`` to the end."""
        core, inputs = await self._ready()
        pods: list[Mapping[str, Any]] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            extra = {} if token is None else {"_continue": token}
            with translate("list pods"):
                page = await core.list_namespaced_pod(
                    inputs.namespace,
                    label_selector=spec.selector(self._pool),
                    limit=PAGE_SIZE,
                    _request_timeout=self._timeout,
                    **extra,
                )
            answer = self._serialize(page)
            pods += answer.get("items") or []
            token = (answer.get("metadata") or {}).get("continue")
            if not token:
                return pods
        raise TransientError(f"Kubernetes list pods: more than {MAX_PAGES} pages")

    async def _delete_quietly(self, name: str, why: str) -> None:
        """Delete a finished pod; a failure is logged and tried again on the next poll."""
        try:
            await self.cancel(name)
        except (TransientError, LaunchRefused) as exc:
            log.warning("kubernetes.pod_delete_failed", pool=self._pool, pod=name, error=str(exc))
            return
        log.info("kubernetes.pod_deleted", pool=self._pool, pod=name, why=why)

    # -- acting ---------------------------------------------------------------------------

    async def launch(self, worker_id: str) -> str:
        if not spec.WORKER_ID.fullmatch(worker_id):
            raise LaunchRefused(f"worker id {worker_id!r} must match {spec.WORKER_ID.pattern}")
        core, inputs = await self._ready()
        await self._ensure_secret(core, inputs)
        manifest = spec.pod_manifest(inputs, self._options, worker_id)
        name = spec.pod_name(worker_id)
        try:
            with translate("create pod", LaunchRefused):
                await core.create_namespaced_pod(
                    inputs.namespace, manifest, _request_timeout=self._timeout
                )
        except LaunchRefused as exc:
            if status_of(exc.__cause__) != HTTPStatus.CONFLICT:  # type: ignore[arg-type]
                raise
            log.info("kubernetes.pod_exists", pool=self._pool, worker_id=worker_id, pod=name)
            return name
        log.info(
            "kubernetes.pod_created",
            pool=self._pool,
            worker_id=worker_id,
            pod=name,
            namespace=inputs.namespace,
        )
        return name

    async def cancel(self, job_id: str) -> None:
        """Delete the worker pod ``job_id``; one already gone is no error."""
        core, inputs = await self._ready()
        try:
            with translate("delete pod", LaunchRefused):
                await core.delete_namespaced_pod(
                    job_id, inputs.namespace, _request_timeout=self._timeout
                )
        except LaunchRefused as exc:
            if status_of(exc.__cause__) != HTTPStatus.NOT_FOUND:  # type: ignore[arg-type]
                raise

    async def _ensure_secret(self, core: Any, inputs: spec.PodInputs) -> None:
        """Write the scaler's password into its own Secret once per process (create or replace)."""
        async with self._secret_lock:
            if self._secret_ready:
                return
            name = inputs.secret_name
            body = spec.secret_manifest(
                name, inputs.namespace, self._pool, inputs.secret_key, self._credentials.password
            )
            try:
                with translate("create secret", LaunchRefused):
                    await core.create_namespaced_secret(
                        inputs.namespace, body, _request_timeout=self._timeout
                    )
            except LaunchRefused as exc:
                if status_of(exc.__cause__) != HTTPStatus.CONFLICT:  # type: ignore[arg-type]
                    raise
                await self._refresh_secret(core, inputs.namespace, body)
            else:
                log.info("kubernetes.secret_created", pool=self._pool, secret=name)
            self._secret_ready = True

    async def _refresh_secret(self, core: Any, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        with translate("read secret", LaunchRefused):
            found = self._serialize(
                await core.read_namespaced_secret(name, namespace, _request_timeout=self._timeout)
            )
        if (found.get("data") or {}) == body["data"]:
            return
        body = {**body, "metadata": {**body["metadata"], **_version(found)}}
        with translate("replace secret", LaunchRefused):
            await core.replace_namespaced_secret(
                name, namespace, body, _request_timeout=self._timeout
            )
        log.info("kubernetes.secret_updated", pool=self._pool, secret=name)

    async def describe_launch(self, worker_id: str) -> Mapping[str, Any]:
        _core, inputs = await self._ready()
        plan: dict[str, Any] = {"pod": spec.pod_manifest(inputs, self._options, worker_id)}
        if self._owns_secret:
            secret = spec.secret_manifest(
                inputs.secret_name, inputs.namespace, self._pool, inputs.secret_key, ""
            )
            secret["data"] = dict.fromkeys(secret["data"], REDACTED)
            plan["secret"] = secret
        return copy.deepcopy(plan)


def _version(found: Mapping[str, Any]) -> dict[str, Any]:
    version = (found.get("metadata") or {}).get("resourceVersion")
    return {} if version is None else {"resourceVersion": version}


def create_backend(
    pool: str,
    settings: KubernetesBackendSettings,
    options: WorkerOptions,
    credentials: WorkerCredentials,
) -> KubernetesBackend:
    """Build the backend, connecting on first use; its ``aclose`` releases it."""
    return KubernetesBackend(pool, options, settings, credentials)


@contextlib.asynccontextmanager
async def open_backend(
    pool: str,
    settings: KubernetesBackendSettings,
    options: WorkerOptions,
    credentials: WorkerCredentials,
) -> AsyncIterator[KubernetesBackend]:
    """The ``kubernetes`` backend of ``pool``, connected; leaving closes its client (pods stay)."""
    backend = create_backend(pool, settings, options, credentials)
    try:
        await backend.open()
        yield backend
    finally:
        await backend.aclose()
