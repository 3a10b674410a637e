"""End to end: the ``codalab-scaler`` executable, ``kubernetes`` against the fake API server."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from codalab_scaler.simulator import CodaLabSimulator
from tests.kube_fake import TOKEN, KubeFake
from tests.scaler_process import PASSWORD, Launcher, creds, launcher, scrape, sim

__all__ = ["launcher", "sim"]  # fixtures

pytestmark = pytest.mark.process


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[KubeFake]:
    server = KubeFake(namespaces={"default", "codalab"})
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_launches_pods_for_staged_bundles_then_stops_at_max(
    sim: CodaLabSimulator, fake: KubeFake, launcher: Launcher, tmp_path: Path
) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    for _ in range(3):
        sim.add_bundle(duration=600)
    scaler = await launcher(
        "--server", sim.url, "--sleep-time", "0.2", "--min-workers", "0", "--max-workers", "5",
        "--min-seconds-between-workers", "0", "--http-host", "127.0.0.1", "--http-port", "0",
        "kubernetes", "--kubeconfig", str(kubeconfig), "--namespace", "codalab",
        "--cpus", "2", "--memory-mb", "4096",
        env=creds(),
    )  # fmt: skip
    port = (await scaler.event("http.listening"))["port"]
    covered = await scaler.event(
        "scaler.decided", within=20, reason="pending_covers_staged", pending=3
    )
    assert len(fake.pods("codalab")) == 3
    for _ in range(4):
        sim.add_bundle(duration=600)
    await scaler.event("scaler.decided", within=20, after=covered, reason="at_max", pending=5)
    pods = fake.pods("codalab")
    assert len(pods) == 5
    fake.set_phase(pods[0]["metadata"]["name"], "Running", "codalab")
    await scaler.event("scaler.decided", within=10, after=covered, active=1, pending=4)
    status, text = await scrape(port)
    assert status == 200
    assert 'codalab_scaler_launches_total{outcome="launched",pool="default"} 5.0' in text
    assert 'codalab_scaler_worker_jobs{pool="default",state="active"} 1.0' in text

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/status") as resp,
    ):
        text += await resp.text()

    scaler.proc.send_signal(signal.SIGTERM)
    assert await scaler.exit_code() == 0
    assert len(fake.pods("codalab")) == 5
    [secret] = fake.list("secrets", "codalab")
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    stored = fake.dump().replace(json.dumps(secret), "")
    logs = "\n".join(scaler.raw) + text
    for leaked in (PASSWORD, encoded, TOKEN):
        assert leaked not in stored
        assert leaked not in logs


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--cert-path", "/nonexistent/ca.crt", "cert_path"),
        ("--cert", "not a PEM certificate", "cert"),
    ],
)
async def test_an_unusable_cluster_ca_exits_2_naming_the_flag(
    sim: CodaLabSimulator, launcher: Launcher, flag: str, value: str, field: str
) -> None:
    scaler = await launcher(
        "--server", sim.url, "--once", "--min-workers", "0",
        "kubernetes", "--cluster-host", "https://127.0.0.1:6443", "--auth-token", "t",
        flag, value,
        env=creds(),
    )  # fmt: skip
    assert await scaler.exit_code(within=30) == 2
    output = "\n".join(scaler.raw)
    assert "Traceback" not in output
    errors = [line for line in scaler.raw if line.startswith("codalab-scaler: config error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"codalab-scaler: config error: pools.default.backend.{field}: ")
