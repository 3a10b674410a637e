"""Decide and act: apply the rules to a pool's snapshot and launch what they ask for."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace

import structlog

from codalab_scaler.core.decision import Decision, decide
from codalab_scaler.core.errors import LaunchRefused, TransientError
from codalab_scaler.core.model import InFlightLaunch, PoolState
from codalab_scaler.service.context import Context, PoolRuntime

log = structlog.get_logger()


def _launched(at: float, flight: InFlightLaunch | None = None) -> Callable[[PoolState], PoolState]:
    """Record a launch attempt (only an accepted one is in flight): it starts the cooldown."""
    added = () if flight is None else (flight,)
    return lambda s: replace(s, in_flight=(*s.in_flight, *added), last_launch_at=at)


def _summary(d: Decision) -> tuple[object, ...]:
    return (d.launch, d.reason, d.blocked_by, d.stale, d.counts)


async def scale_pool(ctx: Context, pool: PoolRuntime) -> tuple[Decision, int]:
    """One pass for one pool: decide, log, count, launch. Returns (decision, launched)."""
    now = ctx.clock()
    current = ctx.state.snapshot.pools[pool.name]
    decision = decide(current, pool.policy, now)
    previous = current.last_decision
    ctx.state.update(pool.name, lambda s: replace(s, last_decision=decision))
    ctx.metrics.decisions.labels(pool=pool.name, reason=decision.reason.value).inc()
    changed = previous is None or _summary(previous) != _summary(decision)
    acting = ctx.may_act()  # a standby decides (for /status) but launches nothing
    (log.info if acting and (changed or decision.launch) else log.debug)(
        "scaler.decided",
        pool=pool.name,
        launch=decision.launch,
        reason=decision.reason.value,
        staged=decision.counts.staged,
        pending=decision.counts.pending,
        active=decision.counts.active,
        min=pool.policy.min_workers,
        max=pool.policy.max_workers,
        blocked_by=[r.value for r in decision.blocked_by],
        stale=list(decision.stale),
        standby=not acting,
    )
    launched = 0
    for _ in range(decision.launch):
        if ctx.stopping.is_set():
            log.info("scaler.launch_skipped_stopping", pool=pool.name)
            break
        if not ctx.may_act():  # checked before every call: a lost Lease stops the next one
            break
        worker_id = uuid.uuid4().hex
        if ctx.dry_run:
            try:
                plan = await pool.backend.describe_launch(worker_id)
            except (LaunchRefused, TransientError) as exc:
                log.error("scaler.dry_run_refused", pool=pool.name, error=str(exc))
                break
            ctx.metrics.launches.labels(pool=pool.name, outcome="dry_run").inc()
            ctx.state.update(pool.name, _launched(ctx.clock()))
            log.info("scaler.dry_run_launch", pool=pool.name, worker_id=worker_id, would=plan)
            continue
        try:
            job_id = await pool.backend.launch(worker_id)
        except LaunchRefused as exc:
            ctx.metrics.launches.labels(pool=pool.name, outcome="refused").inc()
            log.error("scaler.launch_refused", pool=pool.name, worker_id=worker_id, error=str(exc))
            # The cooldown applies to an attempt, as the original's (whose backends
            # mostly log and return): a refusing backend is not asked every pass.
            ctx.state.update(pool.name, _launched(ctx.clock()))
            break
        except TransientError as exc:
            ctx.metrics.launches.labels(pool=pool.name, outcome="failed").inc()
            log.warning("scaler.launch_failed", pool=pool.name, worker_id=worker_id, error=str(exc))
            ctx.state.update(pool.name, _launched(ctx.clock()))
            break
        at = ctx.clock()
        flight = InFlightLaunch(job_id=job_id, worker_id=worker_id, launched_at=at)
        ctx.state.update(pool.name, _launched(at, flight))
        ctx.metrics.launches.labels(pool=pool.name, outcome="launched").inc()
        launched += 1
        log.info(
            "scaler.launched",
            pool=pool.name,
            worker_id=worker_id,
            job_id=job_id,
            reason=decision.reason.value,
        )
    return decision, launched
