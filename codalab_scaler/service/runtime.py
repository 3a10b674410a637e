"""Assembly and lifecycle: wire the parts, run the named root loops, stop them cleanly.

Root loops per pool: ``bundles:<pool>`` and ``jobs:<pool>`` (observe) and
``scaler:<pool>`` (decide and act).  Each is guarded: an expected failure
inside an iteration is handled by the iteration itself; anything that
escapes marks the loop dead, sets ``fatal`` and so ends the process with a
non-zero status for its supervisor to restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import LoginRefused, TransientError
from codalab_scaler.service.context import BundleSource, Context, PoolRuntime
from codalab_scaler.service.health import Liveness
from codalab_scaler.service.metrics import Metrics, ScrapeView, SnapshotCollector
from codalab_scaler.service.observe import poll_bundles, poll_jobs
from codalab_scaler.service.scale import scale_pool
from codalab_scaler.service.state import StateStore
from codalab_scaler.sources.backends import Backend, WorkerCredentials, create_backend
from codalab_scaler.sources.codalab.client import CodaLabClient, Credentials, staged_keywords

log = structlog.get_logger()

STOP_GRACE_SECONDS = 8.0


@dataclass(frozen=True, slots=True)
class OnceResult:
    ok: bool
    problems: tuple[str, ...]


class Service:
    """Owns every long-lived part; ``start`` and ``stop`` bracket its life."""

    def __init__(
        self,
        ctx: Context,
        closers: list[Callable[[], Awaitable[None]]],
        login: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.ctx = ctx
        self._closers = closers
        self._login = login
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.fatal = asyncio.Event()
        self.fatal_reason: str | None = None

    # -- construction -------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        bundles: BundleSource | None = None,
        backends: Mapping[str, Backend] | None = None,
    ) -> Service:
        """Wire a service from settings; ``bundles``/``backends`` replace the real ones in tests."""
        registry = registry if registry is not None else CollectorRegistry()
        metrics = Metrics(registry)
        # both validated by Settings; the asserts narrow the types
        assert settings.username is not None
        assert settings.password is not None
        retry = settings.retry_policy()
        closers: list[Callable[[], Awaitable[None]]] = []
        login: Callable[[], Awaitable[None]] | None = None
        if bundles is None:
            client = CodaLabClient(
                settings.server,
                Credentials(settings.username, settings.password.get_secret_value()),
                request_timeout=settings.request_timeout_seconds,
                retry=retry,
                on_retry=metrics.retry_hook("codalab"),
                clock=clock,
            )
            closers.append(client.aclose)
            login = client.login
            bundles = client
        credentials = WorkerCredentials(
            settings.username, settings.password.get_secret_value(), settings.password_file
        )
        pools: dict[str, PoolRuntime] = {}
        for name, pool in settings.pools.items():
            backend: Any = (  # a fake's or create_backend's: both have aclose
                backends[name]
                if backends is not None
                else create_backend(
                    name, pool.backend, pool.worker_options(settings.server), credentials
                )
            )
            closers.append(backend.aclose)
            metrics.init_pool(name)
            pools[name] = PoolRuntime(
                name=name,
                policy=settings.policy(name),
                backend=backend,
                keywords=tuple(
                    staged_keywords(
                        settings.username, pool.search, pool.worker_tag, pool.worker_tag_exclusive
                    )
                ),
                shape=pool.shape(),
                prefilter=not pool.no_prefilter,
                exit_after_num_failed=pool.exit_after_num_failed,
                on_retry=metrics.retry_hook("backend", name),
            )
        ctx = Context(
            pools=pools,
            bundles=bundles,
            state=StateStore(pools, clock),
            metrics=metrics,
            liveness=Liveness(
                clock,
                grace=settings.health_grace_seconds,
                stall=settings.effective_health_stall_seconds,
            ),
            clock=clock,
            sleep_time=settings.sleep_time,
            in_flight_timeout=settings.in_flight_timeout_seconds,
            retry=retry,
            call_timeout=settings.request_timeout_seconds,
            dry_run=settings.dry_run,
        )
        policies = {n: p.policy for n, p in pools.items()}  # fixed for the service's life
        registry.register(SnapshotCollector(lambda: ScrapeView(
            snapshot=ctx.state.snapshot,
            decisions=dict(ctx.decisions),
            policies=policies,
            now=ctx.clock(),
        )))  # fmt: skip
        service = cls(ctx, closers, login)
        ctx.halt = service._die
        return service

    # -- lifecycle ----------------------------------------------------------------------

    async def login(self) -> None:
        """Log in once up front: a wrong password is fatal, an unreachable server is not."""
        if self._login is None:
            return
        try:
            await self._login()
        except LoginRefused:
            raise
        except TransientError as exc:
            log.warning("codalab.login_deferred", error=str(exc))

    async def start(self) -> None:
        """Start the root loops (``login`` first, separately, to fail fast on a bad password)."""
        for name, pool in self.ctx.pools.items():
            self._spawn(f"bundles:{name}", self._every(f"bundles:{name}", poll_bundles, pool))
            self._spawn(f"jobs:{name}", self._every(f"jobs:{name}", poll_jobs, pool))
            self._spawn(f"scaler:{name}", self._scale_loop(pool))
        log.info(
            "service.started",
            pools=sorted(self.ctx.pools),
            dry_run=self.ctx.dry_run,
            sleep_time=self.ctx.sleep_time,
        )

    async def stop(self) -> None:
        """Stop polling at once, let a launch in progress finish, then close clients."""
        self.ctx.stopping.set()
        for name, task in self._tasks.items():
            if not name.startswith("scaler:"):
                task.cancel()
        scalers = [t for n, t in self._tasks.items() if n.startswith("scaler:")]
        if scalers:
            _done, late = await asyncio.wait(scalers, timeout=STOP_GRACE_SECONDS)
            for task in late:
                task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        for close in self._closers:
            try:
                await close()
            except Exception as exc:  # closing must go on for the others
                log.warning("service.close_failed", error=repr(exc))
        log.info("service.stopped")

    async def run_once(self) -> OnceResult:
        """One poll of every source, then one decide-and-launch pass per pool."""
        await self.login()
        pools = list(self.ctx.pools.values())
        await asyncio.gather(
            *(poll_bundles(self.ctx, p) for p in pools), *(poll_jobs(self.ctx, p) for p in pools)
        )
        problems: list[str] = []
        for pool in pools:
            decision, launched = await scale_pool(self.ctx, pool)
            if decision.stale:
                problems.append(f"{pool.name}: stale view ({', '.join(decision.stale)})")
            elif launched < decision.launch and not self.ctx.dry_run:
                problems.append(f"{pool.name}: launched {launched} of {decision.launch}")
        return OnceResult(ok=not problems, problems=tuple(problems))

    # -- loops --------------------------------------------------------------------------

    def _spawn(self, name: str, body: Awaitable[None]) -> None:
        self.ctx.liveness.register(name)
        self._tasks[name] = asyncio.create_task(self._guard(name, body), name=name)

    async def _guard(self, name: str, body: Awaitable[None]) -> None:
        try:
            await body
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("loop.crashed", loop=name)
            self._die(name, f"{type(exc).__name__}: {exc}")
            return
        if not self.ctx.stopping.is_set():
            self._die(name, "returned unexpectedly")

    def _die(self, name: str, reason: str) -> None:
        self.ctx.liveness.died(name, reason)
        if self.fatal_reason is None:
            self.fatal_reason = f"{name}: {reason}"
        self.fatal.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ctx.stopping.wait(), seconds)

    async def _every(
        self, name: str, poll: Callable[[Context, PoolRuntime], Awaitable[bool]], pool: PoolRuntime
    ) -> None:
        while not self.ctx.stopping.is_set():
            await poll(self.ctx, pool)
            self.ctx.liveness.beat(name)
            await self._sleep(self.ctx.sleep_time)

    async def _scale_loop(self, pool: PoolRuntime) -> None:
        name = f"scaler:{pool.name}"
        version = -1
        seen = None
        last_pass = float("-inf")
        while not self.ctx.stopping.is_set():
            waiter = asyncio.ensure_future(self.ctx.state.wait_newer(version, self.ctx.sleep_time))
            stopper = asyncio.ensure_future(self.ctx.stopping.wait())
            _done, pending = await asyncio.wait(
                {waiter, stopper}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if self.ctx.stopping.is_set():
                break
            snapshot = waiter.result()
            version = snapshot.version
            current = snapshot.pools[pool.name]
            due = self.ctx.clock() - last_pass >= self.ctx.sleep_time
            # Until both pollers have tried once there is nothing to decide on yet.
            polled = current.bundles.attempted and current.jobs.attempted
            if polled and (current is not seen or due):
                await scale_pool(self.ctx, pool)
                seen = self.ctx.state.snapshot.pools[pool.name]
                last_pass = self.ctx.clock()
            self.ctx.liveness.beat(name)
