"""Leader election on a ``coordination.k8s.io/v1`` Lease (``kubernetes_asyncio.leaderelection``).

Two replicas of the scaler both poll; only the one holding the Lease
launches.  ``Leadership.is_leader()`` is true only while the last
successful renewal is younger than the renew deadline, so a leader that
lost the API server stops launching before the Lease can expire and pass
to the standby.  ``release`` (on SIGTERM) clears the holder so the standby
takes over at its next retry instead of waiting out the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from kubernetes_asyncio import client as _client
from kubernetes_asyncio import config as _config
from kubernetes_asyncio.leaderelection import electionconfig as _electionconfig
from kubernetes_asyncio.leaderelection import leaderelection as _leaderelection
from kubernetes_asyncio.leaderelection.resourcelock import leaselock as _leaselock

from codalab_scaler.core.errors import ConfigError

CLIENT: Any = _client
CONFIG: Any = _config
ELECTION: Any = _leaderelection
ELECTION_CONFIG: Any = _electionconfig
LEASE_LOCK: Any = _leaselock
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class LeaseOptions:
    name: str
    namespace: str | None
    identity: str
    kubeconfig: Path | None
    lease_duration: int
    renew_deadline: float
    retry_period: float


class Leadership:
    """Who leads, as this replica knows it; read by the scaler, ``/status`` and the metrics."""

    def __init__(self, options: LeaseOptions) -> None:
        self.options = options
        self._elector: Any = None
        self._leading = False

    @property
    def identity(self) -> str:
        return self.options.identity

    def is_leader(self) -> bool:
        if not self._leading or self._elector is None:
            return False
        renewed = float(self._elector.observed_time_milliseconds) / 1000
        return time.time() - renewed < self.options.renew_deadline

    def holder(self) -> str | None:
        record = None if self._elector is None else self._elector.observed_record
        return None if record is None else record.holder_identity

    async def run(self) -> None:
        """Stand for election until cancelled; a lost Lease makes this replica a candidate again."""
        async with self._api() as (api, namespace):
            lock = LEASE_LOCK.LeaseLock(self.options.name, namespace, self.identity, api)
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
                    self._elector = ELECTION.LeaderElection(config)
                    await self._elector.run()
            finally:
                if self._leading:
                    self._leading = False
                    await asyncio.shield(self._release(api, namespace))

    async def _lead(self) -> None:
        self._leading = True
        log.info("leader.elected", identity=self.identity, lease=self.options.name)
        await asyncio.Event().wait()  # cancelled by the elector when the Lease is lost

    async def _stop_leading(self) -> None:
        self._leading = False
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
        except (CLIENT.ApiException, OSError, TimeoutError) as exc:
            log.warning("leader.release_failed", identity=self.identity, error=str(exc))
            return
        log.info("leader.released", identity=self.identity, lease=self.options.name)

    @contextlib.asynccontextmanager
    async def _api(self) -> AsyncIterator[tuple[Any, str]]:
        configuration = CLIENT.Configuration()
        namespace = self.options.namespace
        try:
            if self.options.kubeconfig is not None:
                await CONFIG.load_kube_config(
                    config_file=str(self.options.kubeconfig),
                    client_configuration=configuration,
                    persist_config=False,
                )
            else:
                CONFIG.load_incluster_config(client_configuration=configuration)
                if namespace is None:
                    namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()  # noqa: ASYNC240
        except (CONFIG.ConfigException, OSError) as exc:
            raise ConfigError([f"leader_election: {exc}"]) from None
        api = CLIENT.ApiClient(configuration)
        try:
            yield api, namespace or "default"
        finally:
            await api.close()
