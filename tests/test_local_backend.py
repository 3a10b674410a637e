"""LocalBackend against real processes: a stand-in ``cl-worker`` shell script, no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from codalab_scaler.core.errors import ConfigError, LaunchRefused
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.core.worker_command import (
    WorkerOptions,
    build_command,
    resolve_hostname,
    work_dir_for,
)
from codalab_scaler.sources.backends.local.backend import LocalBackend
from tests.defaults import worker_options
from tests.waiting import eventually

REPO_ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "pa55-w0rd-never-logged"

# Records how it was started under $FAKE_RECORD_DIR/<pid>.*, writes a line to
# stdout and stderr, then sleeps (or exits with $FAKE_EXIT_CODE once the file
# "release" appears).  <pid>.env appears last, atomically: the "ready" mark.
WORKER_SCRIPT = """#!/bin/sh
if [ -n "$FAKE_IGNORE_TERM" ]; then trap '' TERM; fi
rec="$FAKE_RECORD_DIR/$$"
printf '%s\\n' "$@" > "$rec.argv"
env > "$rec.env.tmp" && mv "$rec.env.tmp" "$rec.env"
echo "fake worker $$ out"
echo "fake worker $$ err" >&2
if [ -n "$FAKE_EXIT_CODE" ]; then
    while [ ! -e "$FAKE_RECORD_DIR/release" ]; do sleep 0.02; done
    exit "$FAKE_EXIT_CODE"
fi
exec sleep 60
"""


def proc_stat(pid: int) -> tuple[str, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])


def is_running(pid: int) -> bool:
    stat_ = proc_stat(pid)
    return stat_ is not None and stat_[0] not in ("Z", "X")


@dataclass
class Rig:
    """A state dir, the stand-in worker, and every process the test started."""

    tmp: Path
    state_dir: Path = field(init=False)
    record_dir: Path = field(init=False)
    script: Path = field(init=False)
    backends: list[LocalBackend] = field(default_factory=list)  # alive until the workers are

    def __post_init__(self) -> None:
        self.state_dir = self.tmp / "state"
        self.record_dir = self.tmp / "records"
        self.record_dir.mkdir()
        self.script = self.tmp / "fake-cl-worker"
        self.script.write_text(WORKER_SCRIPT)
        self.script.chmod(0o755)

    def options(self, **overrides: Any) -> WorkerOptions:
        return worker_options(**{"executable": str(self.script), **overrides})

    def backend(
        self,
        pool: str = "cpu",
        options: WorkerOptions | None = None,
        env: dict[str, str] | None = None,
        hostname: str | None = "testhost",
    ) -> LocalBackend:
        backend = LocalBackend(
            pool,
            options or self.options(),
            self.state_dir,
            env={"FAKE_RECORD_DIR": str(self.record_dir), **(env or {})},
            hostname=hostname,
        )
        self.backends.append(backend)
        return backend

    def record_path(self, worker_id: str, pool: str = "cpu") -> Path:
        return self.state_dir / "workers" / pool / f"{worker_id}.json"

    def record(self, worker_id: str, pool: str = "cpu") -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.record_path(worker_id, pool).read_text())
        return data

    async def ready(self, worker_id: str, pool: str = "cpu") -> int:
        """The pid of ``worker_id`` once its script has recorded argv and env."""
        pid: int = self.record(worker_id, pool)["pid"]
        await eventually((self.record_dir / f"{pid}.env").exists, "the worker ready")
        return pid

    def argv_of(self, pid: int) -> list[str]:
        return (self.record_dir / f"{pid}.argv").read_text().splitlines()

    def env_of(self, pid: int) -> dict[str, str]:
        lines = (self.record_dir / f"{pid}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def kill_everything(self) -> None:
        pids = {int(p.name.split(".")[0]) for p in self.record_dir.glob("*.argv")}
        for path in self.state_dir.glob("workers/*/*.json"):
            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            stat_ = proc_stat(data["pid"]) if isinstance(data.get("pid"), int) else None
            if stat_ is not None and stat_[1] == data.get("start_time"):
                pids.add(data["pid"])
        pids.discard(os.getpid())
        for pid in pids:  # each worker leads its own session and process group
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.kill_everything()
        for backend in rig.backends:  # let each reap its own children (no zombies, no warnings)
            await eventually(functools.partial(_lists_nothing, backend), "every worker reaped")


async def test_launch_lists_the_worker_active_under_the_job_id_it_returned(rig: Rig) -> None:
    backend = rig.backend()
    job_id = await backend.launch("w1")
    assert job_id == "local-w1"
    assert list(await backend.list_jobs()) == [WorkerJob("local-w1", JobState.ACTIVE, "w1")]


async def test_argv_is_build_command_with_hostname_and_a_private_work_dir(rig: Rig) -> None:
    options = rig.options(tag="gpu", group="nlp", work_dir_prefix=str(rig.tmp / "scratch"))
    backend = rig.backend(options=options, hostname="node7")
    await backend.launch("w1")
    pid = await rig.ready("w1")

    work_dir = work_dir_for(options, "w1")
    assert work_dir == str(rig.tmp / "scratch" / "cl_worker_w1_work_dir")
    expected = resolve_hostname(build_command(options, "w1", work_dir), "node7")
    assert "node7-w1" in expected
    assert rig.argv_of(pid) == expected[1:]  # "$@" leaves out argv[0]
    assert rig.record("w1")["argv"] == expected
    assert stat.S_IMODE(Path(work_dir).stat().st_mode) == 0o700
    assert os.getsid(pid) == pid  # its own session: a Ctrl-C at the scaler's terminal misses it


async def test_work_dirs_default_under_the_state_dir_one_per_worker(rig: Rig) -> None:
    backend = rig.backend()
    await backend.launch("w1")
    await backend.launch("w2")
    dirs = []
    for worker_id in ("w1", "w2"):
        argv = rig.argv_of(await rig.ready(worker_id))
        work_dir = argv[argv.index("--work-dir") + 1]
        assert work_dir == str(rig.state_dir / "work" / f"cl_worker_{worker_id}_work_dir")
        assert stat.S_ISDIR(Path(work_dir).stat().st_mode)
        dirs.append(work_dir)
    assert dirs[0] != dirs[1]


async def test_credentials_reach_the_worker_only_through_its_environment(rig: Rig) -> None:
    backend = rig.backend(env={"CODALAB_USERNAME": "alice", "CODALAB_PASSWORD": PASSWORD})
    log_file = rig.state_dir / "logs" / "w1.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text("an earlier run\n")
    with capture_logs() as logs:
        await backend.launch("w1")
    pid = await rig.ready("w1")
    await eventually(lambda: f"fake worker {pid} err" in log_file.read_text(), "its log")

    env = rig.env_of(pid)
    assert env["CODALAB_USERNAME"] == "alice"
    assert env["CODALAB_PASSWORD"] == PASSWORD
    assert env["PATH"] == os.environ["PATH"]  # merged over the scaler's environment
    assert log_file.read_text().startswith("an earlier run\n")  # appended to
    assert f"fake worker {pid} out" in log_file.read_text()  # stdout and stderr
    assert PASSWORD not in " ".join(rig.argv_of(pid))
    assert PASSWORD not in rig.record_path("w1").read_text()
    assert PASSWORD not in log_file.read_text()
    assert PASSWORD not in repr(logs)


async def test_an_exited_worker_is_reaped_logged_and_forgotten(rig: Rig) -> None:
    backend = rig.backend(env={"FAKE_EXIT_CODE": "3"})
    await backend.launch("w1")
    pid = await rig.ready("w1")
    assert [job.worker_id for job in await backend.list_jobs()] == ["w1"]

    (rig.record_dir / "release").touch()
    listings: list[list[WorkerJob]] = []

    async def gone() -> bool:
        listings.append(list(await backend.list_jobs()))
        return not listings[-1]

    with capture_logs() as logs:
        await eventually(gone, "the exited worker forgotten")

    # Exit status 3: reported once as a failed start, then forgotten.
    failed = [job for listing in listings for job in listing if job.state is JobState.FAILED]
    assert failed == [WorkerJob("local-w1", JobState.FAILED, "w1", "exited with status 3")]
    assert not rig.record_path("w1").exists()
    assert proc_stat(pid) is None  # reaped: no zombie left behind
    exited = [e for e in logs if e["event"] == "local.worker_exited"]
    assert exited == [
        {
            "event": "local.worker_exited",
            "log_level": "info",
            "pool": "cpu",
            "worker_id": "w1",
            "pid": pid,
            "returncode": 3,
        }
    ]


async def _lists_nothing(backend: LocalBackend) -> bool:
    return not await backend.list_jobs()


RESTARTED_SCALER = """
import asyncio, sys
from pathlib import Path
from codalab_scaler.sources.backends.local.backend import LocalBackend
from tests.defaults import worker_options

async def main() -> None:
    backend = LocalBackend(
        "cpu", worker_options(executable=sys.argv[1]), Path(sys.argv[2]),
        env={"FAKE_RECORD_DIR": sys.argv[3]},
    )
    print(await backend.launch("w1"))
    await backend.aclose()

asyncio.run(main())
"""


async def test_a_new_instance_adopts_running_workers_and_drops_exited_ones(rig: Rig) -> None:
    # The first scaler is another process that exits: its worker must outlive it.
    first = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RESTARTED_SCALER, str(rig.script), str(rig.state_dir),
        str(rig.record_dir), cwd=REPO_ROOT, stdout=subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(first.communicate(), 30)
    assert first.returncode == 0
    assert stdout.decode().splitlines()[-1] == "local-w1"  # after structlog's console line
    pid = await rig.ready("w1")
    assert is_running(pid)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks; not our child

    backend = rig.backend()
    assert list(await backend.list_jobs()) == [WorkerJob("local-w1", JobState.ACTIVE, "w1")]

    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: _lists_nothing(backend), "the killed worker forgotten")
    assert not rig.record_path("w1").exists()


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """Some process that is not a worker."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=5)


async def test_a_reused_pid_is_not_taken_for_the_worker(
    rig: Rig, stranger: subprocess.Popen[bytes]
) -> None:
    stranger_stat = proc_stat(stranger.pid)
    assert stranger_stat is not None
    backend = rig.backend()

    def forge(start_time: int) -> None:
        record = {"worker_id": "w9", "job_id": "local-w9", "pid": stranger.pid,
                  "start_time": start_time, "launched_at": 0.0, "argv": []}  # fmt: skip
        rig.record_path("w9").parent.mkdir(parents=True, exist_ok=True)
        rig.record_path("w9").write_text(json.dumps(record))

    forge(stranger_stat[1])  # control: the same pid and start time is the worker
    assert [job.job_id for job in await backend.list_jobs()] == ["local-w9"]

    forge(stranger_stat[1] + 1)  # same pid, another process
    assert list(await backend.list_jobs()) == []
    assert not rig.record_path("w9").exists()

    forge(stranger_stat[1] + 1)
    await backend.stop_all(timeout=0.5)
    assert stranger.poll() is None  # never signalled


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"worker_id": "bad"}', b"\xff\xfe", b""],
    ids=["syntax", "not-object", "fields-missing", "not-utf8", "empty"],
)
async def test_a_corrupt_state_file_is_moved_aside_and_skipped(rig: Rig, content: bytes) -> None:
    backend = rig.backend()
    await backend.launch("w1")
    bad = rig.record_path("bad")
    bad.write_bytes(content)

    with capture_logs() as logs:
        jobs = await backend.list_jobs()

    assert [job.worker_id for job in jobs] == ["w1"]
    assert not bad.exists()
    assert bad.with_name("bad.json.invalid").read_bytes() == content
    assert [e["path"] for e in logs if e["event"] == "local.state_file_invalid"] == [str(bad)]


@pytest.mark.parametrize("problem", ["missing", "not-executable"])
async def test_an_unusable_executable_is_refused(rig: Rig, problem: str) -> None:
    executable = rig.tmp / "cl-worker"
    if problem == "not-executable":
        executable.write_text("#!/bin/sh\n")
        executable.chmod(0o644)
    backend = rig.backend(options=rig.options(executable=str(executable)))

    with pytest.raises(LaunchRefused, match="cannot execute"):
        await backend.launch("w1")
    assert not rig.record_path("w1").exists()
    assert list(await backend.list_jobs()) == []


@pytest.mark.parametrize("worker_id", ["../escape", "", ".hidden", "a/b"])
async def test_a_worker_id_unfit_for_a_file_name_is_refused(rig: Rig, worker_id: str) -> None:
    with pytest.raises(LaunchRefused):
        await rig.backend().launch(worker_id)


def test_a_pool_name_unfit_for_a_directory_is_a_config_error(rig: Rig) -> None:
    with pytest.raises(ConfigError):
        rig.backend(pool="../gpu")


async def test_launching_a_running_worker_id_again_starts_nothing(rig: Rig) -> None:
    backend = rig.backend()
    await backend.launch("w1")
    pid = rig.record("w1")["pid"]
    assert await backend.launch("w1") == "local-w1"
    assert rig.record("w1")["pid"] == pid


async def test_pools_do_not_see_each_others_workers(rig: Rig) -> None:
    cpu, gpu = rig.backend(pool="cpu"), rig.backend(pool="gpu")
    await cpu.launch("c1")
    await gpu.launch("g1")
    assert [job.worker_id for job in await cpu.list_jobs()] == ["c1"]
    assert [job.worker_id for job in await gpu.list_jobs()] == ["g1"]

    await cpu.stop_all(timeout=2)
    assert list(await cpu.list_jobs()) == []
    assert [job.worker_id for job in await gpu.list_jobs()] == ["g1"]
    assert is_running(rig.record("g1", pool="gpu")["pid"])


async def test_stop_all_terms_then_kills_every_worker_of_the_pool(rig: Rig) -> None:
    polite = rig.backend()
    stubborn = rig.backend(env={"FAKE_IGNORE_TERM": "1"})  # same pool, another instance
    await polite.launch("w1")
    await stubborn.launch("w2")
    pids = {worker_id: await rig.ready(worker_id) for worker_id in ("w1", "w2")}

    started = time.monotonic()
    with capture_logs() as logs:
        await polite.stop_all(timeout=0.5)

    assert time.monotonic() - started < 3
    assert list(await polite.list_jobs()) == []
    assert not any(is_running(pid) for pid in pids.values())
    assert not list((rig.state_dir / "workers" / "cpu").glob("*.json"))
    returncodes = {
        e["worker_id"]: e["returncode"] for e in logs if e["event"] == "local.worker_exited"
    }
    assert returncodes == {"w1": -signal.SIGTERM, "w2": -signal.SIGKILL}


async def test_cancel_terms_one_worker_and_ignores_the_gone(rig: Rig) -> None:
    backend = rig.backend()
    await backend.launch("w1")
    await backend.launch("w2")
    for worker_id in ("w1", "w2"):
        await rig.ready(worker_id)
    await backend.cancel("local-w1")
    await backend.cancel("local-nobody")

    async def only_w2() -> bool:
        return [job.worker_id for job in await backend.list_jobs()] == ["w2"]

    await eventually(only_w2, "w1 gone, not as a failed start")
