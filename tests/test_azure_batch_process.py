"""End to end: the ``codalab-scaler`` executable, ``azure-batch`` against the fake Batch service."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from codalab_scaler.simulator import CodaLabSimulator
from tests.azure_batch_fake import ACCOUNT, JOB, KEY, FakeBatch, running
from tests.scaler_process import PASSWORD, Launcher, creds, launcher, scrape, sim
from tests.waiting import eventually

__all__ = ["launcher", "sim"]  # fixtures

pytestmark = pytest.mark.process


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeBatch]:
    async with running(FakeBatch(page_size=2)) as served:  # several pages from 3 tasks on
        yield served


async def test_launches_tasks_for_staged_bundles_and_stops_at_max(
    sim: CodaLabSimulator, fake: FakeBatch, launcher: Launcher
) -> None:
    for _ in range(3):
        sim.add_bundle(duration=600)
    scaler = await launcher(
        "--server", sim.url, "--sleep-time", "0.2", "--min-workers", "0", "--max-workers", "5",
        "--min-seconds-between-workers", "0", "--http-host", "127.0.0.1", "--http-port", "0",
        "azure-batch", "--service-url", fake.url, "--account-name", ACCOUNT, "--job-id", JOB,
        "--log-container-url", "https://logs.blob.core.windows.net/worker-logs",
        "--worker-password-file", "/mnt/codalab/worker-password",
        "--cpus", "2", "--memory-mb", "4096",
        env={**creds(), "AZURE_BATCH_ACCESS_KEY": KEY},
    )  # fmt: skip
    port = (await scaler.event("http.listening"))["port"]
    covered = await scaler.event(
        "scaler.decided", within=20, reason="pending_covers_staged", pending=3
    )
    fake.set_state(next(iter(fake.tasks())), "running")  # one worker starts, two still boot

    for _ in range(4):
        sim.add_bundle(duration=600)
    await scaler.event("scaler.decided", within=20, after=covered, reason="at_max")
    text = ""

    async def all_listed() -> bool:
        nonlocal text
        status, text = await scrape(port)
        assert status == 200
        return 'codalab_scaler_in_flight_launches{pool="default"} 0.0' in text

    await eventually(all_listed, "every launch listed by the fake", within=10, interval=0.1)
    assert 'codalab_scaler_worker_jobs{pool="default",state="active"} 1.0' in text
    assert 'codalab_scaler_worker_jobs{pool="default",state="pending"} 4.0' in text
    assert 'codalab_scaler_launches_total{outcome="launched",pool="default"} 5.0' in text
    assert len(fake.tasks()) == 5
    assert all(t["id"].startswith("codalab-scaler-default-") for t in fake.tasks().values())
    options = {t["containerSettings"]["containerRunOptions"] for t in fake.tasks().values()}
    assert all(o.startswith("--cpus 2 --memory 4096M ") for o in options)

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/status") as resp,
    ):
        status_page = await resp.text()
    assert resp.status == 200

    scaler.proc.send_signal(signal.SIGTERM)
    assert await scaler.exit_code() == 0
    output = "\n".join(scaler.raw) + text + status_page
    assert PASSWORD not in output
    assert KEY not in output
    assert PASSWORD not in repr(fake.tasks())


async def test_a_wrong_key_launches_nothing_and_says_why(
    sim: CodaLabSimulator, fake: FakeBatch, launcher: Launcher
) -> None:
    sim.add_bundle(duration=600)
    scaler = await launcher(
        "--server", sim.url, "--sleep-time", "0.2", "--http-port", "0", "--once",
        "azure-batch", "--service-url", fake.url, "--account-name", ACCOUNT, "--job-id", JOB,
        "--log-container-url", "https://logs.blob.core.windows.net/worker-logs",
        "--worker-password-file", "/mnt/codalab/worker-password",
        env={**creds(), "AZURE_BATCH_ACCESS_KEY": "d3Jvbmcta2V5"},
    )  # fmt: skip
    assert await scaler.exit_code(within=30) != 0
    assert any("AuthenticationFailed" in line for line in scaler.raw)
    assert fake.tasks() == {}
