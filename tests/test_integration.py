"""The service with the real CodaLab client against the simulator over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest_asyncio
from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.service.context import Context
from codalab_scaler.service.wiring import Overrides
from codalab_scaler.simulator import CodaLabSimulator
from tests.fakes import FakeBackend
from tests.harness import OnePool, opened
from tests.simulator_fixtures import SimFactory, sim_factory_fixture

__all__ = ["sim_factory_fixture"]  # the fixture is used by name


class Live(OnePool):
    def __init__(
        self, ctx: Context, registry: CollectorRegistry, sim: CodaLabSimulator, backend: FakeBackend
    ) -> None:
        super().__init__(ctx, registry)
        self.sim = sim
        self.backend = backend


def live_settings(sim: CodaLabSimulator, user: str, **pool: object) -> Settings:
    return Settings.model_validate(
        {
            "server": sim.url,
            "username": user,
            "password": f"{user}-pw",
            "request_timeout_seconds": 0.5,
            "retry_attempts": 3,
            "retry_max_seconds": 2,
            "retry_backoff_seconds": 0.01,
            "retry_max_backoff_seconds": 0.02,
            "pools": {"p": {"min_workers": 0, "min_seconds_between_workers": 0, **pool}},
        }
    )


LiveFactory = Callable[..., Awaitable[Live]]


@pytest_asyncio.fixture
async def live(sim_factory: SimFactory) -> AsyncIterator[LiveFactory]:
    """The real CodaLab client against a simulator, opened (and closed) as the app does."""
    async with AsyncExitStack() as stack:

        async def make(user: str = "alice", **pool: object) -> Live:
            sim = await sim_factory(users={user: f"{user}-pw", "codalab": "root-pw"})
            backend, registry = FakeBackend(), CollectorRegistry()
            ctx = await stack.enter_async_context(
                opened(
                    live_settings(sim, user, **pool),
                    registry=registry,
                    overrides=Overrides(backends={"p": backend}),
                )
            )
            return Live(ctx, registry, sim, backend)

        yield make


async def test_sees_and_serves_more_than_ten_staged_bundles(live: LiveFactory) -> None:
    s = await live(max_launches_per_pass=20, max_workers=20)
    for _ in range(15):
        s.sim.add_bundle("alice")
    s.sim.add_bundle("codalab")  # not alice's: .mine leaves it out
    assert await s.cycle() == ("staged_work", 15)
    assert s.registry.get_sample_value("codalab_scaler_staged_bundles", {"pool": "p"}) == 15


async def test_server_errors_are_retried_then_the_view_goes_stale(live: LiveFactory) -> None:
    s = await live(min_workers=1)
    s.sim.add_bundle("alice")
    s.sim.fail_next(1, status=502, path_prefix="/rest/bundles")
    assert await s.cycle() == ("below_min", 1)  # one 502, retried, then served
    assert (
        s.registry.get_sample_value("codalab_scaler_retries_total", {"peer": "codalab", "pool": ""})
        == 1
    )
    s.sim.fail_next(100, status=500, path_prefix="/rest/bundles")
    s.backend.jobs.clear()
    assert await s.cycle() == ("stale_view", 0)  # below min, but the view is unknown
    assert len(s.backend.launched) == 1


async def test_timeouts_are_transient_and_launch_nothing(live: LiveFactory) -> None:
    s = await live(min_workers=3)
    s.sim.delay_next(100, seconds=1.0, path_prefix="/rest/bundles")
    assert await s.cycle() == ("stale_view", 0)
    assert s.backend.launched == []
    assert (
        s.registry.get_sample_value(
            "codalab_scaler_poll_errors_total",
            {"pool": "p", "source": "bundles", "kind": "transient"},
        )
        == 1
    )


async def test_expired_token_never_reads_as_zero_bundles(live: LiveFactory) -> None:
    s = await live(max_launches_per_pass=5)
    for _ in range(3):
        s.sim.add_bundle("alice")
    assert await s.cycle() == ("staged_work", 3)
    s.sim.expire_all_tokens()  # the next search would be anonymous: data []
    s.backend.activate_all()
    assert await s.cycle() == ("staged_work", 3)  # still 3 staged, re-logged in
    assert s.registry.get_sample_value("codalab_scaler_staged_bundles", {"pool": "p"}) == 3


async def test_prefilter_against_the_worker_shape(live: LiveFactory) -> None:
    s = await live(max_launches_per_pass=5, backend={"cpus": 2, "memory_mb": 4096})
    s.sim.add_bundle("alice", cpus=2, memory="4g")
    s.sim.add_bundle("alice", cpus=3)
    s.sim.add_bundle("alice", memory="5g")
    assert await s.cycle() == ("staged_work", 1)
    sample = s.registry.get_sample_value
    assert sample("codalab_scaler_filtered_bundles", {"pool": "p", "reason": "cpus"}) == 1
    assert sample("codalab_scaler_filtered_bundles", {"pool": "p", "reason": "memory"}) == 1
