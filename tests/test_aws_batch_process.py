"""End to end: the ``codalab-scaler`` executable, ``aws-batch`` against moto, CodaLab simulated."""

from __future__ import annotations

import asyncio
import signal

import pytest

from codalab_scaler.simulator import CodaLabSimulator
from tests.moto_server import QUEUE, SECRET_ARN, MotoBatch, aws_env, moto, moto_server
from tests.scaler_process import PASSWORD, Launcher, creds, launcher, scrape, sim
from tests.waiting import eventually

__all__ = ["aws_env", "launcher", "moto", "moto_server", "sim"]  # fixtures

pytestmark = pytest.mark.process


async def test_launches_until_pending_covers_staged_then_until_max(
    sim: CodaLabSimulator, moto: MotoBatch, launcher: Launcher
) -> None:
    for _ in range(3):
        sim.add_bundle(duration=600)
    scaler = await launcher(
        "--server", sim.url, "--sleep-time", "0.2", "--min-workers", "0", "--max-workers", "5",
        "--min-seconds-between-workers", "0", "--http-host", "127.0.0.1", "--http-port", "0",
        "aws-batch", "--endpoint-url", moto.url, "--job-queue", QUEUE,
        "--password-secret-arn", SECRET_ARN, "--cpus", "2", "--memory-mb", "4096",
        env=creds(),
    )  # fmt: skip
    port = (await scaler.event("http.listening"))["port"]
    covered = await scaler.event(
        "scaler.decided", within=20, reason="pending_covers_staged", pending=3
    )
    status, text = await scrape(port)
    assert status == 200
    assert 'codalab_scaler_worker_jobs{pool="default",state="pending"} 3.0' in text
    assert 'codalab_scaler_worker_jobs{pool="default",state="active"} 0.0' in text
    assert 'codalab_scaler_launches_total{outcome="launched",pool="default"} 3.0' in text

    for _ in range(4):
        sim.add_bundle(duration=600)
    await scaler.event("scaler.decided", within=20, after=covered, reason="at_max", pending=5)
    # the view now comes from the queue alone (in-flight launches listed by moto)
    listed = 'codalab_scaler_in_flight_launches{pool="default"} 0.0'

    async def listed_by_moto() -> bool:
        nonlocal text
        status, text = await scrape(port)
        assert status == 200
        return listed in text

    await eventually(listed_by_moto, listed, within=10, interval=0.1)
    assert 'codalab_scaler_worker_jobs{pool="default",state="pending"} 5.0' in text
    assert 'codalab_scaler_launches_total{outcome="launched",pool="default"} 5.0' in text
    ours = [n for n in await asyncio.to_thread(moto.statuses) if n.startswith("codalab-scaler-")]
    assert len(ours) == 5

    scaler.proc.send_signal(signal.SIGTERM)
    assert await scaler.exit_code() == 0
    registered = [line for line in scaler.lines if line.get("event", "").startswith("aws_batch.")]
    assert [line["event"] for line in registered].count("aws_batch.definition_registered") == 1
    assert PASSWORD not in "\n".join(scaler.raw) + text
