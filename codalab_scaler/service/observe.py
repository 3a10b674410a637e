"""Observe: poll CodaLab's staged bundles and each backend's jobs into the snapshot.

A failed poll keeps the last good value but marks it failed, so the rules
see a stale view (never an empty one) and launch nothing for that pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import structlog

from codalab_scaler.core.errors import RefusedError, ScalerError, TransientError
from codalab_scaler.core.model import (
    FilteredBundle,
    InFlightLaunch,
    JobState,
    Observation,
    PoolState,
    WorkerJob,
)
from codalab_scaler.core.prefilter import prefilter
from codalab_scaler.service.context import Context, PoolRuntime
from codalab_scaler.sources.retry import call_with_retry

log = structlog.get_logger()


def reconcile_in_flight(
    in_flight: tuple[InFlightLaunch, ...],
    jobs: tuple[WorkerJob, ...],
    now: float,
    timeout: float,
) -> tuple[tuple[InFlightLaunch, ...], tuple[InFlightLaunch, ...]]:
    """Split in-flight launches into (still waiting, expired); listed ones are dropped."""
    listed = {job.job_id for job in jobs}
    waiting = tuple(
        f for f in in_flight if f.job_id not in listed and now - f.launched_at <= timeout
    )
    expired = tuple(
        f for f in in_flight if f.job_id not in listed and now - f.launched_at > timeout
    )
    return waiting, expired


def _failed(ctx: Context, pool: PoolRuntime, source: str, exc: ScalerError, started: float) -> None:
    """Count and log a failed poll; keep the last good value but mark the view failed."""
    kind = "transient" if isinstance(exc, TransientError) else "refused"
    now = ctx.clock()
    error = str(exc)
    ctx.metrics.poll_errors.labels(pool=pool.name, source=source, kind=kind).inc()
    ctx.metrics.poll_duration.labels(pool=pool.name, source=source).observe(now - started)

    def mark(s: PoolState) -> PoolState:
        return replace(s, **{source: getattr(s, source).failed(error)})

    previous = _observation(ctx, pool, source).error
    ctx.state.update(pool.name, mark)
    # Warn when a source starts failing or fails differently; an outage of hours
    # would otherwise repeat the same warning every poll (metrics count each one).
    emit = log.warning if previous != error else log.debug
    emit("poll.failed", pool=pool.name, source=source, kind=kind, error=error)


def _observation(ctx: Context, pool: PoolRuntime, source: str) -> Observation[Any]:
    """The pool's observation of ``source``, which names its ``PoolState`` field."""
    observation: Observation[Any] = getattr(ctx.state.snapshot.pools[pool.name], source)
    return observation


def _recovered(ctx: Context, pool: PoolRuntime, source: str, now: float) -> None:
    previous = _observation(ctx, pool, source)
    if previous.error is not None:
        since = previous.observed_at
        log.info(
            "poll.recovered",
            pool=pool.name,
            source=source,
            stale_seconds=None if since is None else round(now - since, 1),
        )


FILTERED_EXAMPLES = 5  # bundles named in the one info event per poll; each one goes to debug


def _report_filtered(pool: PoolRuntime, new: Sequence[FilteredBundle]) -> None:
    """One event for the bundles this poll filtered out for the first time.

    A queue of thousands of bundles too large for the pool would otherwise
    print a line each (8,750 lines, most of ``--once``'s CPU over 10,000
    bundles); each one is logged at debug, only when debug is on.
    """
    if not new:
        return
    log.info(
        "bundles.filtered",
        pool=pool.name,
        count=len(new),
        reasons=dict(Counter(item.reason for item in new)),
        examples=[_filtered_fields(item) for item in new[:FILTERED_EXAMPLES]],
    )
    if log.is_enabled_for(logging.DEBUG):
        for item in new:
            log.debug("bundle.filtered", pool=pool.name, **_filtered_fields(item))


def _filtered_fields(item: FilteredBundle) -> dict[str, object]:
    return {"uuid": item.uuid, "reason": item.reason, "requested": item.requested,
            "available": item.available}  # fmt: skip


async def poll_bundles(ctx: Context, pool: PoolRuntime) -> bool:
    """One poll of the staged bundles for ``pool``; True when it succeeded."""
    started = ctx.clock()
    try:
        parsed = await ctx.bundles.fetch_staged(pool.keywords)
    except (TransientError, RefusedError) as exc:
        _failed(ctx, pool, "bundles", exc, started)
        return False
    now = ctx.clock()
    ctx.metrics.poll_duration.labels(pool=pool.name, source="bundles").observe(now - started)
    view = prefilter(
        parsed.bundles, pool.shape, enabled=pool.prefilter, malformed=len(parsed.malformed)
    )
    if view.malformed:
        ctx.metrics.malformed.labels(pool=pool.name).inc(view.malformed)
    previous = ctx.state.snapshot.pools[pool.name].bundles.value
    seen = {f.uuid for f in previous.filtered} if previous is not None else set()
    _report_filtered(pool, [item for item in view.filtered if item.uuid not in seen])
    _recovered(ctx, pool, "bundles", now)
    ctx.state.update(pool.name, lambda s: replace(s, bundles=s.bundles.succeeded(view, now)))
    log.debug(
        "poll.bundles",
        pool=pool.name,
        staged=len(view.staged),
        filtered=len(view.filtered),
        malformed=view.malformed,
    )
    return True


async def _list_jobs(ctx: Context, pool: PoolRuntime) -> Sequence[WorkerJob]:
    """One bounded call: a backend that hangs makes the view stale, not the loop stuck."""
    try:
        async with asyncio.timeout(ctx.call_timeout):
            return await pool.backend.list_jobs()
    except TimeoutError:
        raise TransientError(f"listing jobs took longer than {ctx.call_timeout:g}s") from None


def _failed_starts(ctx: Context, pool: PoolRuntime, failed: Sequence[WorkerJob]) -> None:
    """Count jobs that ended failed (in the snapshot); past the pool's limit the process ends."""
    if not failed:
        return
    snapshot = ctx.state.update(
        pool.name, lambda s: replace(s, failed_starts=s.failed_starts + len(failed))
    )
    total = snapshot.pools[pool.name].failed_starts
    ctx.metrics.failed_starts.labels(pool=pool.name).inc(len(failed))
    for job in failed:
        log.error(
            "worker.failed_start",
            pool=pool.name,
            job_id=job.job_id,
            worker_id=job.worker_id,
            reason=job.reason,
            failed_starts=total,
        )
    limit = pool.exit_after_num_failed
    if limit is not None and total >= limit:
        log.error("scaler.too_many_failed_starts", pool=pool.name, failed_starts=total, limit=limit)
        ctx.fatal.halt(f"jobs:{pool.name}", f"{total} workers failed to start (limit {limit})")


async def poll_jobs(ctx: Context, pool: PoolRuntime) -> bool:
    """One poll of ``pool``'s backend; True when it succeeded."""
    started = ctx.clock()
    try:
        jobs = tuple(
            await call_with_retry(
                "backend",
                lambda: _list_jobs(ctx, pool),
                ctx.retry,
                pool.on_retry,
            )
        )
    except (TransientError, RefusedError) as exc:
        _failed(ctx, pool, "jobs", exc, started)
        return False
    now = ctx.clock()
    ctx.metrics.poll_duration.labels(pool=pool.name, source="jobs").observe(now - started)
    listed = jobs
    jobs = tuple(job for job in listed if job.state is not JobState.FAILED)
    _failed_starts(ctx, pool, [job for job in listed if job.state is JobState.FAILED])

    def apply(s: PoolState) -> PoolState:
        waiting, expired = reconcile_in_flight(s.in_flight, listed, now, ctx.in_flight_timeout)
        for launch in expired:
            ctx.metrics.in_flight_expired.labels(pool=pool.name).inc()
            log.warning(
                "scaler.launch_never_listed",
                pool=pool.name,
                job_id=launch.job_id,
                worker_id=launch.worker_id,
                waited=round(now - launch.launched_at, 1),
            )
        return replace(s, jobs=s.jobs.succeeded(jobs, now), in_flight=waiting)

    _recovered(ctx, pool, "jobs", now)
    ctx.state.update(pool.name, apply)
    log.debug("poll.jobs", pool=pool.name, jobs=len(jobs))
    return True
