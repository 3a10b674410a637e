"""Leader election's errors, end to end: a set-up no restart can fix exits 2 naming the
setting; an API server that does not answer (refused connection, 5xx) is retried."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from codalab_scaler.core.errors import EXIT_CONFIG, EXIT_OK
from codalab_scaler.simulator import CodaLabSimulator
from tests.kube_fake import KubeFake
from tests.scaler_process import Launcher, Running, creds, launcher, sim

__all__ = ["launcher", "sim"]  # fixtures

pytestmark = pytest.mark.process

LEASE, RENEW, RETRY = 3, 2, 1
CONFIG_ERROR = "codalab-scaler: config error: "


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[KubeFake]:
    server = KubeFake()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def start(launcher: Launcher, sim: CodaLabSimulator, backend: Path, *leader: str) -> Running:
    """A scaler whose backend uses the fake through ``backend``; ``leader``: its Lease flags."""
    return await launcher(
        "--server", sim.url, "--sleep-time", "0.2", "--min-workers", "0", "--max-workers", "2",
        "--http-host", "127.0.0.1", "--http-port", "0",
        "--leader-election", "--leader-election-identity", "replica-a",
        "--leader-election-lease-seconds", str(LEASE),
        "--leader-election-renew-seconds", str(RENEW),
        "--leader-election-retry-seconds", str(RETRY),
        *leader,
        "kubernetes", "--kubeconfig", str(backend),
        env=creds(),
    )  # fmt: skip


async def config_error(scaler: Running) -> str:
    """The process exits 2 with exactly one config error line: that line."""
    assert await scaler.exit_code(within=15) == EXIT_CONFIG, scaler.raw
    lines = [line for line in scaler.raw if line.startswith(CONFIG_ERROR)]
    assert len(lines) == 1, scaler.raw
    return lines[0].removeprefix(CONFIG_ERROR)


async def test_missing_kubeconfig_exits_2_naming_the_setting(
    sim: CodaLabSimulator, fake: KubeFake, launcher: Launcher, tmp_path: Path
) -> None:
    backend = fake.write_kubeconfig(tmp_path / "kubeconfig")
    missing = tmp_path / "no-such-kubeconfig"
    scaler = await start(launcher, sim, backend, "--leader-election-kubeconfig", str(missing))
    line = await config_error(scaler)
    assert line.startswith("leader_election_kubeconfig: "), line
    assert str(missing) in line


async def test_unusable_kubeconfig_exits_2_naming_the_setting(
    sim: CodaLabSimulator, fake: KubeFake, launcher: Launcher, tmp_path: Path
) -> None:
    backend = fake.write_kubeconfig(tmp_path / "kubeconfig")
    broken = tmp_path / "broken-kubeconfig"
    broken.write_text('{"apiVersion": "v1", "kind": "Config", "current-context": "nowhere"}')
    scaler = await start(launcher, sim, backend, "--leader-election-kubeconfig", str(broken))
    line = await config_error(scaler)
    assert line.startswith(f"leader_election_kubeconfig: {broken} is not a usable"), line


async def test_missing_namespace_exits_2_naming_the_setting(
    sim: CodaLabSimulator, fake: KubeFake, launcher: Launcher, tmp_path: Path
) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    scaler = await start(
        launcher, sim, kubeconfig,
        "--leader-election-kubeconfig", str(kubeconfig),
        "--leader-election-namespace", "nowhere",
    )  # fmt: skip
    line = await config_error(scaler)
    assert line.startswith("leader_election_namespace: namespace 'nowhere' does not exist"), line
    assert not fake.list("leases", "default")


@pytest.mark.parametrize(
    ("method", "status", "setting"),
    [
        ("GET", 403, "leader_election: may not get Lease default/codalab-scaler"),
        ("POST", 403, "leader_election: may not create Lease default/codalab-scaler"),
        ("GET", 401, "leader_election_kubeconfig: the credentials of"),
        ("POST", 422, "leader_election_lease: 'codalab-scaler' is not a valid Lease name"),
    ],
)
async def test_refused_lease_calls_exit_2_naming_the_setting(
    sim: CodaLabSimulator,
    fake: KubeFake,
    launcher: Launcher,
    tmp_path: Path,
    method: str,
    status: int,
    setting: str,
) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    fake.fail(method, "leases", status, times=100)
    scaler = await start(launcher, sim, kubeconfig, "--leader-election-kubeconfig", str(kubeconfig))
    line = await config_error(scaler)
    assert line.startswith(setting), line
    assert not any(line.get("event") == "loop.crashed" for line in scaler.lines)


async def test_unanswered_lease_calls_are_retried_until_the_server_answers(
    sim: CodaLabSimulator, fake: KubeFake, launcher: Launcher, tmp_path: Path
) -> None:
    backend = fake.write_kubeconfig(tmp_path / "kubeconfig")
    # The Lease's API server is down at first: connections are refused.
    leases = KubeFake()
    port = int((await leases.start()).rsplit(":", 1)[1])
    kubeconfig = leases.write_kubeconfig(tmp_path / "leases-kubeconfig")
    await leases.stop()
    scaler = await start(launcher, sim, backend, "--leader-election-kubeconfig", str(kubeconfig))
    first = await scaler.event("leader.api_error", within=10)
    await scaler.event("leader.api_error", within=10, after=first)
    assert scaler.proc.returncode is None
    # Up again, but answering 503 the first two times.
    leases.fail("GET", "leases", 503, times=2)
    await leases.start(port)
    try:
        await scaler.event("leader.elected", within=15)
        errors = [line for line in scaler.lines if line.get("event") == "leader.api_error"]
        assert any("503" in line["error"] for line in errors), errors
        assert leases.list("leases", "default")[0]["spec"]["holderIdentity"] == "replica-a"
        await asyncio.sleep(RETRY * 1.5)  # it renews without errors
        assert scaler.proc.returncode is None
        scaler.proc.send_signal(signal.SIGTERM)
        assert await scaler.exit_code() == EXIT_OK
    finally:
        await leases.stop()
    assert not any(line.get("event") == "loop.crashed" for line in scaler.lines)
