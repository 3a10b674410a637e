"""Wiring: the service's parts built from settings, then its clients and backends opened.

Two steps.  ``assemble`` builds what holds no resource (metrics on the
registry, the state, liveness, the fatal flag) and can run before any event
loop work; ``open_context`` opens the CodaLab client and every backend onto
the caller's ``AsyncExitStack``, so whoever owns the stack (the app's
``cleanup_ctx``, ``--once``, a test) closes them, in reverse order, on every
exit path.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import ConfigError, LoginRefused, TransientError
from codalab_scaler.service.context import (
    BundleSource,
    Context,
    Fatal,
    PoolRuntime,
    WorkerSource,
)
from codalab_scaler.service.health import Liveness
from codalab_scaler.service.metrics import LeaderCollector, Metrics, ScrapeView, SnapshotCollector
from codalab_scaler.service.state import StateStore
from codalab_scaler.sources.backends import Backend, WorkerCredentials, open_backend
from codalab_scaler.sources.codalab.client import CodaLabClient, Credentials, staged_keywords
from codalab_scaler.sources.leadership import Leadership, LeaseOptions

log = structlog.get_logger()

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Overrides:
    """Test doubles that replace what the app would open: the bundle source, backends by pool.

    A pool missing from ``backends`` gets its real backend.  The app does not
    open a double; it leaves it as a backend is left (its ``aclose``, when it
    has one, is awaited on the way out).
    """

    bundles: BundleSource | None = None
    backends: Mapping[str, Backend] | None = None
    # The workers/info source when ``bundles`` is replaced (else the client serves both).
    workers: WorkerSource | None = None


@dataclass(frozen=True, slots=True)
class Parts:
    """What the service is made of before anything is opened."""

    settings: Settings
    clock: Callable[[], float]
    metrics: Metrics
    state: StateStore
    liveness: Liveness
    fatal: Fatal
    overrides: Overrides
    leadership: Leadership | None = None


def assemble(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    registry: CollectorRegistry | None = None,
    overrides: Overrides | None = None,
) -> Parts:
    """Metrics (every pool's counters at 0), state, liveness and the fatal flag."""
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    for name in settings.pools:
        metrics.init_pool(name)
    state = StateStore(settings.pools, clock)
    liveness = Liveness(
        clock, grace=settings.health_grace_seconds, stall=settings.effective_health_stall_seconds
    )
    policies = {name: settings.policy(name) for name in settings.pools}  # fixed for life
    metrics.registry.register(SnapshotCollector(
        lambda: ScrapeView(
            snapshot=state.snapshot, policies=policies, now=clock(), plan=state.plan
        )
    ))  # fmt: skip
    leadership = _leadership(settings)
    metrics.registry.register(LeaderCollector(lambda: leadership is None or leadership.is_leader()))
    return Parts(
        settings=settings,
        clock=clock,
        metrics=metrics,
        state=state,
        liveness=liveness,
        fatal=Fatal(liveness),
        overrides=overrides if overrides is not None else Overrides(),
        leadership=leadership,
    )


def _leadership(settings: Settings) -> Leadership | None:
    if not settings.leader_election:
        return None
    return Leadership(
        LeaseOptions(
            name=settings.leader_election_lease,
            namespace=settings.leader_election_namespace,
            identity=settings.leader_election_identity or socket.gethostname(),
            kubeconfig=settings.leader_election_kubeconfig,
            lease_duration=settings.leader_election_lease_seconds,
            renew_deadline=settings.leader_election_renew_seconds,
            retry_period=settings.leader_election_retry_seconds,
        )
    )


async def log_in(bundles: BundleSource) -> None:
    """Log in once up front: a wrong password is fatal, an unreachable server is not."""
    try:
        await bundles.login()
    except LoginRefused:
        raise
    except TransientError as exc:
        log.warning("codalab.login_deferred", error=str(exc))


async def open_context(stack: AsyncExitStack, parts: Parts, *, login: bool) -> Context:
    """Open the CodaLab client (and log in, when ``login``), then every pool's backend."""
    settings = parts.settings
    if settings.username is None or settings.password is None:  # pragma: no cover - validated
        raise ConfigError(["credentials: set CODALAB_USERNAME and CODALAB_PASSWORD"])
    password = settings.password.get_secret_value()
    retry = settings.retry_policy()
    bundles = parts.overrides.bundles
    workers = parts.overrides.workers
    if bundles is None:
        client = CodaLabClient(
            settings.server,
            Credentials(settings.username, password),
            request_timeout=settings.request_timeout_seconds,
            retry=retry,
            on_retry=parts.metrics.retry_hook("codalab"),
            clock=parts.clock,
        )
        opened = await stack.enter_async_context(_closed_quietly("codalab", _aclosing(client)))
        bundles = workers = opened
    if login:
        await log_in(bundles)
    credentials = WorkerCredentials(settings.username, password, settings.password_file)
    lent = parts.overrides.backends or {}
    pools: dict[str, PoolRuntime] = {}
    for name, pool in settings.pools.items():
        opener = (
            _aclosing(lent[name])
            if name in lent
            else open_backend(name, pool.backend, pool.worker_options(settings.server), credentials)
        )
        backend = await stack.enter_async_context(_closed_quietly(f"backend:{name}", opener))
        pools[name] = PoolRuntime(
            name=name,
            policy=settings.policy(name),
            backend=backend,
            keywords=tuple(
                staged_keywords(
                    settings.username,
                    pool.search,
                    pool.worker_tag,
                    tag_exclusive=pool.worker_tag_exclusive,
                )
            ),
            shape=pool.shape(),
            prefilter=not pool.no_prefilter,
            spec=settings.pool_spec(name),
            cancel_stuck_workers=pool.cancel_stuck_workers,
            checkout_exited_workers=not pool.keep_exited_workers_listed,
            exit_after_num_failed=pool.exit_after_num_failed,
            on_retry=parts.metrics.retry_hook("backend", name),
        )
    return Context(
        pools=pools,
        bundles=bundles,
        state=parts.state,
        metrics=parts.metrics,
        liveness=parts.liveness,
        fatal=parts.fatal,
        clock=parts.clock,
        sleep_time=settings.sleep_time,
        in_flight_timeout=settings.in_flight_timeout_seconds,
        retry=retry,
        call_timeout=settings.request_timeout_seconds,
        dry_run=settings.dry_run,
        leadership=parts.leadership,
        workers=workers,
    )


@contextlib.asynccontextmanager
async def _aclosing(thing: T) -> AsyncIterator[T]:
    """Hand ``thing`` out; on leaving, await its ``aclose`` if it has one."""
    try:
        yield thing
    finally:
        close = getattr(thing, "aclose", None)
        if close is not None:
            await close()


@contextlib.asynccontextmanager
async def _closed_quietly(part: str, opener: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter ``opener``; a failure to close it is logged, so closing goes on for the others."""
    value = await opener.__aenter__()
    try:
        yield value
    finally:
        try:
            await opener.__aexit__(None, None, None)
        except Exception as exc:  # noqa: BLE001 - whatever one part raises, the rest still close
            log.warning("service.close_failed", part=part, error=repr(exc))
