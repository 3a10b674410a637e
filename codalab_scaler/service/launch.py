"""Act: launch what a pool's plan asks for, and record each attempt.

``compat`` pools launch one at a time, as the original: the first refusal or
failure ends the pass and every attempt starts the cooldown.  ``fast`` pools
launch their whole pass concurrently (``Context.launch_concurrency`` at a
time); each accepted launch is counted in flight the moment it is accepted,
and any refusal or failure backs the pool off (see ``planning``).
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import Callable
from dataclasses import replace

import structlog

from codalab_scaler.core.errors import LaunchRefused, TransientError
from codalab_scaler.core.model import InFlightLaunch, PoolState
from codalab_scaler.service.context import Context, PoolRuntime

log = structlog.get_logger()


class Outcome(enum.StrEnum):
    LAUNCHED = "launched"
    REFUSED = "refused"
    FAILED = "failed"
    DRY_RUN = "dry_run"
    SKIPPED = "skipped"


def _launched(at: float, flight: InFlightLaunch | None = None) -> Callable[[PoolState], PoolState]:
    """Record a launch attempt (only an accepted one is in flight): it starts the cooldown."""
    added = () if flight is None else (flight,)
    return lambda s: replace(s, in_flight=(*s.in_flight, *added), last_launch_at=at)


async def launch_one(ctx: Context, pool: PoolRuntime, reason: str) -> Outcome:
    """One launch attempt for ``pool``, counted, logged and recorded in the snapshot."""
    if ctx.stopping.is_set():
        log.info("scaler.launch_skipped_stopping", pool=pool.name)
        return Outcome.SKIPPED
    if not ctx.may_act():  # checked before every call: a lost Lease stops the next one
        return Outcome.SKIPPED
    worker_id = uuid.uuid4().hex
    if ctx.dry_run:
        return await _describe(ctx, pool, worker_id)
    try:
        job_id = await pool.backend.launch(worker_id)
    except LaunchRefused as exc:
        ctx.metrics.launches.labels(pool=pool.name, outcome="refused").inc()
        log.error("scaler.launch_refused", pool=pool.name, worker_id=worker_id, error=str(exc))
        # The cooldown applies to an attempt, as the original's (whose backends
        # mostly log and return): a refusing backend is not asked every pass.
        ctx.state.update(pool.name, _launched(ctx.clock()))
        return Outcome.REFUSED
    except TransientError as exc:
        ctx.metrics.launches.labels(pool=pool.name, outcome="failed").inc()
        log.warning("scaler.launch_failed", pool=pool.name, worker_id=worker_id, error=str(exc))
        ctx.state.update(pool.name, _launched(ctx.clock()))
        return Outcome.FAILED
    at = ctx.clock()
    flight = InFlightLaunch(job_id=job_id, worker_id=worker_id, launched_at=at)
    ctx.state.update(pool.name, _launched(at, flight))
    ctx.metrics.launches.labels(pool=pool.name, outcome="launched").inc()
    log.info("scaler.launched", pool=pool.name, worker_id=worker_id, job_id=job_id, reason=reason)
    return Outcome.LAUNCHED


async def _describe(ctx: Context, pool: PoolRuntime, worker_id: str) -> Outcome:
    """A dry run's launch: log what the backend would submit."""
    try:
        plan = await pool.backend.describe_launch(worker_id)
    except (LaunchRefused, TransientError) as exc:
        log.error("scaler.dry_run_refused", pool=pool.name, error=str(exc))
        return Outcome.REFUSED
    ctx.metrics.launches.labels(pool=pool.name, outcome="dry_run").inc()
    ctx.state.update(pool.name, _launched(ctx.clock()))
    log.info("scaler.dry_run_launch", pool=pool.name, worker_id=worker_id, would=plan)
    return Outcome.DRY_RUN


async def launch_in_order(ctx: Context, pool: PoolRuntime, n: int, reason: str) -> list[Outcome]:
    """Up to ``n`` launches one after the other; the first that does not succeed ends them."""
    outcomes: list[Outcome] = []
    for _ in range(n):
        outcome = await launch_one(ctx, pool, reason)
        outcomes.append(outcome)
        if outcome not in (Outcome.LAUNCHED, Outcome.DRY_RUN):
            break
    return outcomes


async def launch_together(ctx: Context, pool: PoolRuntime, n: int, reason: str) -> list[Outcome]:
    """``n`` launches at once, at most ``ctx.launch_concurrency`` in progress."""
    gate = asyncio.Semaphore(max(ctx.launch_concurrency, 1))

    async def one() -> Outcome:
        async with gate:
            return await launch_one(ctx, pool, reason)

    return list(await asyncio.gather(*(one() for _ in range(n))))
