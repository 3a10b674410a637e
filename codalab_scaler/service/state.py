"""The shared snapshot: replaced whole on every change, waited on by the scaler."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import replace

from codalab_scaler.core.model import Observation, PoolState, RegisteredWorker, Snapshot
from codalab_scaler.core.planner import Plan
from codalab_scaler.service.waits import Waits

WorkersView = Observation[tuple[RegisteredWorker, ...]]


class StateStore:
    """Holds the current ``Snapshot``; each update swaps in a new one and wakes waiters.

    Updates are plain synchronous calls on the event loop, so each is atomic:
    a reader never sees half of a change.
    """

    def __init__(self, pools: Iterable[str], clock: Callable[[], float]) -> None:
        self._clock = clock
        self._snapshot = Snapshot(
            taken_at=clock(), pools={name: PoolState() for name in pools}, version=0
        )
        self._changed = asyncio.Event()
        self._plan: Plan | None = None
        # How long each staged bundle has waited, replaced whole by the planner pass.
        self.waits = Waits()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def plan(self) -> Plan | None:
        """The planner's latest pass over every pool (None before the first)."""
        return self._plan

    def set_plan(self, plan: Plan) -> None:
        self._plan = plan

    def update(self, pool: str, change: Callable[[PoolState], PoolState]) -> Snapshot:
        current = self._snapshot
        pools = dict(current.pools)
        pools[pool] = change(pools[pool])
        self._snapshot = replace(
            current, taken_at=self._clock(), pools=pools, version=current.version + 1
        )
        self._changed.set()
        self._changed = asyncio.Event()
        return self._snapshot

    def update_workers(self, change: Callable[[WorkersView], WorkersView]) -> Snapshot:
        """Replace the service's one workers/info view."""
        current = self._snapshot
        self._snapshot = replace(
            current,
            taken_at=self._clock(),
            workers=change(current.workers),
            version=current.version + 1,
        )
        self._changed.set()
        self._changed = asyncio.Event()
        return self._snapshot

    async def wait_newer(self, version: int, at_most: float) -> Snapshot:
        """Return as soon as the snapshot is newer than ``version``, or after ``at_most`` s."""
        if self._snapshot.version <= version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), at_most)
        return self._snapshot
