"""How long staged bundles wait: from first seen staged to a launch for them, and to leaving.

Kept per staged uuid across passes (a frozen value, replaced whole on the
``StateStore``); observed into two histograms and shown in ``/status``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from codalab_scaler.core.placement import Where
from codalab_scaler.core.planner import Plan, PolicyKind, PoolPlan
from codalab_scaler.service.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Waits:
    """When each staged bundle was first seen, its pool, and those a launch was made for."""

    first_seen: Mapping[str, float] = field(default_factory=dict)
    pool_of: Mapping[str, str] = field(default_factory=dict)
    launched_for: frozenset[str] = frozenset()


def _staged(plan: Plan) -> dict[str, str]:
    """Every staged bundle of the plan and the pool that counts it ("" for none)."""
    pools = {s.uuid: s.held_by or "" for s in plan.routing.unroutable}
    for name in plan.pools:
        pools.update((b.uuid, name) for b in plan.routing.counted(name))
    return pools


def seen(waits: Waits, plan: Plan, *, complete: bool, now: float, metrics: Metrics) -> Waits:
    """Track a pass's staged bundles; those gone (when every view is ``complete``) left staged."""
    current = _staged(plan)
    first = {uuid: waits.first_seen.get(uuid, now) for uuid in current}
    pools = dict(current)
    if complete:
        for uuid, since in waits.first_seen.items():
            if uuid not in current:
                pool = waits.pool_of.get(uuid, "")
                metrics.bundle_staged_seconds.labels(pool=pool).observe(now - since)
    else:  # a view missing: a bundle not seen now may still be staged
        first = {**waits.first_seen, **first}
        pools = {**waits.pool_of, **pools}
    return Waits(first, pools, waits.launched_for & frozenset(first))


def launched(
    waits: Waits, plan: Plan, pool: PoolPlan, count: int, now: float, metrics: Metrics
) -> Waits:
    """``count`` launches of ``pool`` went out: the bundles they are for stop waiting for one."""
    if count <= 0:
        return waits
    if pool.kind is PolicyKind.FAST:
        new = [f"new-{i}" for i in range(1, count + 1)]
        uuids = [p.uuid for p in pool.placements if p.where is Where.NEW and p.worker in new]
    else:
        waiting = [b.uuid for b in plan.routing.counted(pool.name)]
        uuids = [u for u in sorted(waiting) if u not in waits.launched_for][:count]
    fresh = [u for u in uuids if u not in waits.launched_for and u in waits.first_seen]
    for uuid in fresh:
        wait = now - waits.first_seen[uuid]
        metrics.bundle_launch_wait_seconds.labels(pool=pool.name).observe(wait)
    return Waits(waits.first_seen, waits.pool_of, waits.launched_for | frozenset(fresh))
