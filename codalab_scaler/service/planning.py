"""The planner pass: observe demand once for every pool, plan them together, act, remember.

- ``poll_demand``: every distinct keyword set of the pools is fetched once
  per pass (pools with the same keywords share the answer) and each pool's
  view is stored as before (``observe.poll_bundles``).
- ``poll_workers``: ``GET /rest/workers/info`` once per pass into the
  snapshot's one workers view; a failure marks it failed (a stale supply view:
  ``fast`` pools launch nothing), malformed entries are counted.
- ``plan_pass``: ``core.planner.plan`` over every pool, then each pool's
  launches (compat: in order, as the original; fast: concurrently), the
  planner's memory stored back (tokens spent, backoff on a refused or failed
  launch or a failed start, stuck workers reported once and cancelled when
  asked; a dry run only logs what it would cancel).  A ``compat`` pool backs
  off after a refused or failed launch only in a service of several pools,
  where its bundles can fall through; alone, it keeps the original's cooldown
  exactly, and it never backs off for a failed start (the original's rules
  count those).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

import structlog
from prometheus_client import Counter as PromCounter

from codalab_scaler.core.decision import Decision
from codalab_scaler.core.errors import RefusedError, TransientError
from codalab_scaler.core.model import Attempts, PlannerMemory, PoolState
from codalab_scaler.core.planner import (
    Plan,
    PolicyKind,
    PoolInput,
    PoolPlan,
    after_failure,
    after_launches,
    plan,
)
from codalab_scaler.core.routing import Stranded
from codalab_scaler.core.supply import PoolWorker, WorkerState
from codalab_scaler.service import waits
from codalab_scaler.service.context import (
    BundleSource,
    Context,
    ParsedStaged,
    PoolRuntime,
    WorkerSource,
)
from codalab_scaler.service.launch import Outcome, launch_in_order, launch_together
from codalab_scaler.service.observe import poll_bundles

log = structlog.get_logger()

# Where the backoff's jitter comes from; a test may pin it.
jitter: Callable[[], float] = random.random


class SharedSearch:
    """A bundle source for one pass: each distinct keyword set is fetched once, then shared."""

    def __init__(self, source: BundleSource) -> None:
        self._source = source
        self._fetches: dict[tuple[str, ...], asyncio.Task[ParsedStaged]] = {}

    async def login(self) -> None:
        await self._source.login()

    async def fetch_staged(self, keywords: Sequence[str]) -> ParsedStaged:
        key = tuple(keywords)
        if key not in self._fetches:
            self._fetches[key] = asyncio.ensure_future(self._source.fetch_staged(key))
        return await asyncio.shield(self._fetches[key])


async def poll_demand(ctx: Context) -> dict[str, bool]:
    """One demand poll for the whole service; per pool, whether its view was refreshed."""
    shared = replace(ctx, bundles=SharedSearch(ctx.bundles))
    names = list(ctx.pools)
    done = await asyncio.gather(*(poll_bundles(shared, ctx.pools[n]) for n in names))
    return dict(zip(names, done, strict=True))


async def poll_workers(ctx: Context) -> bool:
    """One poll of workers/info; True when it succeeded."""
    if ctx.workers is None:
        return False
    try:
        parsed = await ctx.workers.fetch_workers()
    except (TransientError, RefusedError) as exc:
        kind = "transient" if isinstance(exc, TransientError) else "refused"
        ctx.metrics.workers_poll_errors.labels(kind=kind).inc()
        previous = ctx.state.snapshot.workers.error
        error = str(exc)
        ctx.state.update_workers(lambda o: o.failed(error))
        (log.warning if previous != error else log.debug)(
            "poll.failed", source="workers", kind=kind, error=error
        )
        return False
    now = ctx.clock()
    if parsed.malformed:
        ctx.metrics.malformed_workers.inc(len(parsed.malformed))
    if ctx.state.snapshot.workers.error is not None:
        log.info("poll.recovered", source="workers")
    workers = tuple(parsed.workers)
    ctx.state.update_workers(lambda o: o.succeeded(workers, now))
    return True


async def plan_pass(ctx: Context) -> dict[str, tuple[Decision, int]]:
    """Plan every pool at once, then act; per pool, its decision and how many it launched."""
    now = ctx.clock()
    snapshot = ctx.state.snapshot
    previous = ctx.state.plan
    inputs = [PoolInput(rt.spec, snapshot.pools[name]) for name, rt in ctx.pools.items()]
    result = plan(inputs, snapshot.workers, now)
    ctx.state.set_plan(result)
    _report_routing(previous, result)
    complete = all(s.bundles.ok for s in snapshot.pools.values())
    ctx.state.waits = waits.seen(
        ctx.state.waits, result, complete=complete, now=now, metrics=ctx.metrics
    )
    olds = {name: snapshot.pools[name].last_decision for name in ctx.pools}
    stuck = {name: _remember(ctx, rt, result.pools[name], previous, now)
             for name, rt in ctx.pools.items()}  # fmt: skip
    acted = await asyncio.gather(
        *(_act(ctx, rt, result.pools[n], olds[n], stuck[n]) for n, rt in ctx.pools.items())
    )
    return dict(zip(ctx.pools, acted, strict=True))


def _remember(
    ctx: Context, rt: PoolRuntime, p: PoolPlan, previous: Plan | None, now: float
) -> tuple[PoolWorker, ...]:
    """Store the plan's memory and decision; report backoff changes and new stuck workers.

    Returns the workers found stuck in this pass (each is reported, and
    cancelled when asked, once).
    """
    state = ctx.state.snapshot.pools[rt.name]
    memory = p.memory
    fit = [job for job in p.registered if job not in p.smaller]
    if fit and state.memory.backoff.until is not None:
        log.info("pool.backoff_reset", pool=rt.name, registered=fit)
    _warn_small(rt, p)
    if rt.spec.kind is PolicyKind.FAST:
        # A worker smaller than the shape: bundles placed by shape will not fit it, and
        # launching on would reach max. One failure per pass, whatever the causes.
        why = [cause for cause, found in (
            ("failed_start", state.failed_starts > memory.failed_starts_seen),
            ("worker_smaller_than_shape", bool(p.smaller)),
        ) if found]  # fmt: skip
        if why:
            memory = _back_off(ctx, rt, memory, now, ",".join(why))
    memory = replace(memory, failed_starts_seen=state.failed_starts)
    until = state.memory.backoff.until
    if previous is not None and until is not None and previous.at < until <= now:
        log.info("pool.backoff_ended", pool=rt.name)
    was = previous.pools.get(rt.name) if previous is not None else None
    known_stuck = {w.job_id for w in was.by_state(WorkerState.STUCK)} if was else set()
    new_stuck = tuple(w for w in p.by_state(WorkerState.STUCK) if w.job_id not in known_stuck)
    for worker in new_stuck:
        ctx.metrics.stuck_workers.labels(pool=rt.name).inc()
        log.warning(
            "worker.stuck",
            pool=rt.name,
            job_id=worker.job_id,
            worker_id=worker.worker_id,
            booting_seconds=None if worker.since is None else round(now - worker.since, 1),
            cancel=rt.cancel_stuck_workers,
        )
    decision = p.decision
    ctx.state.update(rt.name, lambda s: replace(s, memory=memory, last_decision=decision))
    return new_stuck


def _warn_small(rt: PoolRuntime, p: PoolPlan) -> None:
    """Warn when a worker registers with less than the pool's shape.

    The bundles placed by shape will not fit it, and a fast pool would launch
    again for them, up to max (a GPU pool whose workers find no GPU): a fast
    pool backs off instead, so its bundles fall through or show as unroutable.
    """
    shape = rt.spec.route.shape
    for worker in p.workers:
        total = worker.total
        if worker.job_id not in p.smaller or total is None:
            continue
        log.warning(
            "worker.smaller_than_shape",
            pool=rt.name,
            job_id=worker.job_id,
            registered={"cpus": total.cpus, "gpus": total.gpus, "memory_bytes": total.memory_bytes},
            shape={"cpus": shape.cpus, "gpus": shape.gpus, "memory_bytes": shape.memory_bytes},
        )


def _back_off(
    ctx: Context, rt: PoolRuntime, memory: PlannerMemory, now: float, why: str
) -> PlannerMemory:
    memory = after_failure(rt.spec, memory, now, jitter())
    ctx.metrics.backoffs.labels(pool=rt.name).inc()
    log.warning(
        "pool.backing_off",
        pool=rt.name,
        why=why,
        failures=memory.backoff.failures,
        seconds=round(memory.backoff.remaining(now), 1),
    )
    return memory


def _update_memory(
    ctx: Context, name: str, change: Callable[[PlannerMemory], PlannerMemory]
) -> None:
    ctx.state.update(name, lambda s: replace(s, memory=change(s.memory)))


UNROUTABLE_EXAMPLES = 5  # bundles named in the one warning per pass; each one goes to debug


def _report_routing(previous: Plan | None, current: Plan) -> None:
    """One warning per pass for the bundles that became unroutable or changed reason.

    A pool outage strands every staged bundle at once: one summary (count by
    reason, a few examples) instead of a line per bundle; each at debug.
    """
    before: Mapping[str, Stranded] = (
        {s.uuid: s for s in previous.routing.unroutable} if previous is not None else {}
    )
    new = [
        stranded
        for stranded in current.routing.unroutable
        if (old := before.get(stranded.uuid)) is None or old.reason != stranded.reason
    ]
    if not new:
        return
    log.warning(
        "bundles.unroutable",
        count=len(new),
        reasons=dict(Counter(stranded.reason.value for stranded in new)),
        examples=[_stranded_fields(stranded) for stranded in new[:UNROUTABLE_EXAMPLES]],
    )
    if log.is_enabled_for(logging.DEBUG):  # thousands of lines otherwise built for nothing
        for stranded in new:
            log.debug("bundle.unroutable", **_stranded_fields(stranded))


def _stranded_fields(stranded: Stranded) -> dict[str, object]:
    return {
        "uuid": stranded.uuid,
        "reason": stranded.reason.value,
        "resource": stranded.resource,
        "requested": stranded.requested,
        "largest": stranded.largest,
        "held_by": stranded.held_by,
    }


def _log_decision(ctx: Context, rt: PoolRuntime, p: PoolPlan, old: Decision | None) -> None:
    decision = p.decision
    if decision is None:  # pragma: no cover - both policies set it
        return
    ctx.metrics.decisions.labels(pool=rt.name, reason=decision.reason.value).inc()
    summary = (decision.launch, decision.reason, decision.blocked_by, decision.stale,
               decision.counts)  # fmt: skip
    changed = old is None or summary != (old.launch, old.reason, old.blocked_by, old.stale,
                                         old.counts)  # fmt: skip
    acting = ctx.may_act()  # a standby decides (for /status) but launches nothing
    (log.info if acting and (changed or decision.launch) else log.debug)(
        "scaler.decided",
        pool=rt.name,
        policy=rt.spec.kind.value,
        launch=decision.launch,
        reason=decision.reason.value,
        staged=decision.counts.staged,
        pending=decision.counts.pending,
        active=decision.counts.active,
        min=rt.policy.min_workers,
        max=rt.policy.max_workers,
        blocked_by=[r.value for r in decision.blocked_by],
        stale=list(decision.stale),
        standby=not acting,
        needed=p.needed,
        tokens=p.tokens if rt.spec.kind is PolicyKind.FAST else None,
    )


async def _act(
    ctx: Context, rt: PoolRuntime, p: PoolPlan, old: Decision | None, stuck: Sequence[PoolWorker]
) -> tuple[Decision, int]:
    decision = p.decision
    assert decision is not None  # noqa: S101 - both policies set it; narrows the type
    _log_decision(ctx, rt, p, old)
    fast = rt.spec.kind is PolicyKind.FAST
    if fast:
        outcomes = await launch_together(ctx, rt, p.launch, decision.reason.value)
    else:
        outcomes = await launch_in_order(ctx, rt, p.launch, decision.reason.value)
    attempts = sum(1 for o in outcomes if o is not Outcome.SKIPPED)
    now = ctx.clock()
    if fast and attempts:
        _update_memory(ctx, rt.name, lambda m: after_launches(rt.spec, m, attempts, now))
    if any(o is Outcome.LAUNCHED for o in outcomes):
        # A worker boots from its launch, not from when the backend first lists it.
        _update_memory(ctx, rt.name, lambda m: _booting_from_launch(m, ctx, rt.name))
    # A compat pool backs off only where another pool can take its bundles; alone it
    # keeps the original's rule (the cooldown) exactly.
    backs_off = fast or len(ctx.pools) > 1
    if backs_off and any(o in (Outcome.REFUSED, Outcome.FAILED) for o in outcomes):
        why = "launch_refused" if Outcome.REFUSED in outcomes else "launch_failed"
        _update_memory(ctx, rt.name, lambda m: _back_off(ctx, rt, m, now, why))
    if rt.cancel_stuck_workers and ctx.may_act():
        await _cancel_stuck(ctx, rt, p, stuck, now)
    if rt.checkout_exited_workers and ctx.workers is not None and ctx.may_act():
        await _check_out_exited(ctx, ctx.workers, rt, p)
    launched = sum(1 for o in outcomes if o is Outcome.LAUNCHED)
    latest = ctx.state.plan
    if launched and latest is not None:
        ctx.state.waits = waits.launched(
            ctx.state.waits, latest, p, launched, ctx.clock(), ctx.metrics
        )
    return decision, launched


async def _cancel_stuck(
    ctx: Context, rt: PoolRuntime, p: PoolPlan, new_stuck: Sequence[PoolWorker], now: float
) -> None:
    """Cancel every stuck worker not cancelled yet; a failure is tried again next pass."""
    if ctx.dry_run:
        if new_stuck:
            log.info("scaler.dry_run_cancel", pool=rt.name, job_ids=[w.job_id for w in new_stuck])
        return
    listed = {w.job_id for w in p.workers}
    stuck = [w.job_id for w in p.by_state(WorkerState.STUCK)]
    before = ctx.state.snapshot.pools[rt.name].cancels
    after = await _once_each(
        ctx, rt, stuck, _kept(before, listed), rt.backend.cancel,
        counter=ctx.metrics.cancelled_workers, ok="cancelled", key="job_id",
        events=("worker.cancelled", "worker.cancel_failed"), reason="stuck",
    )  # fmt: skip
    cancelled = after.done - before.done
    for job_id in cancelled:
        ctx.state.update(rt.name, functools.partial(_forget_flight, job_id=job_id))
    ctx.state.update(rt.name, lambda s: replace(s, cancels=after))
    if cancelled:
        _update_memory(ctx, rt.name, lambda m: _back_off(ctx, rt, m, now, "stuck_cancelled"))


async def _check_out_exited(
    ctx: Context, source: WorkerSource, rt: PoolRuntime, p: PoolPlan
) -> None:
    """Check out each worker the planner proved dead (job gone, check-ins stopped), once.

    A ``cl-worker`` that exits idle does not check out, and CodaLab's bundle
    manager keeps dispatching runs to it (each lost) for 60 s.
    """
    before = _kept(ctx.state.snapshot.pools[rt.name].checkouts, set(p.exited))
    todo = [w for w in p.exited if w not in before.done]
    if ctx.dry_run:
        if todo:
            log.info("scaler.dry_run_checkout", pool=rt.name, worker_ids=todo)
        after = replace(before, done=before.done | set(todo))  # said once
    else:
        after = await _once_each(
            ctx, rt, todo, before, source.checkout_worker,
            counter=ctx.metrics.checked_out_workers, ok="checked_out", key="worker_id",
            events=("worker.checked_out", "worker.checkout_failed"), reason="job_ended",
        )  # fmt: skip
    if after != ctx.state.snapshot.pools[rt.name].checkouts:
        ctx.state.update(rt.name, lambda s: replace(s, checkouts=after))


def _kept(attempts: Attempts, concerned: set[str]) -> Attempts:
    """``attempts`` for the items still ``concerned`` only (the others are gone)."""
    return Attempts(
        done=frozenset(i for i in attempts.done if i in concerned),
        failures={i: n for i, n in attempts.failures.items() if i in concerned},
    )


async def _once_each(  # noqa: PLR0913 - the two actions differ in exactly these
    ctx: Context,
    rt: PoolRuntime,
    items: Sequence[str],
    attempts: Attempts,
    call: Callable[[str], Awaitable[None]],
    *,
    counter: PromCounter,
    ok: str,
    key: str,
    events: tuple[str, str],
    reason: str,
) -> Attempts:
    """``call`` each item not done yet, together (bounded, like launches), each counted.

    A slow peer delays the pass by one call, not one per item.  A failure is
    tried again next pass: a warning for an item's first failure, info after
    (a missing permission would otherwise warn on every pass).
    """
    done, failures = set(attempts.done), dict(attempts.failures)
    gate = asyncio.Semaphore(ctx.launch_concurrency)
    succeeded, failed = events

    async def one(item: str) -> None:
        async with gate:
            try:
                await call(item)
            except (RefusedError, TransientError) as exc:
                counter.labels(pool=rt.name, outcome="failed").inc()
                failures[item] = tries = failures.get(item, 0) + 1
                emit = log.warning if tries == 1 else log.info
                emit(failed, pool=rt.name, attempts=tries, error=str(exc), **{key: item})
                return
        counter.labels(pool=rt.name, outcome=ok).inc()
        log.info(succeeded, pool=rt.name, reason=reason, **{key: item})
        done.add(item)
        failures.pop(item, None)

    await asyncio.gather(*(one(i) for i in items if i not in attempts.done))
    return Attempts(done=frozenset(done), failures=failures)


def _booting_from_launch(memory: PlannerMemory, ctx: Context, name: str) -> PlannerMemory:
    flights = ctx.state.snapshot.pools[name].in_flight
    since = {f.job_id: f.launched_at for f in flights if f.job_id not in memory.booting_since}
    return replace(memory, booting_since={**memory.booting_since, **since}) if since else memory


def _forget_flight(state: PoolState, job_id: str) -> PoolState:
    return replace(state, in_flight=tuple(f for f in state.in_flight if f.job_id != job_id))
