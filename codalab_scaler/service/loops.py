"""The root loops: poll, decide and launch, per pool, until told to stop.

Root loops per pool: ``bundles:<pool>`` and ``jobs:<pool>`` (observe) and
``scaler:<pool>`` (decide and act).  Each is guarded: an expected failure
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
from codalab_scaler.service.observe import poll_bundles, poll_jobs
from codalab_scaler.service.scale import scale_pool

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
        for name, pool in ctx.pools.items():
            spawn(f"bundles:{name}", _every(ctx, f"bundles:{name}", poll_bundles, pool))
            spawn(f"jobs:{name}", _every(ctx, f"jobs:{name}", poll_jobs, pool))
            spawn(f"scaler:{name}", _scale_loop(ctx, pool))
        log.info(
            "service.started", pools=sorted(ctx.pools), dry_run=ctx.dry_run,
            sleep_time=ctx.sleep_time,
        )  # fmt: skip
        yield
    finally:
        await _stop(ctx, tasks)


async def _stop(ctx: Context, tasks: dict[str, asyncio.Task[None]]) -> None:
    """Stop polling at once; let a launch in progress finish within the grace."""
    ctx.stopping.set()
    for name, task in tasks.items():
        if not name.startswith("scaler:") and name != "leader":
            task.cancel()
    scalers = [t for n, t in tasks.items() if n.startswith("scaler:")]
    if scalers:
        _done, late = await asyncio.wait(scalers, timeout=STOP_GRACE_SECONDS)
        for task in late:
            task.cancel()
    if "leader" in tasks:  # after the last launch: release the Lease for the standby
        tasks["leader"].cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


async def run_once(ctx: Context) -> OnceResult:
    """One poll of every source, then one decide-and-launch pass per pool."""
    pools = list(ctx.pools.values())
    await asyncio.gather(
        *(poll_bundles(ctx, p) for p in pools), *(poll_jobs(ctx, p) for p in pools)
    )
    problems: list[str] = []
    for pool in pools:
        decision, launched = await scale_pool(ctx, pool)
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


async def _scale_loop(ctx: Context, pool: PoolRuntime) -> None:
    name = f"scaler:{pool.name}"
    version = -1
    seen = None
    last_pass = float("-inf")
    while not ctx.stopping.is_set():
        waiter = asyncio.ensure_future(ctx.state.wait_newer(version, ctx.sleep_time))
        stopper = asyncio.ensure_future(ctx.stopping.wait())
        _done, pending = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if ctx.stopping.is_set():
            break
        snapshot = waiter.result()
        version = snapshot.version
        current = snapshot.pools[pool.name]
        due = ctx.clock() - last_pass >= ctx.sleep_time
        # Until both pollers have tried once there is nothing to decide on yet.
        polled = current.bundles.attempted and current.jobs.attempted
        if polled and (current is not seen or due):
            await scale_pool(ctx, pool)
            seen = ctx.state.snapshot.pools[pool.name]
            last_pass = ctx.clock()
        ctx.liveness.beat(name)
