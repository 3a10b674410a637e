"""A service with one pool ``p`` driven step by step: observe, decide, launch, read its metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.service.observe import poll_bundles, poll_jobs
from codalab_scaler.service.runtime import Service
from codalab_scaler.service.scale import scale_pool
from tests.fakes import FakeBackend, FakeBundles


class OnePool:
    """Steps ``service``'s pool ``p`` by hand instead of running its loops."""

    def __init__(self, service: Service, registry: CollectorRegistry) -> None:
        self.service = service
        self.registry = registry
        self.ctx = service.ctx
        self.pool = service.ctx.pools["p"]

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
    """The registry of a service (never started) with one pool ``pool`` of default settings."""
    registry = CollectorRegistry()
    settings = Settings.model_validate({"username": "u", "password": "p", "pools": {pool: {}}})
    Service.build(
        settings, registry=registry, bundles=FakeBundles(), backends={pool: FakeBackend()}
    )
    return registry
