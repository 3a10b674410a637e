"""Leader election on a ``coordination.k8s.io/v1`` Lease (``kubernetes_asyncio.leaderelection``).

Two replicas of the scaler both poll; only the one holding the Lease
launches.  ``Leadership.is_leader()`` is true only while the last
successful renewal is younger than the renew deadline, so a leader that
lost the API server stops launching before the Lease can expire and pass
to the standby.  ``release`` (on SIGTERM) clears the holder so the standby
takes over at its next retry instead of waiting out the Lease.

Errors: an answer no retry or restart can change (no such kubeconfig, not in
a pod, the credentials refused (401), RBAC (403), no such namespace, an
invalid Lease name (422)) is a ``ConfigError`` naming the setting, which
ends the process with status 2.  Connection errors, timeouts, 429 and 5xx
are logged (``leader.api_error``) and tried again at the next retry period;
while they last, a leader stops launching once its renew deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client as _client
from kubernetes_asyncio import config as _config
from kubernetes_asyncio.leaderelection import electionconfig as _electionconfig
from kubernetes_asyncio.leaderelection import leaderelection as _leaderelection
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.resourcelock import leaselock as _leaselock

from codalab_scaler.core.errors import ConfigError

CLIENT: Any = _client
CONFIG: Any = _config
ELECTION: Any = _leaderelection
ELECTION_CONFIG: Any = _electionconfig
LEASE_LOCK: Any = _leaselock
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

log = structlog.get_logger()

# The API calls leader election makes, as RBAC sees them: (API group, resource) -> verbs.
# tests/test_ops_deploy.py checks that the code calls exactly these and that the
# HA overlay's Role grants exactly these.
RBAC: dict[tuple[str, str], frozenset[str]] = {
    ("coordination.k8s.io", "leases"): frozenset({"get", "create", "update"}),
}

# What may answer next time: the connection, a timeout, a body that is not the
# API server's JSON (a proxy's error page), 429 and 5xx.
UNANSWERED = (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError)
HTTP_NOT_FOUND, HTTP_CONFLICT, HTTP_TOO_MANY = 404, 409, 429


@dataclass(frozen=True, slots=True)
class LeaseOptions:
    name: str
    namespace: str | None
    identity: str
    kubeconfig: Path | None
    lease_duration: int
    renew_deadline: float
    retry_period: float


class _Unanswered(Exception):
    """The API server did not answer (transport, 429, 5xx): try again at the next retry."""


class _Lock:
    """``LeaseLock`` whose failed calls say why: refused (``ConfigError``) or unanswered.

    The library's lock swallows every ``ApiException`` of create and update
    into ``False`` and returns get's to an elector that reads its body as
    JSON; this one keeps the library's record handling and decides about
    errors itself.  A 409 (another replica wrote first) is a plain ``False``.
    """

    def __init__(self, options: LeaseOptions, namespace: str, api: Any) -> None:
        self.inner = LEASE_LOCK.LeaseLock(options.name, namespace, options.identity, api)
        self.name: str = options.name
        self.namespace = namespace
        self.identity = options.identity
        self.options = options

    async def get(self, name: str, namespace: str) -> tuple[bool, Any]:
        found, record = await self.inner.get(name, namespace)
        if not found:
            self._check("get", record)
        return found, record

    async def create(self, name: str, namespace: str, election_record: Any) -> bool:
        body = CLIENT.V1Lease(
            metadata=CLIENT.V1ObjectMeta(name=name),
            spec=self.inner.update_lease(election_record),
        )
        try:
            await self.inner.api_instance.create_namespaced_lease(namespace, body)
        except CLIENT.ApiException as exc:
            self._check("create", exc)
            return False
        return True

    async def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        lease = self.inner.lease_reference
        if lease is None:  # pragma: no cover - the elector reads before it updates
            return False
        lease.spec = self.inner.update_lease(updated_record, lease.spec)
        try:
            await self.inner.api_instance.replace_namespaced_lease(name, namespace, lease)
        except CLIENT.ApiException as exc:
            self._check("update", exc)
            return False
        return True

    def _check(self, verb: str, exc: Any) -> None:
        """Return for a 404 of the Lease itself or a 409; raise for anything else."""
        status = int(getattr(exc, "status", 0) or 0)
        message = _message(exc)
        where = f"Lease {self.namespace}/{self.name}"
        if status == HTTP_NOT_FOUND and not message.startswith("namespaces "):
            return  # no Lease yet: the elector creates it
        if status == HTTP_CONFLICT:
            return  # another replica wrote first: the next retry reads its record
        if status == HTTP_TOO_MANY or status >= 500 or status == 0:  # noqa: PLR2004 - 5xx
            raise _Unanswered(f"{verb} {where}: HTTP {status} {message}".rstrip())
        raise ConfigError([_refusal(self.options, self.namespace, verb, status, message)])


def _message(exc: Any) -> str:
    """The ``message`` of the API server's ``Status`` body ('' when there is none)."""
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except ValueError:
        return ""
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def _refusal(options: LeaseOptions, namespace: str, verb: str, status: int, message: str) -> str:
    """One line naming the setting to change for a refused Lease call."""
    answer = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status == HTTP_NOT_FOUND:
        return f"leader_election_namespace: namespace {namespace!r} does not exist ({answer})"
    if status == 401:  # noqa: PLR2004 - HTTP Unauthorized
        who = (
            f"leader_election_kubeconfig: the credentials of {options.kubeconfig}"
            if options.kubeconfig is not None
            else "leader_election: the pod's service account token"
        )
        return f"{who} were refused by the API server ({answer})"
    if status == 403:  # noqa: PLR2004 - HTTP Forbidden
        return (
            f"leader_election: may not {verb} Lease {namespace}/{options.name}; grant get, "
            f"create and update on leases (coordination.k8s.io) in {namespace} ({answer})"
        )
    if status == 422:  # noqa: PLR2004 - HTTP Unprocessable Entity
        return f"leader_election_lease: {options.name!r} is not a valid Lease name ({answer})"
    return f"leader_election: {verb} Lease {namespace}/{options.name} refused ({answer})"


class _Election(LeaderElection):
    """The library's elector; an unanswered call is a failed attempt, retried, never a crash."""

    async def try_acquire_or_renew(self) -> bool:
        try:
            return await super().try_acquire_or_renew()
        except (_Unanswered, *UNANSWERED) as exc:
            log.warning(
                "leader.api_error",
                lease=self.election_config.lock.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False


class Leadership:
    """Who leads, as this replica knows it; read by the scaler, ``/status`` and the metrics."""

    def __init__(self, options: LeaseOptions) -> None:
        self.options = options
        self._elector: Any = None
        self._leading = False
        self._lead_task: asyncio.Task[Any] | None = None

    @property
    def identity(self) -> str:
        return self.options.identity

    def is_leader(self) -> bool:
        """Whether this replica holds the Lease: elected, named by the record, renewed in time.

        The holder check matters: the library refreshes its observed time when it
        reads *another* replica's record, so a replica that was paused past the
        Lease would otherwise count itself leader until its renew loop gives up.
        """
        if not self._leading or self._elector is None:
            return False
        if self.holder() != self.identity:
            return False
        renewed = float(self._elector.observed_time_milliseconds) / 1000
        return time.time() - renewed < self.options.renew_deadline

    def holder(self) -> str | None:
        record = None if self._elector is None else self._elector.observed_record
        return None if record is None else record.holder_identity

    async def run(self) -> None:
        """Stand for election until cancelled; a lost Lease makes this replica a candidate again.

        Raises ``ConfigError`` for a set-up no retry can fix (see the module's docstring).
        """
        async with self._api() as (api, namespace):
            lock = _Lock(self.options, namespace, api)
            try:
                while True:
                    config = ELECTION_CONFIG.Config(
                        lock,
                        lease_duration=self.options.lease_duration,
                        renew_deadline=self.options.renew_deadline,
                        retry_period=self.options.retry_period,
                        onstarted_leading=self._lead,
                        onstopped_leading=self._stop_leading,
                    )
                    self._elector = _Election(config)
                    await self._elector.run()
            finally:
                if self._lead_task is not None:  # the elector leaves it running when it raises
                    self._lead_task.cancel()
                if self._leading:
                    self._leading = False
                    await asyncio.shield(self._release(api, namespace))

    async def _lead(self) -> None:
        self._leading = True
        self._lead_task = asyncio.current_task()
        log.info("leader.elected", identity=self.identity, lease=self.options.name)
        await asyncio.Event().wait()  # cancelled by the elector when the Lease is lost

    async def _stop_leading(self) -> None:
        self._leading = False
        self._lead_task = None
        log.warning("leader.lost", identity=self.identity, lease=self.options.name)

    async def _release(self, api: Any, namespace: str) -> None:
        """Clear the holder so that the standby need not wait for the Lease to expire."""
        leases = CLIENT.CoordinationV1Api(api)
        try:
            lease = await leases.read_namespaced_lease(self.options.name, namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            await leases.replace_namespaced_lease(self.options.name, namespace, lease)
        except (CLIENT.ApiException, *UNANSWERED) as exc:
            log.warning("leader.release_failed", identity=self.identity, error=str(exc))
            return
        log.info("leader.released", identity=self.identity, lease=self.options.name)

    @contextlib.asynccontextmanager
    async def _api(self) -> AsyncIterator[tuple[Any, str]]:
        configuration = CLIENT.Configuration()
        namespace = self.options.namespace
        kubeconfig = self.options.kubeconfig
        try:
            if kubeconfig is not None:
                if not kubeconfig.is_file():
                    raise ConfigError([f"leader_election_kubeconfig: no such file {kubeconfig}"])
                await CONFIG.load_kube_config(
                    config_file=str(kubeconfig),
                    client_configuration=configuration,
                    persist_config=False,
                )
            else:
                CONFIG.load_incluster_config(client_configuration=configuration)
                if namespace is None:
                    namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()  # noqa: ASYNC240
        except (CONFIG.ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
            where = (
                f"leader_election_kubeconfig: {kubeconfig} is not a usable kubeconfig"
                if kubeconfig is not None
                else "leader_election_kubeconfig: unset, and not in a pod with a service account"
            )
            raise ConfigError([f"{where} ({exc})"]) from None
        api = CLIENT.ApiClient(configuration)
        try:
            yield api, namespace or "default"
        finally:
            await api.close()
