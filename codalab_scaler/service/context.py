"""The parts a loop works with, wired once by the service and passed explicitly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from codalab_scaler.core.decision import Decision, Policy
from codalab_scaler.core.model import StagedBundle
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.service.health import Liveness
from codalab_scaler.service.metrics import Metrics
from codalab_scaler.service.state import StateStore
from codalab_scaler.sources.backends.base import Backend
from codalab_scaler.sources.retry import RetryPolicy


class ParsedStaged(Protocol):
    @property
    def bundles(self) -> Sequence[StagedBundle]: ...

    @property
    def malformed(self) -> Sequence[object]: ...


class BundleSource(Protocol):
    """Where staged bundles come from (the CodaLab client, or a test double)."""

    async def fetch_staged(self, keywords: Sequence[str]) -> ParsedStaged: ...


@dataclass(frozen=True, slots=True)
class PoolRuntime:
    name: str
    policy: Policy
    backend: Backend
    keywords: tuple[str, ...]
    shape: WorkerShape
    prefilter: bool
    exit_after_num_failed: int | None = None
    # Counts a retried backend call (codalab_scaler_retries_total{peer="backend"}).
    on_retry: Callable[[str, BaseException], None] = lambda _source, _exc: None


@dataclass(slots=True)
class Context:
    pools: dict[str, PoolRuntime]
    bundles: BundleSource
    state: StateStore
    metrics: Metrics
    liveness: Liveness
    clock: Callable[[], float]
    sleep_time: float
    in_flight_timeout: float
    retry: RetryPolicy
    call_timeout: float = 30.0
    dry_run: bool = False
    decisions: dict[str, Decision] = field(default_factory=dict)
    failed_starts: dict[str, int] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Ends the process with a failure status (set by the service): (loop name, reason).
    halt: Callable[[str, str], None] = field(default=lambda _loop, _reason: None)
