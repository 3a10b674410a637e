"""The root loops: poll, plan and launch, until told to stop.

Root loops: ``demand`` (one staged-bundle poll for every pool, each distinct
search fetched once), ``jobs:<pool>`` (each backend), ``workers`` (CodaLab's
workers/info) and ``planner`` (one pass over every pool per ``sleep_time``,
as the original: decide and act).  Liveness keeps the per-pool names
``bundles:<pool>`` and ``scaler:<pool>``, beaten by ``demand`` and
``planner``.  Each is guarded: an expected failure
inside an iteration is handled by the iteration itself; anything that
escapes marks the loop dead and halts the process (``Context.fatal``) with a
non-zero status for its supervisor to restart, or, for a ``ConfigError``
(a setting no restart can fix), with status 2 and the setting named.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog

from codalab_scaler.core.errors import ConfigError
from codalab_scaler.service.context import Context, PoolRuntime
from codalab_scaler.service.observe import poll_jobs
from codalab_scaler.service.planning import plan_pass, poll_demand, poll_workers

log = structlog.get_logger()

# How long a launch in progress may take to finish once the app stops.
STOP_GRACE_SECONDS = 8.0

Poll = Callable[[Context, PoolRuntime], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class OnceResult:
    ok: bool
    problems: tuple[str, ...]


@contextlib.asynccontextmanager
async def running(ctx: Context) -> AsyncIterator[None]:
    """Run every pool's root loops while inside; leaving stops them (see ``_stop``)."""
    tasks: dict[str, asyncio.Task[None]] = {}

    def spawn(name: str, body: Awaitable[None]) -> None:
        ctx.liveness.register(name)
        tasks[name] = asyncio.create_task(_guard(ctx, name, body), name=name)

    if ctx.leadership is not None:
        # Guarded like a root loop, but not a liveness loop: a standby is healthy.
        election = ctx.leadership.run()
        tasks["leader"] = asyncio.create_task(_guard(ctx, "leader", election), name="leader")
    try:
        for name in ctx.pools:
            ctx.liveness.register(f"bundles:{name}")
        spawn_task(ctx, tasks, "demand", _demand_loop(ctx))
        for name, pool in ctx.pools.items():
            spawn(f"jobs:{name}", _every(ctx, f"jobs:{name}", poll_jobs, pool))
        spawn("workers", _workers_loop(ctx))
        for name in ctx.pools:
            ctx.liveness.register(f"scaler:{name}")
        spawn_task(ctx, tasks, "planner", _planner_loop(ctx))
        log.info(
            "service.started", pools=sorted(ctx.pools), dry_run=ctx.dry_run,
            sleep_time=ctx.sleep_time,
        )  # fmt: skip
        yield
    finally:
        await _stop(ctx, tasks)


def spawn_task(
    ctx: Context, tasks: dict[str, asyncio.Task[None]], name: str, body: Awaitable[None]
) -> None:
    """A guarded root task whose liveness names are registered by the caller."""
    tasks[name] = asyncio.create_task(_guard(ctx, name, body), name=name)


async def _stop(ctx: Context, tasks: dict[str, asyncio.Task[None]]) -> None:
    """Stop polling at once; let a launch in progress finish within the grace."""
    ctx.stopping.set()
    for name, task in tasks.items():
        if name not in {"planner", "leader"}:
            task.cancel()
    scalers = [t for n, t in tasks.items() if n == "planner"]
    if scalers:
        _done, late = await asyncio.wait(scalers, timeout=STOP_GRACE_SECONDS)
        for task in late:
            task.cancel()
    if "leader" in tasks:  # after the last launch: release the Lease for the standby
        tasks["leader"].cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


async def run_once(ctx: Context) -> OnceResult:
    """One poll of every source, then one planner pass over every pool."""
    pools = list(ctx.pools.values())
    await asyncio.gather(poll_demand(ctx), poll_workers(ctx), *(poll_jobs(ctx, p) for p in pools))
    problems: list[str] = []
    results = await plan_pass(ctx)
    for pool in pools:
        decision, launched = results[pool.name]
        if decision.stale:
            problems.append(f"{pool.name}: stale view ({', '.join(decision.stale)})")
        elif launched < decision.launch and not ctx.dry_run:
            problems.append(f"{pool.name}: launched {launched} of {decision.launch}")
    return OnceResult(ok=not problems, problems=tuple(problems))


async def _guard(ctx: Context, name: str, body: Awaitable[None]) -> None:
    try:
        await body
    except asyncio.CancelledError:
        raise
    except ConfigError as exc:
        log.error("loop.config_error", loop=name, error=str(exc))
        ctx.fatal.misconfigured(name, exc)
        return
    except Exception as exc:
        log.exception("loop.crashed", loop=name)
        ctx.fatal.halt(name, f"{type(exc).__name__}: {exc}")
        return
    if not ctx.stopping.is_set():
        ctx.fatal.halt(name, "returned unexpectedly")


async def _sleep(ctx: Context, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ctx.stopping.wait(), seconds)


async def _every(ctx: Context, name: str, poll: Poll, pool: PoolRuntime) -> None:
    while not ctx.stopping.is_set():
        await poll(ctx, pool)
        ctx.liveness.beat(name)
        await _sleep(ctx, ctx.sleep_time)


async def _demand_loop(ctx: Context) -> None:
    while not ctx.stopping.is_set():
        await poll_demand(ctx)
        for name in ctx.pools:
            ctx.liveness.beat(f"bundles:{name}")
        await _sleep(ctx, ctx.sleep_time)


async def _workers_loop(ctx: Context) -> None:
    while not ctx.stopping.is_set():
        await poll_workers(ctx)
        ctx.liveness.beat("workers")
        await _sleep(ctx, ctx.sleep_time)


async def _planner_loop(ctx: Context) -> None:
    """One pass per ``sleep_time`` once every pool's bundles and jobs were polled once.

    The original decides once per interval; deciding on every poller's update
    made about two passes per interval (issue 10: 58 launches in 60 s where
    the original makes at most 30).
    """
    while not ctx.stopping.is_set():
        snapshot = ctx.state.snapshot
        polled = all(s.bundles.attempted and s.jobs.attempted for s in snapshot.pools.values())
        if not polled:
            # Until the pollers have tried once there is nothing to decide on yet.
            version = snapshot.version
            waiter = asyncio.ensure_future(ctx.state.wait_newer(version, ctx.sleep_time))
            stopper = asyncio.ensure_future(ctx.stopping.wait())
            _done, pending = await asyncio.wait(
                {waiter, stopper}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
        else:
            await plan_pass(ctx)
        for name in ctx.pools:  # alive while it waits for the first polls, too
            ctx.liveness.beat(f"scaler:{name}")
        if polled:
            await _sleep(ctx, ctx.sleep_time)
