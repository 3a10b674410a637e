"""Every fault of the proxy between the whole app and the CodaLab simulator, the local backend
launching real (stand-in) worker processes.

For each failing mode: the app stays up, nothing is launched on the failed
view, each failed poll is counted and the outage is warned about once, and
the first good poll after the fault ends launches.  A slow answer is no
failure; a partial page never launches more than the whole queue asks for.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from codalab_scaler.config.settings import Settings
from codalab_scaler.service.app import make_app
from codalab_scaler.simulator import CodaLabSimulator
from codalab_scaler.sources.retry import RetryPolicy
from tests.fault_proxy import FAILING, RETRY_AFTER_SECONDS, Fault, ProxyFactory, fault_proxy, halve
from tests.fault_rig import Rig
from tests.harness import started
from tests.scaler_process import Launcher, creds, launcher, scrape
from tests.simulator_fixtures import (  # noqa: F401 - pytest finds the fixtures by name
    ClientFactory,
    SimFactory,
    client_factory_fixture,
    sim_factory_fixture,
)
from tests.waiting import eventually

__all__ = ["fault_proxy", "launcher"]  # fixtures

PASSWORD = "pw-for-fault-tests"
SLEEP = 0.2
STAGED = 2
MAX_WORKERS = 20  # far above what a test reaches: launches go on, one a pass


@pytest.fixture
def worker_script(tmp_path: Path) -> Iterator[Path]:
    """A cl-worker stand-in that stays up; every one started is killed afterwards."""
    pids = tmp_path / "pids"
    script = tmp_path / "fake-cl-worker"
    script.write_text(f'#!/bin/sh\necho $$ >> "{pids}"\nexec sleep 120\n')
    script.chmod(0o755)
    yield script
    if pids.exists():
        for pid in pids.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def fault_settings(server: str, tmp_path: Path, script: Path, **top: Any) -> Settings:
    return Settings.model_validate(
        {
            "server": server,
            "username": "codalab",
            "password": PASSWORD,
            "sleep_time": SLEEP,
            "request_timeout_seconds": 0.5,
            "retry_attempts": 2,
            "retry_max_seconds": 1.5,  # room for the proxy's 1 s Retry-After, once
            "retry_backoff_seconds": 0.01,
            "retry_max_backoff_seconds": 0.02,
            **top,
            "pools": {
                "p": {
                    "min_workers": 0,
                    "max_workers": MAX_WORKERS,
                    "min_seconds_between_workers": 0,
                    "worker_executable": str(script),
                    "backend": {"kind": "local", "state_dir": str(tmp_path / "state")},
                }
            },
        }
    )


@pytest_asyncio.fixture
async def rig(tmp_path: Path, worker_script: Path, fault_proxy: ProxyFactory) -> AsyncIterator[Rig]:
    """The app polling the simulator through a proxy whose faults hit the bundle search."""
    sim = CodaLabSimulator(users={"codalab": PASSWORD})
    await sim.start()
    try:
        proxy = await fault_proxy(
            sim.url,
            applies=lambda request: request.path == "/rest/bundles",
            trim=halve("data"),
        )
        registry = CollectorRegistry()
        app = make_app(fault_settings(proxy.url, tmp_path, worker_script), registry=registry)
        with capture_logs() as logs:
            async with started(app) as ctx:
                rig = Rig(ctx, registry, proxy, sim, logs)
                await eventually(
                    lambda: bool(rig.events("scaler.decided")), "a first decision", within=10
                )
                yield rig
                assert not ctx.fatal.is_set(), ctx.fatal.reason
    finally:
        await sim.stop()


@pytest.mark.parametrize("fault", sorted(FAILING))
async def test_a_failed_view_launches_nothing_and_recovers(rig: Rig, fault: Fault) -> None:
    # Staged work and room below max: the last good view keeps asking for one launch a
    # pass (active workers never cover staged), so any launch on the failed view would show.
    for _ in range(STAGED):
        rig.sim.add_bundle(duration=600)
    await eventually(lambda: rig.launched >= 1, "a first launch", within=10)
    await rig.proxy.set(fault)
    await eventually(lambda: rig.bundle_errors >= 2, "two failed polls", within=20)
    blind = rig.launched  # a pass that began before the first failure has finished by now
    await eventually(lambda: rig.bundle_errors >= 4, "two more failed polls", within=20)
    assert rig.launched == blind < MAX_WORKERS
    assert not rig.ctx.fatal.is_set()
    failed = rig.events("poll.failed", source="bundles", log_level="warning")
    assert len(failed) == 1, failed  # one warning per outage; each poll is counted

    end = len(rig.logs)
    await rig.proxy.clear()
    structlog.get_logger().info("test.fault_ended")
    await eventually(lambda: rig.launched > blind, "launches after the fault", within=10)
    assert rig.launch_followed_recovery(end)  # the first good poll launched: within two intervals
    assert len(rig.events("poll.failed", source="bundles", log_level="warning")) == 1
    warned = rig.warned_once_each(end)
    assert len(warned) == len(set(warned)), warned  # no warning repeats during the outage


async def test_a_slow_answer_is_no_failure(rig: Rig) -> None:
    await rig.proxy.set(Fault.SLOW)
    for _ in range(STAGED):
        rig.sim.add_bundle(duration=600)
    await eventually(lambda: rig.launched >= STAGED, "launches on slow answers", within=10)
    assert rig.bundle_errors == 0
    assert rig.proxy.faulted > 0


async def test_a_partial_page_is_read_as_a_shorter_queue_never_a_longer_one(rig: Rig) -> None:
    # Without a total in the answer a short page is the end of the results: the view
    # undercounts (fewer launches), it never invents work.  Nothing fails.
    await rig.proxy.set(Fault.PARTIAL_PAGE)
    for _ in range(4):
        rig.sim.add_bundle(duration=600)
    await eventually(lambda: staged(rig) == 2, "the half page seen", within=10)
    await rig.proxy.clear()
    await eventually(lambda: staged(rig) == 4, "the whole queue once pages are whole", within=10)
    assert rig.bundle_errors == 0
    assert rig.launched <= MAX_WORKERS


def staged(rig: Rig) -> int | None:
    view = rig.ctx.state.snapshot.pools["p"].bundles.value
    return None if view is None else len(view.staged)


def test_every_fault_mode_is_tried() -> None:
    tried = set(FAILING) | {Fault.SLOW, Fault.PARTIAL_PAGE}
    assert tried == set(Fault)


async def test_the_client_waits_as_long_as_the_server_asks(
    sim_factory: SimFactory, client_factory: ClientFactory, fault_proxy: ProxyFactory
) -> None:
    sim = await sim_factory()
    proxy = await fault_proxy(sim.url, applies=lambda request: request.path == "/rest/bundles")
    client = client_factory(proxy.url, retry=RetryPolicy(4, 10.0, 0.01, 0.02))
    await client.login()
    await proxy.set(Fault.THROTTLED, times=1)
    await client.fetch_staged(["state=staged"])
    searches = [at for at, _method, path in proxy.seen if path == "/rest/bundles"]
    assert len(searches) == 2
    assert searches[1] - searches[0] >= RETRY_AFTER_SECONDS  # not the 0.01 s backoff


# -- the executable itself: still up after an outage, counted, warned once, launching -------


@pytest.mark.process
@pytest.mark.parametrize("fault", [Fault.REFUSED, Fault.ERROR_503, Fault.HTML_200])
async def test_the_executable_stays_up_through_an_outage_and_launches_after_it(
    tmp_path: Path,
    worker_script: Path,
    fault_proxy: ProxyFactory,
    launcher: Launcher,
    fault: Fault,
) -> None:
    sim = CodaLabSimulator(users={"codalab": PASSWORD})
    await sim.start()
    try:
        proxy = await fault_proxy(sim.url, applies=lambda r: r.path == "/rest/bundles")
        scaler = await launcher(
            "--server", proxy.url, "--sleep-time", str(SLEEP), "--min-workers", "0",
            "--max-workers", "2", "--min-seconds-between-workers", "0",
            "--worker-executable", str(worker_script), "--request-timeout-seconds", "0.5",
            "--http-host", "127.0.0.1", "--http-port", "0",
            "local", "--state-dir", str(tmp_path / "state"),
            env={**creds(PASSWORD), "CODALAB_SCALER_RETRY_MAX_SECONDS": "1",
                 "CODALAB_SCALER_RETRY_BACKOFF_SECONDS": "0.01"},
        )  # fmt: skip
        port = (await scaler.event("http.listening", within=20))["port"]
        await scaler.event("scaler.decided", within=20)
        await proxy.set(fault)
        for _ in range(2):
            sim.add_bundle(duration=600)

        async def errors() -> float:
            _, text = await scrape(port)
            for line in text.splitlines():
                if line.startswith("codalab_scaler_poll_errors_total{") and '"bundles"' in line:
                    return float(line.split()[-1])
            return 0.0

        async def three_failed_polls() -> bool:
            return await errors() >= 3

        await eventually(three_failed_polls, "three failed polls", within=20, interval=0.1)
        assert scaler.proc.returncode is None  # still up
        assert not any(line.get("event") == "scaler.launched" for line in scaler.lines)
        await proxy.clear()
        await scaler.event("scaler.launched", within=10)
        warned = [
            line.get("source") for line in scaler.lines
            if line.get("event") == "poll.failed" and line.get("level") == "warning"
        ]  # fmt: skip
        # One warning per failing source for the whole outage (the bundle search and,
        # behind the same server, the workers view), however many polls failed.
        assert "bundles" in warned
        assert len(warned) == len(set(warned)), warned
        scaler.proc.send_signal(signal.SIGTERM)
        assert await scaler.exit_code() == 0
    finally:
        await sim.stop()
