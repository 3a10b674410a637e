"""Decide and act: one planner pass over every pool (see ``planning``), per-pool results."""

from __future__ import annotations

from codalab_scaler.core.decision import Decision
from codalab_scaler.service.context import Context, PoolRuntime
from codalab_scaler.service.planning import plan_pass

__all__ = ["plan_pass", "scale_pool"]


async def scale_pool(ctx: Context, pool: PoolRuntime) -> tuple[Decision, int]:
    """One planner pass over every pool; ``pool``'s decision and how many it launched.

    Pools are planned together (each staged bundle is counted by one pool
    only), so stepping one pool steps them all.
    """
    results = await plan_pass(ctx)
    return results[pool.name]
