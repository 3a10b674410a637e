"""/metrics, /healthz and /status over real HTTP (aiohttp test server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.core.model import JobState
from codalab_scaler.service.app import CONTEXT, make_app, serve
from codalab_scaler.service.status import LIST_LIMIT
from codalab_scaler.service.wiring import Overrides
from tests.fakes import FakeBackend, FakeBundles
from tests.harness import exported


def build(
    backend: FakeBackend, bundles: FakeBundles, pool: Mapping[str, Any] | None = None, **top: Any
) -> web.Application:
    settings = Settings.model_validate(
        {
            "username": "alice",
            "password": "web-secret-pw",
            "sleep_time": 0.05,
            **top,
            "pools": {"p": {"min_workers": 1, "min_seconds_between_workers": 0, **(pool or {})}},
        }
    )
    return make_app(
        settings,
        registry=CollectorRegistry(),
        overrides=Overrides(bundles=bundles, backends={"p": backend}),
    )


@pytest_asyncio.fixture
async def client_for() -> AsyncIterator[Any]:
    clients: list[TestClient[Any, Any]] = []

    async def make(app: web.Application) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()


async def eventually(client: TestClient[Any, Any], path: str, status: int) -> Any:
    async with asyncio.timeout(5):
        while True:
            resp = await client.get(path)
            if resp.status == status:
                return await resp.json()
            await asyncio.sleep(0.02)


async def test_healthy_service_answers_200_and_status(client_for: Any) -> None:
    bundles = FakeBundles()
    bundles.stage(2)
    client = await client_for(build(FakeBackend(), bundles))
    body = await eventually(client, "/healthz", 200)
    assert body["ok"] is True
    assert set(body["loops"]) == {"bundles:p", "jobs:p", "scaler:p", "workers"}
    status = await (await client.get("/status")).json()
    pool = status["pools"]["p"]
    assert pool["bundles"]["staged_count"] == 2
    assert pool["decision"]["reason"] in {"below_min", "staged_work", "pending_covers_staged"}
    assert pool["policy"]["min_workers"] == 1
    assert (pool["failed_starts"], pool["exit_after_num_failed"]) == (0, None)
    rows = status["bundles"]["staged"]
    assert [r["uuid"] for r in rows] == [b.uuid for b in bundles.staged]
    for row in rows:  # first seen in this test, in UTC; placed on no serving worker
        first_seen = datetime.fromisoformat(row["first_seen"])
        assert first_seen.utcoffset() == timedelta(0)
        assert timedelta(0) <= datetime.now(UTC) - first_seen < timedelta(seconds=30)
        assert row["waiting_on"] is None
    resp = await client.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert "codalab_scaler_staged_bundles" in text
    assert "web-secret-pw" not in text + str(status)


async def test_status_counts_workers_and_placements_past_the_list_limit(client_for: Any) -> None:
    """150 booting workers and 150 routed bundles: the lists stop at 100, the counts do not."""
    backend = FakeBackend(jobs={f"job-w{i:03}": JobState.PENDING for i in range(150)})
    bundles = FakeBundles()
    bundles.stage(150)
    # fast places each routed bundle (compat places none); 200 so no limit trims the plan
    client = await client_for(build(backend, bundles, {"policy": "fast", "max_workers": 200}))

    async def planned() -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                status: dict[str, Any] = await (await client.get("/status")).json()
                planner: dict[str, Any] | None = status["pools"]["p"]["planner"]
                if planner is not None and planner["counted_bundles"] == 150:
                    return planner
                await asyncio.sleep(0.02)

    planner = await planned()
    assert len(planner["workers"]["booting"]) == LIST_LIMIT
    assert planner["worker_counts"] == {"booting": 150, "serving": 0, "stuck": 0, "idle": 0}
    placed = planner["placed_counts"]
    assert set(placed) == {"serving", "booting", "new"}
    assert placed["booting"] == 150  # each booting worker's whole shape takes one bundle


async def test_dead_loop_answers_503_with_the_reason(client_for: Any) -> None:
    backend = FakeBackend(list_error=RuntimeError("backend bug"))
    client = await client_for(build(backend, FakeBundles()))
    body = await eventually(client, "/healthz", 503)
    assert body["ok"] is False
    assert body["problems"] == ["jobs:p: died (RuntimeError: backend bug)"]


async def test_loop_that_never_ran_is_unhealthy_after_the_grace(client_for: Any) -> None:
    bundles = FakeBundles()
    release = asyncio.Event()

    async def hang(keywords: Any) -> Any:
        await release.wait()  # never set: the poll hangs until the service is stopped
        raise AssertionError("unreachable")

    bundles.fetch_staged = hang  # type: ignore[method-assign]
    client = await client_for(build(FakeBackend(), bundles, health_grace_seconds=0.2))
    body = await eventually(client, "/healthz", 503)
    assert body["problems"] == ["bundles:p: never completed an iteration"]


async def test_serve_exits_1_when_a_root_loop_dies() -> None:
    app = build(FakeBackend(list_error=RuntimeError("backend bug")), FakeBundles())
    async with asyncio.timeout(10):
        code = await serve(app, "127.0.0.1", 0)
    assert code == 1
    assert app[CONTEXT].fatal.reason == "jobs:p: RuntimeError: backend bug"


async def test_serve_exits_0_when_asked_to_stop() -> None:
    app = build(FakeBackend(), FakeBundles())
    stop = asyncio.Event()
    ports: list[int] = []

    def listening(port: int) -> None:
        ports.append(port)
        stop.set()

    async with asyncio.timeout(10):
        assert await serve(app, "127.0.0.1", 0, stop=stop, on_listening=listening) == 0
    assert ports[0] > 0


async def test_serve_exits_2_when_the_port_is_taken() -> None:
    backend, bundles = FakeBackend(), FakeBundles()
    app = build(backend, bundles)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        async with asyncio.timeout(10):
            assert await serve(app, "127.0.0.1", port) == 2
    assert backend.launched == []  # no loop ran
    # The bind comes before anything opens: nothing was opened, so nothing is left open.
    assert CONTEXT not in app
    assert bundles.calls == []


async def test_a_signal_during_a_slow_login_still_exits_0() -> None:
    class SlowLogin(FakeBundles):
        async def login(self) -> None:
            await asyncio.Event().wait()  # CodaLab never answers

    backend = FakeBackend()
    app = build(backend, SlowLogin())
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    async with asyncio.timeout(5):
        assert await serve(app, "127.0.0.1", 0, stop=stop) == 0
    assert backend.launched == []


async def test_every_labelled_counter_of_a_pool_is_exported_at_zero() -> None:
    """Alerts on rate()/increase() need the series before the first event."""
    text = generate_latest(exported("gpu")).decode()
    for line in (
        'codalab_scaler_launches_total{outcome="refused",pool="gpu"} 0.0',
        'codalab_scaler_decisions_total{pool="gpu",reason="at_max"} 0.0',
        'codalab_scaler_poll_errors_total{kind="transient",pool="gpu",source="jobs"} 0.0',
        'codalab_scaler_failed_starts_total{pool="gpu"} 0.0',
        'codalab_scaler_retries_total{peer="backend",pool="gpu"} 0.0',
        'codalab_scaler_poll_duration_seconds_count{pool="gpu",source="bundles"} 0.0',
    ):
        assert line in text


async def test_no_created_series_are_exported() -> None:
    assert "_created" not in generate_latest(exported("gpu")).decode()


async def test_a_failure_half_way_through_opening_closes_what_was_opened() -> None:
    """Pool ``a`` opens; pool ``b``'s backend refuses its settings: ``a`` is closed again."""
    opened_first = FakeBackend()
    settings = Settings.model_validate(
        {
            "username": "alice",
            "password": "web-secret-pw",
            "pools": {
                "a": {},
                "b": {
                    "worker_work_dir_prefix": "relative",
                    "backend": {"kind": "aws-batch", "password_secret_arn": "arn:aws:x"},
                },
            },
        }
    )
    app = make_app(
        settings,
        registry=CollectorRegistry(),
        overrides=Overrides(bundles=FakeBundles(), backends={"a": opened_first}),
    )
    with pytest.raises(ConfigError, match="worker_work_dir_prefix"):
        await serve(app, "127.0.0.1", 0)
    assert opened_first.closed
    assert opened_first.launched == []
