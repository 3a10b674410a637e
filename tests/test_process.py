"""The ``codalab-scaler`` executable as an operator runs it: against the CodaLab simulator
over real HTTP, with the local backend, scraped, probed and stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from codalab_scaler.simulator import CodaLabSimulator

pytestmark = pytest.mark.process

EXECUTABLE = Path(sys.executable).parent / "codalab-scaler"
PASSWORD = "pw-for-process-tests"


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def event(
        self, name: str, within: float = 10.0, after: dict[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """The first log event ``name`` with these fields (logged after ``after``, if given)."""
        async with asyncio.timeout(within):
            while True:
                start = 0 if after is None else self.lines.index(after) + 1
                for line in self.lines[start:]:
                    wanted = all(line.get(k) == v for k, v in fields.items())
                    if line.get("event") == name and wanted:
                        return line
                if self.proc.returncode is not None and self.reader is not None:
                    await self.reader
                    raise AssertionError(f"exited {self.proc.returncode} before {name}: {self.raw}")
                await asyncio.sleep(0.02)

    async def exit_code(self, within: float = 10.0) -> int:
        """Wait for the process to end and its output to be read; its exit status."""
        async with asyncio.timeout(within):
            code = await self.proc.wait()
            if self.reader is not None:
                await self.reader
        return code


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[CodaLabSimulator]:
    simulator = CodaLabSimulator(users={"codalab": PASSWORD})
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


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


@pytest_asyncio.fixture
async def launcher(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Running] = []

    async def launch(*args: str, env: dict[str, str] | None = None) -> Running:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("CODALAB_", "XDG_"))
        }
        environment.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            str(EXECUTABLE), *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=environment,
        )  # fmt: skip
        running = Running(proc)

        async def read() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                text = raw.decode(errors="replace").rstrip("\n")
                running.raw.append(text)
                with contextlib.suppress(ValueError):
                    running.lines.append(json.loads(text))

        running.reader = asyncio.create_task(read())
        started.append(running)
        return running

    try:
        yield launch
    finally:
        for running in started:
            if running.proc.returncode is None:
                running.proc.kill()
            await running.proc.wait()
            if running.reader is not None:
                await running.reader


def creds(password: str = PASSWORD) -> dict[str, str]:
    return {"CODALAB_USERNAME": "codalab", "CODALAB_PASSWORD": password}


def scaler_args(sim: CodaLabSimulator, tmp_path: Path, script: Path, *extra: str) -> list[str]:
    return [
        "--server", sim.url, "--sleep-time", "0.2", "--min-workers", "0", "--max-workers", "2",
        "--min-seconds-between-workers", "0", "--worker-executable", str(script),
        "--http-host", "127.0.0.1", "--http-port", "0", *extra,
        "local", "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip


async def test_runs_scrapes_probes_and_stops_on_sigterm(
    sim: CodaLabSimulator, tmp_path: Path, worker_script: Path, launcher: Any
) -> None:
    for _ in range(3):
        sim.add_bundle(duration=600)
    scaler = await launcher(*scaler_args(sim, tmp_path, worker_script), env=creds())
    port = (await scaler.event("http.listening"))["port"]
    await scaler.event("scaler.decided", reason="at_max", active=2)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            metrics = await resp.text()
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
    sim: CodaLabSimulator, tmp_path: Path, worker_script: Path, launcher: Any
) -> None:
    scaler = await launcher(*scaler_args(sim, tmp_path, worker_script), env=creds("wrong"))
    assert await scaler.exit_code() == 2
    refused = [line for line in scaler.lines if line.get("event") == "codalab.login_refused"]
    assert refused
    assert refused[0]["level"] == "error"
    assert "Traceback" not in "\n".join(scaler.raw)


async def test_once_runs_one_cycle_and_exits_0(
    sim: CodaLabSimulator, tmp_path: Path, worker_script: Path, launcher: Any
) -> None:
    sim.add_bundle(duration=600)
    scaler = await launcher(*scaler_args(sim, tmp_path, worker_script, "--once"), env=creds())
    assert await scaler.exit_code(within=20) == 0
    assert [line["event"] for line in scaler.lines if line.get("event") == "scaler.launched"] == [
        "scaler.launched"
    ]
    assert not any(line.get("event") == "http.listening" for line in scaler.lines)


async def test_once_without_a_view_exits_non_zero(
    tmp_path: Path, worker_script: Path, launcher: Any, unused_tcp_port: int
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
    sim: CodaLabSimulator, tmp_path: Path, worker_script: Path, launcher: Any
) -> None:
    sim.add_bundle(duration=600)
    scaler = await launcher(
        *scaler_args(sim, tmp_path, worker_script, "--once", "--dry-run"), env=creds()
    )
    assert await scaler.exit_code(within=20) == 0
    assert any(line.get("event") == "scaler.dry_run_launch" for line in scaler.lines)
    assert not (tmp_path / "pids").exists()


async def test_demo_scales_up_drains_the_queue_and_scales_down(launcher: Any) -> None:
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
    # workers exit when idle: the pool goes back to zero
    await demo.event("scaler.decided", within=30, after=drained, active=0, pending=0)
    launched = [line for line in demo.lines if line.get("event") == "scaler.launched"]
    assert 2 <= len(launched) <= 4  # scaled up, never past the demo's max of 4
    demo.proc.send_signal(signal.SIGTERM)
    assert await demo.exit_code() == 0
    assert any(line.get("event") == "demo.stopped" for line in demo.lines)


async def test_restart_keeps_count_of_running_workers(
    sim: CodaLabSimulator, tmp_path: Path, worker_script: Path, launcher: Any
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
