"""The parts a loop works with, wired once when the app opens and passed explicitly.

``Context`` is immutable wiring: what a pool *knows* (its observations, its
last decision, its failed starts) lives in the snapshot of ``StateStore``,
never here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from codalab_scaler.core.decision import Policy
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.core.model import RegisteredWorker, StagedBundle
from codalab_scaler.core.planner import PoolSpec
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.service.health import Liveness
from codalab_scaler.service.metrics import Metrics
from codalab_scaler.service.state import StateStore
from codalab_scaler.sources.backends.base import Backend
from codalab_scaler.sources.leadership import Leadership
from codalab_scaler.sources.retry import RetryPolicy


class ParsedStaged(Protocol):
    @property
    def bundles(self) -> Sequence[StagedBundle]: ...

    @property
    def malformed(self) -> Sequence[object]: ...


class BundleSource(Protocol):
    """Where staged bundles come from (the CodaLab client, or a test double).

    ``login`` raises ``LoginRefused`` for wrong credentials and
    ``TransientError`` when the server cannot be reached.
    """

    async def login(self) -> None: ...

    async def fetch_staged(self, keywords: Sequence[str]) -> ParsedStaged: ...


class ParsedWorkers(Protocol):
    @property
    def workers(self) -> Sequence[RegisteredWorker]: ...

    @property
    def malformed(self) -> Sequence[object]: ...


class WorkerSource(Protocol):
    """Where CodaLab's registered workers come from (``GET /rest/workers/info``).

    ``checkout_worker`` makes CodaLab forget a worker whose job has ended
    (``POST /rest/workers/<id>/checkout``); it raises ``TransientError`` or
    ``RefusedError``.
    """

    async def fetch_workers(self) -> ParsedWorkers: ...

    async def checkout_worker(self, worker_id: str) -> None: ...


class Fatal:
    """Why the process must end with a failure status: set once, by the first to halt.

    Built before anything that can halt (the loops' guard, the failed-start
    limit) and handed to each; ``serve`` waits on ``event``.
    """

    def __init__(self, liveness: Liveness) -> None:
        self._liveness = liveness
        self.event = asyncio.Event()
        self.reason: str | None = None
        # Set when a loop met a configuration no restart can fix: ``serve`` raises it (exit 2).
        self.config_error: ConfigError | None = None

    def halt(self, loop: str, reason: str) -> None:
        """Mark ``loop`` dead (``/healthz``) and end the process; the first reason is kept."""
        self._liveness.died(loop, reason)
        if self.reason is None:
            self.reason = f"{loop}: {reason}"
        self.event.set()

    def misconfigured(self, loop: str, error: ConfigError) -> None:
        """``halt``, and end with the configuration error ``error`` (exit 2) instead of 1."""
        if self.reason is None:
            self.config_error = error
        self.halt(loop, str(error))

    def is_set(self) -> bool:
        return self.event.is_set()


@dataclass(frozen=True, slots=True)
class PoolRuntime:
    name: str
    policy: Policy
    backend: Backend
    keywords: tuple[str, ...]
    shape: WorkerShape
    prefilter: bool
    # The planner's view of this pool: policy kind, routing, pacing, provisioning.
    spec: PoolSpec
    exit_after_num_failed: int | None = None
    cancel_stuck_workers: bool = False
    # Check out, on their behalf, registered workers whose backend job has ended.
    checkout_exited_workers: bool = True
    # Counts a retried backend call (codalab_scaler_retries_total{peer="backend"}).
    on_retry: Callable[[str, BaseException], None] = lambda _source, _exc: None


@dataclass(frozen=True, slots=True)
class Context:
    pools: Mapping[str, PoolRuntime]
    bundles: BundleSource
    state: StateStore
    metrics: Metrics
    liveness: Liveness
    fatal: Fatal
    clock: Callable[[], float]
    sleep_time: float
    in_flight_timeout: float
    retry: RetryPolicy
    call_timeout: float = 30.0
    dry_run: bool = False
    # Set once when the app begins to stop: pollers end, a launch in progress finishes.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # With --leader-election: only the Lease holder launches. None: always launch.
    leadership: Leadership | None = None
    # workers/info; None (a test double without it): the view is never observed.
    workers: WorkerSource | None = None
    # Launches of one fast pass in progress at once.
    launch_concurrency: int = 8

    def may_act(self) -> bool:
        return self.leadership is None or self.leadership.is_leader()
