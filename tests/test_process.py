"""The ``codalab-scaler`` executable as an operator runs it: against the CodaLab simulator
over real HTTP, with the local backend, scraped, probed and stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from codalab_scaler.entry.demo import DEMO_POOLS
from codalab_scaler.simulator import CodaLabSimulator
from tests.scaler_process import PASSWORD, Launcher, creds, launcher, scrape, sim

__all__ = ["launcher", "sim"]  # fixtures

pytestmark = pytest.mark.process


@pytest.fixture
def worker_script(tmp_path: Path) -> Iterator[Path]:
    """A cl-worker stand-in that just stays up; every one it starts is killed afterwards."""
    pids = tmp_path / "pids"
    script = tmp_path / "fake-cl-worker"
    script.write_text(f'#!/bin/sh\necho $$ >> "{pids}"\nexec sleep 120\n')
    script.chmod(0o755)
    yield script
    if pids.exists():
        for pid in pids.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def scaler_args(sim: CodaLabSimulator, tmp_path: Path, script: Path, *extra: str) -> list[str]:
    return [
        "--server", sim.url, "--sleep-time", "0.2", "--min-workers", "0", "--max-workers", "2",
        "--min-seconds-between-workers", "0", "--worker-executable", str(script),
        "--http-host", "127.0.0.1", "--http-port", "0", *extra,
        "local", "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip


async def test_runs_scrapes_probes_and_stops_on_sigterm(
    sim: CodaLabSimulator, tmp_path: Path, worker_script: Path, launcher: Launcher
) -> None:
    for _ in range(3):
        sim.add_bundle(duration=600)
    scaler = await launcher(*scaler_args(sim, tmp_path, worker_script), env=creds())
    port = (await scaler.event("http.listening"))["port"]
    await scaler.event("scaler.decided", reason="at_max", active=2)
    base = f"http://127.0.0.1:{port}"
    status_code, metrics = await scrape(port)
    assert status_code == 200
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["ok"] is True
        async with http.get(f"{base}/status") as resp:
            status_text = await resp.text()
    assert 'codalab_scaler_staged_bundles{pool="default"} 3.0' in metrics
    assert 'codalab_scaler_worker_jobs{pool="default",state="active"} 2.0' in metrics
    assert 'codalab_scaler_launches_total{outcome="launched",pool="default"} 2.0' in metrics
    assert 'codalab_scaler_decisions_total{pool="default",reason="at_max"}' in metrics
    status = json.loads(status_text)
    assert status["pools"]["default"]["decision"]["reason"] == "at_max"
    assert status["pools"]["default"]["bundles"]["staged_count"] == 3

    scaler.proc.send_signal(signal.SIGTERM)
    assert await scaler.exit_code() == 0
    everything = metrics + status_text + "\n".join(scaler.raw)
    assert PASSWORD not in everything
    assert any(line.get("event") == "service.stopped" for line in scaler.lines)


async def test_wrong_password_is_a_clear_error_and_exit_2(
    sim: CodaLabSimulator, tmp_path: Path, worker_script: Path, launcher: Launcher
) -> None:
    scaler = await launcher(*scaler_args(sim, tmp_path, worker_script), env=creds("wrong"))
    assert await scaler.exit_code() == 2
    refused = [line for line in scaler.lines if line.get("event") == "codalab.login_refused"]
    assert refused
    assert refused[0]["level"] == "error"
    assert "Traceback" not in "\n".join(scaler.raw)


async def test_once_runs_one_cycle_and_exits_0(
    sim: CodaLabSimulator, tmp_path: Path, worker_script: Path, launcher: Launcher
) -> None:
    sim.add_bundle(duration=600)
    scaler = await launcher(*scaler_args(sim, tmp_path, worker_script, "--once"), env=creds())
    assert await scaler.exit_code(within=20) == 0
    assert [line["event"] for line in scaler.lines if line.get("event") == "scaler.launched"] == [
        "scaler.launched"
    ]
    assert not any(line.get("event") == "http.listening" for line in scaler.lines)


async def test_once_without_a_view_exits_non_zero(
    tmp_path: Path, worker_script: Path, launcher: Launcher, unused_tcp_port: int
) -> None:
    dead = f"http://127.0.0.1:{unused_tcp_port}"
    scaler = await launcher(
        "--server", dead, "--once", "--min-workers", "1", "--worker-executable",
        str(worker_script), "--request-timeout-seconds", "1", "local",
        "--state-dir", str(tmp_path / "state"),
        env={**creds(), "CODALAB_SCALER_RETRY_MAX_SECONDS": "1"},
    )  # fmt: skip
    assert await scaler.exit_code(within=30) == 1
    failed = [line for line in scaler.lines if line.get("event") == "once.failed"]
    assert failed
    assert "stale view" in failed[0]["problems"][0]
    assert not (tmp_path / "pids").exists()  # nothing launched on an unknown view


async def test_dry_run_launches_nothing(
    sim: CodaLabSimulator, tmp_path: Path, worker_script: Path, launcher: Launcher
) -> None:
    sim.add_bundle(duration=600)
    scaler = await launcher(
        *scaler_args(sim, tmp_path, worker_script, "--once", "--dry-run"), env=creds()
    )
    assert await scaler.exit_code(within=20) == 0
    assert any(line.get("event") == "scaler.dry_run_launch" for line in scaler.lines)
    assert not (tmp_path / "pids").exists()


async def test_demo_scales_up_drains_the_queue_and_scales_down(launcher: Launcher) -> None:
    # Standard output is a pipe here: the demo logs JSON lines to it, no live view.
    demo = await launcher(
        "--http-port", "0", "demo", "--bundles", "6", "--bundles-per-minute", "600",
        "--max-run-seconds", "2",
    )  # fmt: skip
    port = (await demo.event("http.listening"))["port"]
    await demo.event("scaler.launched", within=20)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        assert resp.status == 200
    drained = await demo.event("demo.status", within=60, staged=0, running=0, done=6)
    # workers exit when idle: both pools go back to zero
    for pool in DEMO_POOLS:
        await demo.event(
            "scaler.decided", within=30, after=drained, pool=pool.name, active=0, pending=0
        )
    launches = [line for line in demo.lines if line.get("event") == "scaler.launched"]
    launched = Counter(line["pool"] for line in launches)
    assert set(launched) == {p.name for p in DEMO_POOLS}  # the workload reaches both shapes
    for pool in DEMO_POOLS:
        assert launched[pool.name] <= pool.max_workers  # scaled up, never past the pool's max
    demo.proc.send_signal(signal.SIGTERM)
    assert await demo.exit_code() == 0
    assert any(line.get("event") == "demo.stopped" for line in demo.lines)
    assert not any("logs go to" in line for line in demo.raw)


async def test_restart_keeps_count_of_running_workers(
    sim: CodaLabSimulator, tmp_path: Path, worker_script: Path, launcher: Launcher
) -> None:
    for _ in range(3):
        sim.add_bundle(duration=600)
    first = await launcher(*scaler_args(sim, tmp_path, worker_script), env=creds())
    await first.event("scaler.decided", reason="at_max", active=2)
    first.proc.send_signal(signal.SIGINT)
    assert await first.exit_code() == 0
    # The workers outlive the scaler; a new one counts them and launches nothing.
    second = await launcher(*scaler_args(sim, tmp_path, worker_script), env=creds())
    await second.event("scaler.decided", reason="at_max", active=2)
    assert not any(line.get("event") == "scaler.launched" for line in second.lines)
    assert len((tmp_path / "pids").read_text().split()) == 2
