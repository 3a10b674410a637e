"""The executable stopped in the middle of a burst of launches, then started again.

SIGKILL (no clean-up at all) or SIGTERM (a launch in progress finishes)
right after the first launch of a burst: the workers outlive the scaler,
the next instance counts them from the backend alone, and between the two
instances no worker is launched twice and the pool never goes past max.
Counted in the backend itself (worker processes, moto's queue), not in the
scaler's own view.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from codalab_scaler.simulator import CodaLabSimulator
from tests.fault_proxy import SLOW_SECONDS, Fault, ProxyFactory, fault_proxy
from tests.moto_server import QUEUE, SECRET_ARN, MotoBatch, aws_env, moto, moto_server
from tests.scaler_process import Launcher, Running, creds, launcher, sim
from tests.waiting import eventually

__all__ = ["aws_env", "fault_proxy", "launcher", "moto", "moto_server", "sim"]  # fixtures

pytestmark = pytest.mark.process

STOPS = [signal.SIGKILL, signal.SIGTERM]
SLEEP = "0.2"


@pytest.fixture
def worker_script(tmp_path: Path) -> Iterator[Path]:
    """A cl-worker stand-in that stays up and records its worker id; all killed afterwards."""
    pids = tmp_path / "pids"
    script = tmp_path / "fake-cl-worker"
    # cl-worker's argv carries --id <worker id>: record it to catch a worker started twice.
    script.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do [ "$1" = --id ] && id="$2"; shift; done\n'
        f'echo "$$ $id" >> "{pids}"\nexec sleep 120\n'
    )
    script.chmod(0o755)
    yield script
    if pids.exists():
        for line in pids.read_text().splitlines():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)


async def stop(scaler: Running, how: signal.Signals) -> None:
    scaler.proc.send_signal(how)
    code = await scaler.exit_code(within=20)
    assert code == (-signal.SIGKILL if how is signal.SIGKILL else 0)


def local_args(sim: CodaLabSimulator, tmp_path: Path, script: Path) -> list[str]:
    return [
        "--server", sim.url, "--sleep-time", SLEEP, "--min-workers", "0", "--max-workers", "4",
        "--min-seconds-between-workers", "0", "--worker-executable", str(script),
        "--http-host", "127.0.0.1", "--http-port", "0",
        "local", "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip


@pytest.mark.parametrize("how", STOPS, ids=lambda s: s.name)
async def test_local_workers_survive_a_stop_mid_burst_and_are_never_launched_twice(
    sim: CodaLabSimulator,
    tmp_path: Path,
    worker_script: Path,
    launcher: Launcher,
    how: signal.Signals,
) -> None:
    for _ in range(6):
        sim.add_bundle(duration=600)
    first = await launcher(*local_args(sim, tmp_path, worker_script), env=creds())
    await first.event("scaler.launched", within=20)
    await stop(first, how)
    started_by_first = len((tmp_path / "pids").read_text().splitlines())
    assert 1 <= started_by_first <= 4

    second = await launcher(*local_args(sim, tmp_path, worker_script), env=creds())
    await second.event("scaler.decided", within=20, reason="at_max", active=4)
    await asyncio.sleep(3 * float(SLEEP))  # a few more passes at max
    await stop(second, signal.SIGTERM)
    workers = [line.split()[1] for line in (tmp_path / "pids").read_text().splitlines()]
    assert len(workers) == 4  # never above max, across both instances
    assert len(set(workers)) == 4  # no worker id started twice
    relaunched = [e for e in second.lines if e.get("event") == "scaler.launched"]
    assert len(relaunched) == 4 - started_by_first  # the second counted the first's workers


def aws_args(sim: CodaLabSimulator, moto: MotoBatch, endpoint: str | None = None) -> list[str]:
    return [
        "--server", sim.url, "--sleep-time", SLEEP, "--min-workers", "0", "--max-workers", "6",
        "--min-seconds-between-workers", "0", "--http-host", "127.0.0.1", "--http-port", "0",
        "aws-batch", "--endpoint-url", endpoint or moto.url, "--job-queue", QUEUE,
        "--password-secret-arn", SECRET_ARN,
    ]  # fmt: skip


async def our_jobs(moto: MotoBatch) -> list[str]:
    names = await asyncio.to_thread(moto.statuses)
    return [name for name in names if name.startswith("codalab-scaler-default-")]


@pytest.mark.parametrize("how", STOPS, ids=lambda s: s.name)
async def test_batch_jobs_survive_a_stop_mid_burst_and_are_never_submitted_twice(
    sim: CodaLabSimulator, moto: MotoBatch, launcher: Launcher, how: signal.Signals
) -> None:
    for _ in range(4):
        sim.add_bundle(duration=600)
    first = await launcher(*aws_args(sim, moto), env=creds())
    await first.event("scaler.launched", within=20)
    await stop(first, how)
    # Whatever the first submitted is in the queue (a submit cut short either made it or not).
    submitted_by_first = len(await our_jobs(moto))
    assert 1 <= submitted_by_first <= 4

    second = await launcher(*aws_args(sim, moto), env=creds())
    await second.event("scaler.decided", within=20, reason="pending_covers_staged", pending=4)
    await asyncio.sleep(3 * float(SLEEP))
    await stop(second, signal.SIGTERM)
    jobs = await our_jobs(moto)
    assert len(jobs) == 4  # pending covers staged: not one more, across both instances
    assert len(set(jobs)) == 4  # job names carry the worker id: none submitted twice
    relaunched = [e for e in second.lines if e.get("event") == "scaler.launched"]
    assert len(relaunched) == 4 - submitted_by_first


@pytest.mark.parametrize("how", STOPS, ids=lambda s: s.name)
async def test_a_stop_while_a_submit_is_on_the_wire_leaves_no_half_job(
    sim: CodaLabSimulator,
    moto: MotoBatch,
    launcher: Launcher,
    fault_proxy: ProxyFactory,
    how: signal.Signals,
) -> None:
    # Every SubmitJob is held 0.3 s by the proxy: the signal lands while one is in flight.
    proxy = await fault_proxy(moto.url, applies=lambda request: request.path == "/v1/submitjob")
    await proxy.set(Fault.SLOW)
    for _ in range(4):
        sim.add_bundle(duration=600)
    first = await launcher(*aws_args(sim, moto, endpoint=proxy.url), env=creds())

    def submitting() -> bool:
        return any(path == "/v1/submitjob" for _at, _method, path in proxy.seen)

    await eventually(submitting, "a submit on the wire", within=20, interval=0.01)
    await stop(first, how)
    await asyncio.sleep(3 * SLOW_SECONDS)  # the held submit lands, or dies with its connection
    left = await our_jobs(moto)
    submitted = [e for e in first.lines if e.get("event") == "aws_batch.job_submitted"]
    if how is signal.SIGTERM:
        assert len(left) == len(submitted) >= 1  # the launch in progress finished, and was told
    else:
        assert len(submitted) <= len(left) <= len(submitted) + 1  # made it, or does not exist

    second = await launcher(*aws_args(sim, moto), env=creds())
    await second.event("scaler.decided", within=20, reason="pending_covers_staged", pending=4)
    await stop(second, signal.SIGTERM)
    jobs = await our_jobs(moto)
    assert len(jobs) == len(set(jobs)) == 4  # the job of the cut-short launch counted, not redone
    relaunched = [e for e in second.lines if e.get("event") == "scaler.launched"]
    assert len(relaunched) == 4 - len(left)
