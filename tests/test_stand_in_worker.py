"""The stand-in cl-worker, run as a real subprocess against the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from codalab_scaler.core.worker_command import build_command, resolve_hostname
from codalab_scaler.simulator import CodaLabSimulator
from codalab_scaler.simulator.stand_in_worker import (
    MAX_RUN_SECONDS,
    main,
    parse_args,
    parse_request_time,
)
from tests.defaults import worker_options
from tests.simulator_fixtures import (  # noqa: F401 - pytest finds the fixtures by name
    USERS,
    sim_factory_fixture,
    sim_fixture,
)
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[1]
Launch = Callable[..., Awaitable[asyncio.subprocess.Process]]


@pytest_asyncio.fixture(name="launch")
async def launch_fixture(sim: CodaLabSimulator, tmp_path: Path) -> AsyncIterator[Launch]:
    """Start stand-in workers against ``sim``; any still running are killed in teardown."""
    processes: list[asyncio.subprocess.Process] = []

    async def launch(
        *flags: str, user: str = "codalab", password: str | None = None
    ) -> asyncio.subprocess.Process:
        env = {**os.environ, "CODALAB_USERNAME": user}
        env["CODALAB_PASSWORD"] = USERS[user] if password is None else password
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "codalab_scaler.simulator.stand_in_worker",
            "--server", sim.url, "--verbose", "--work-dir", str(tmp_path / "work"),
            "--id", "w1", "--checkin-frequency-seconds", "0.1", *flags,
            cwd=REPO, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        processes.append(process)
        return process

    try:
        yield launch
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def exit_code(process: asyncio.subprocess.Process, within: float = 15.0) -> int:
    _, stderr = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode is not None, stderr.decode()
    return process.returncode


async def test_runs_the_staged_bundles_then_exits_when_idle(
    sim: CodaLabSimulator, launch: Launch, tmp_path: Path
) -> None:
    uuids = [sim.add_bundle(duration=0.2), sim.add_bundle(duration=0.2)]
    process = await launch("--exit-when-idle", "--idle-seconds", "1")
    assert await exit_code(process) == 0
    assert sorted(sim.bundles_in_state("ready")) == sorted(uuids)
    assert (tmp_path / "work").is_dir()
    # cl-worker 1.7.5 does not check out: CodaLab lists it until 60 s after its last check-in.
    assert list(sim.workers) == ["w1"]
    assert sim.runs_by_worker == {"w1": 2}


async def test_exit_after_num_runs(sim: CodaLabSimulator, launch: Launch) -> None:
    first, second = sim.add_bundle(duration=0.1), sim.add_bundle(duration=0.1)
    process = await launch("--exit-after-num-runs", "1")
    assert await exit_code(process) == 0
    assert sim.bundles_in_state("ready") == [first]
    assert sim.bundles_in_state("staged") == [second]


async def test_announces_its_flags_in_the_checkin(sim: CodaLabSimulator, launch: Launch) -> None:
    process = await launch(
        "--tag", "gpuq", "--tag-exclusive", "--cpus", "4", "--gpus", "2",
        "--memory-bytes", "1024", "--preemptible", "--exit-when-idle", "--idle-seconds", "0",
    )  # fmt: skip
    assert await exit_code(process) == 0
    checkins = [r for r in sim.requests if r.path == "/rest/workers/w1/checkin"]
    first = json.loads(checkins[0].body)
    assert first["tag"] == "gpuq"
    assert first["tag_exclusive"] is True
    assert (first["cpus"], first["gpus"], first["memory_bytes"]) == (4, 2, 1024)
    assert first["preemptible"] is True
    assert all(json.loads(c.body)["is_terminating"] is False for c in checkins)  # no check-out
    assert all(r.headers.get("x-requested-with") == "XMLHttpRequest" for r in sim.requests)


async def test_sigterm_checks_out_and_the_run_is_restaged(
    sim: CodaLabSimulator, launch: Launch
) -> None:
    uuid = sim.add_bundle(duration=60)
    process = await launch("--exit-when-idle", "--idle-seconds", "60")
    await eventually(
        lambda: sim.bundles_in_state("running") == [uuid], "the bundle running", within=10
    )
    process.send_signal(signal.SIGTERM)
    assert await exit_code(process) == 0
    assert sim.workers == {}
    assert sim.bundles_in_state("staged") == [uuid]


async def test_a_refused_login_exits_1(launch: Launch) -> None:
    process = await launch("--exit-when-idle", password="wrong")
    assert await exit_code(process) == 1


def test_missing_credentials_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CODALAB_USERNAME", raising=False)
    monkeypatch.delenv("CODALAB_PASSWORD", raising=False)
    assert main(["--server", "http://127.0.0.1:9", "--work-dir", str(tmp_path / "w")]) == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3s", 3.0), ("0.5s", 0.5), ("2m", 120.0), ("1h", 3600.0), ("7", 7.0), (" 2 S ", 2.0),
        ("", 1.0), (None, 1.0), ("soon", 1.0), ("-3s", 1.0), ("2d", MAX_RUN_SECONDS),
    ],
)  # fmt: skip
def test_request_time_format(text: object, seconds: float) -> None:
    assert parse_request_time(text) == seconds


def test_accepts_every_flag_the_scaler_passes() -> None:
    options = worker_options(
        server="http://127.0.0.1:1", tag="gpu", tag_exclusive=True, group="nlp",
        exit_after_num_runs=8, max_work_dir_size="88g", delete_work_dir_on_exit=True,
        exit_on_exception=True, pass_down_termination=True, checkin_frequency_seconds=30,
        shared_memory_size_gb=10, preemptible=True,
    )  # fmt: skip
    argv = resolve_hostname(build_command(options, "w1", "/tmp/w1"), hostname="host")
    args = parse_args(argv[1:])
    assert (args.id, args.tag, args.tag_exclusive, args.exit_after_num_runs) == (
        "host-w1", "gpu", True, 8,
    )  # fmt: skip
    assert (args.checkin_frequency_seconds, args.idle_seconds) == (30.0, 600.0)
