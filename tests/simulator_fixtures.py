"""Shared fixtures for tests against the CodaLab simulator (real HTTP on 127.0.0.1, port 0).

Import the fixture functions explicitly in a test module; every simulator
and client they create is closed in teardown, even when the test fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from codalab_scaler.simulator import CodaLabSimulator
from codalab_scaler.sources.codalab import CodaLabClient, Credentials
from codalab_scaler.sources.retry import RetryPolicy

USERS = {"codalab": "codalab", "alice": "alice-secret", "bob": "bob-secret"}
FAST_RETRY = RetryPolicy(max_attempts=3, max_seconds=5.0, initial_backoff=0.01, max_backoff=0.05)

SimFactory = Callable[..., Awaitable[CodaLabSimulator]]
ClientFactory = Callable[..., CodaLabClient]


@pytest_asyncio.fixture(name="sim_factory")
async def sim_factory_fixture() -> AsyncIterator[SimFactory]:
    """Start simulators with any constructor arguments; all are stopped in teardown."""
    started: list[CodaLabSimulator] = []

    async def make(**kwargs: Any) -> CodaLabSimulator:
        kwargs.setdefault("users", USERS)
        sim = CodaLabSimulator(**kwargs)
        started.append(sim)
        await sim.start()
        return sim

    try:
        yield make
    finally:
        for sim in started:
            await sim.stop()


@pytest_asyncio.fixture(name="sim")
async def sim_fixture(sim_factory: SimFactory) -> CodaLabSimulator:
    """A started simulator with the users of ``USERS``."""
    return await sim_factory()


@pytest_asyncio.fixture(name="client_factory")
async def client_factory_fixture() -> AsyncIterator[ClientFactory]:
    """Build ``CodaLabClient``s (fast retries by default); all are closed in teardown."""
    made: list[CodaLabClient] = []

    def make(
        server: str, username: str = "codalab", password: str | None = None, **kwargs: Any
    ) -> CodaLabClient:
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("request_timeout", 30.0)
        secret = USERS.get(username, "") if password is None else password
        client = CodaLabClient(server, Credentials(username, secret), **kwargs)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.aclose()
