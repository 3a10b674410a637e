"""The service without HTTP: opened for stepping one pool by hand, or started with its loops."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from aiohttp import web
from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.service.app import CONTEXT, make_app
from codalab_scaler.service.context import Context
from codalab_scaler.service.observe import poll_bundles, poll_jobs
from codalab_scaler.service.scale import scale_pool
from codalab_scaler.service.wiring import Overrides, assemble, open_context
from tests.fakes import FakeBackend, FakeBundles


@asynccontextmanager
async def opened(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    registry: CollectorRegistry | None = None,
    overrides: Overrides | None = None,
) -> AsyncIterator[Context]:
    """The app's parts, client and backends opened as its lifecycle opens them; no loops, no login.

    Leaving closes what was opened, as the app does.
    """
    parts = assemble(settings, clock=clock, registry=registry, overrides=overrides)
    async with AsyncExitStack() as stack:
        yield await open_context(stack, parts, login=False)


@asynccontextmanager
async def started(app: web.Application) -> AsyncIterator[Context]:
    """Run ``app``'s whole lifecycle (open, log in, loops) without serving HTTP.

    Leaving runs its clean-up: the loops stop (a launch in progress finishes),
    then backends and client close.
    """
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        yield app[CONTEXT]
    finally:
        await runner.cleanup()


class OnePool:
    """Steps pool ``p`` of an opened context by hand instead of running its loops."""

    def __init__(self, ctx: Context, registry: CollectorRegistry) -> None:
        self.ctx = ctx
        self.registry = registry
        self.pool = ctx.pools["p"]

    async def poll(self) -> None:
        await poll_bundles(self.ctx, self.pool)
        await poll_jobs(self.ctx, self.pool)

    async def cycle(self) -> tuple[str, int]:
        """One pass of the pool: both polls, then a decision; its reason and the launch count."""
        await self.poll()
        decision, launched = await scale_pool(self.ctx, self.pool)
        return decision.reason.value, launched

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def exported(pool: str) -> CollectorRegistry:
    """The registry of an app (never started) with one pool ``pool`` of default settings."""
    registry = CollectorRegistry()
    settings = Settings.model_validate({"username": "u", "password": "p", "pools": {pool: {}}})
    overrides = Overrides(bundles=FakeBundles(), backends={pool: FakeBackend()})
    make_app(settings, registry=registry, overrides=overrides)
    return registry
