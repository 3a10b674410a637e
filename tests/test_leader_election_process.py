"""Two scaler processes, one Lease on the fake API server: exactly one launches."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from codalab_scaler.simulator import CodaLabSimulator
from tests.kube_fake import KubeFake
from tests.scaler_process import Launcher, Running, creds, launcher, scrape, sim
from tests.waiting import eventually

__all__ = ["launcher", "sim"]  # fixtures

pytestmark = pytest.mark.process

LEASE, RENEW, RETRY = 3, 2, 1
MAX = 4


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[KubeFake]:
    server = KubeFake()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def get(port: int, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, json.loads(await r.text())


async def start(launcher: Launcher, sim: CodaLabSimulator, kubeconfig: Path, name: str) -> Running:
    return await launcher(
        "--server", sim.url, "--sleep-time", "0.2", "--min-workers", "0",
        "--max-workers", str(MAX), "--min-seconds-between-workers", "0",
        "--http-host", "127.0.0.1", "--http-port", "0",
        "--leader-election", "--leader-election-kubeconfig", str(kubeconfig),
        "--leader-election-identity", name,
        "--leader-election-lease-seconds", str(LEASE),
        "--leader-election-renew-seconds", str(RENEW),
        "--leader-election-retry-seconds", str(RETRY),
        "kubernetes", "--kubeconfig", str(kubeconfig),
        env=creds(),
    )  # fmt: skip


def created(scaler: Running) -> int:
    return sum(1 for line in scaler.lines if line.get("event") == "kubernetes.pod_created")


async def test_one_leader_launches_and_the_standby_takes_over(
    sim: CodaLabSimulator, fake: KubeFake, launcher: Launcher, tmp_path: Path
) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    for _ in range(2):
        sim.add_bundle(duration=600)
    a = await start(launcher, sim, kubeconfig, "replica-a")
    await a.event("leader.elected", within=10)
    b = await start(launcher, sim, kubeconfig, "replica-b")
    port_a = (await a.event("http.listening", within=10))["port"]
    port_b = (await b.event("http.listening", within=10))["port"]
    await a.event("scaler.decided", within=10, reason="pending_covers_staged", pending=2)

    async def standby_decided() -> bool:
        _, body = await get(port_b, "/status")
        return body["pools"]["default"]["decision"] is not None

    await eventually(standby_decided, "the standby decided", within=10, interval=0.1)
    await asyncio.sleep(0.5)  # a few more passes of both
    assert len(fake.pods()) == 2
    assert (created(a), created(b)) == (2, 0)

    status, body = await get(port_b, "/status")
    assert status == 200
    assert body["pools"]["default"]["decision"]["launch"] == 0  # it polls: the pods cover
    assert body["leadership"]["role"] == "standby"
    assert body["leadership"]["leader"] == "replica-a"
    assert (await get(port_b, "/healthz"))[0] == 200
    assert "codalab_scaler_leader 0.0" in (await scrape(port_b))[1]
    assert "codalab_scaler_leader 1.0" in (await scrape(port_a))[1]

    a.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await a.exit_code()
    for _ in range(4):
        sim.add_bundle(duration=600)
    await b.event("leader.elected", within=LEASE + RETRY + 2)
    assert time.monotonic() - killed <= LEASE + RETRY + 1.5
    await b.event("scaler.decided", within=10, reason="at_max", pending=MAX)
    await asyncio.sleep(1)
    assert len(fake.pods()) == MAX
    assert created(a) + created(b) == MAX

    b.proc.send_signal(signal.SIGTERM)
    assert await b.exit_code() == 0
    assert any(line.get("event") == "leader.released" for line in b.lines)
    lease = fake.list("leases", "default")[0]
    assert not lease["spec"].get("holderIdentity")
