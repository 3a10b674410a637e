"""slurm-batch without Slurm: squeue parsing, error mapping, credentials, the job bookkeeping.

The bookkeeping tests run the backend against stand-in ``squeue``/``sbatch``
scripts on ``PATH`` that print what the test wrote; the real commands are
exercised in ``test_slurm_cluster.py``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from codalab_scaler.core.errors import ConfigError, LaunchRefused, TransientError
from codalab_scaler.core.model import JobState
from codalab_scaler.entry.cli import build_parser, settings_from_args, split_search
from codalab_scaler.sources.backends import WorkerCredentials
from codalab_scaler.sources.backends.slurm import commands, squeue
from codalab_scaler.sources.backends.slurm.backend import SlurmBatchBackend
from codalab_scaler.sources.backends.slurm.credentials import (
    check_password_file,
    write_password_file,
)
from codalab_scaler.sources.backends.slurm.settings import SlurmBatchBackendSettings
from tests.defaults import worker_options
from tests.fakes import FakeClock

USER = "root" if os.geteuid() == 0 else os.environ.get("USER", "")
CREDS = WorkerCredentials("alice", "pw-Zq8#never-shown")
W1, W2, W3 = "a" * 32, "b" * 32, "c" * 32


# -- squeue output -------------------------------------------------------------


def test_parse_keeps_names_with_the_delimiter_and_skips_malformed_lines() -> None:
    text = "12|RUNNING|None|x-w1\n\n13|PENDING|Priority|we|ird\nnot a row\n|RUNNING|None|n\n"
    rows, malformed = squeue.parse(text)
    assert rows == [
        squeue.Row("12", "RUNNING", "None", "x-w1"),
        squeue.Row("13", "PENDING", "Priority", "we|ird"),
    ]
    assert malformed == ["not a row", "|RUNNING|None|n"]


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        ("PENDING", squeue.Phase.PENDING), ("CONFIGURING", squeue.Phase.PENDING),
        ("RUNNING", squeue.Phase.ACTIVE), ("COMPLETING", squeue.Phase.ACTIVE),
        ("COMPLETED", squeue.Phase.ENDED), ("CANCELLED", squeue.Phase.ENDED),
        ("CANCELLED+", squeue.Phase.ENDED), ("TIMEOUT", squeue.Phase.ENDED),
        ("FAILED", squeue.Phase.FAILED), ("NODE_FAIL", squeue.Phase.FAILED),
        ("OUT_OF_MEMORY", squeue.Phase.FAILED), ("BOOT_FAIL", squeue.Phase.FAILED),
        ("SOMETHING_NEW", None),
    ],
)  # fmt: skip
def test_states(state: str, phase: squeue.Phase | None) -> None:
    assert squeue.Row("1", state, "", "n").phase is phase


def test_ours_takes_only_this_pools_prefix() -> None:
    rows = [
        squeue.Row("1", "RUNNING", "", f"u-job-gpu-{W1}"),
        squeue.Row("2", "RUNNING", "", f"u-job-gpu-big-{W2}"),  # pool gpu-big
        squeue.Row("3", "RUNNING", "", "u-job-gpu-"),
        squeue.Row("4", "RUNNING", "", f"v-job-gpu-{W3}"),
    ]
    assert squeue.ours(rows, "u-job-gpu-") == {"1": (rows[0], W1)}


# -- error mapping ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "stderr", "kind"),
    [
        (None, "", TransientError),
        (1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
         TransientError),
        (1, "sbatch: error: Batch job submission failed: Unable to contact slurm controller",
         TransientError),
        (1, "sbatch: error: Batch job submission failed: Socket timed out on send/recv",
         TransientError),
        (1, "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
         TransientError),
        (1, "squeue: error: Munge decode failed: Failed to connect to munged", TransientError),
        (1, "sbatch: error: Batch job submission failed: Invalid partition name specified",
         LaunchRefused),
        (1, "sbatch: error: Batch job submission failed: Invalid account or account/partition",
         LaunchRefused),
        (1, "sbatch: error: Invalid generic resource (gres) specification", LaunchRefused),
        (1, "sbatch: error: Batch job submission failed: Invalid feature specification",
         LaunchRefused),
        (255, "sbatch: error: Invalid --time specification", LaunchRefused),
        (0, "squeue: error: Invalid user: nobody-here", LaunchRefused),
        (1, "something nobody expected", TransientError),
    ],
)  # fmt: skip
def test_classify(returncode: int | None, stderr: str, kind: type[Exception]) -> None:
    failure = commands.CommandFailed(("sbatch", "x"), returncode, "", stderr)
    error = commands.classify(failure)
    assert type(error).__mro__[1] is kind
    assert error.failure is failure  # type: ignore[attr-defined]
    assert stderr[:40] in str(error)


async def test_run_returns_stdout_and_raises_with_code_stdout_and_stderr() -> None:
    assert await commands.run(["sh", "-c", "echo hi"], timeout=5) == "hi\n"
    with pytest.raises(commands.SlurmRefused) as info:
        await commands.run(["sh", "-c", "echo out; echo 'Invalid account' >&2; exit 3"], timeout=5)
    assert info.value.failure.returncode == 3
    assert info.value.failure.stdout == "out\n"
    assert "Invalid account" in info.value.failure.stderr
    assert str(info.value) == "sh exited 3: Invalid account"


async def test_run_kills_a_command_that_overruns_its_timeout() -> None:
    with capture_logs() as logs, pytest.raises(commands.SlurmTransient, match="timed out"):
        await commands.run(["sleep", "30"], timeout=0.2)
    assert any(entry["event"] == "slurm.command_failed" for entry in logs)


async def test_run_refuses_a_missing_executable() -> None:
    with pytest.raises(LaunchRefused, match="cannot execute"):
        await commands.run(["/nonexistent/squeue"], timeout=5)


async def test_run_treats_stderr_errors_as_failures_when_asked() -> None:
    argv = ["sh", "-c", "echo 'squeue: error: Invalid user: x' >&2"]
    assert await commands.run(argv, timeout=5) == ""
    with pytest.raises(LaunchRefused, match="Invalid user"):
        await commands.run(argv, timeout=5, stderr_is_error=True)


def test_job_environment_drops_credentials_and_sbatch_overrides() -> None:
    env = {
        "PATH": "/bin", "SLURM_CONF": "/c", "CODALAB_PASSWORD": "x", "CODALAB_USERNAME": "u",
        "CODALAB_SCALER_PASSWORD": "x", "AWS_SECRET_ACCESS_KEY": "x", "GITHUB_TOKEN": "x",
        "SBATCH_TIMELIMIT": "1", "HOME": "/root",
    }  # fmt: skip
    assert commands.job_environment(env) == {"PATH": "/bin", "SLURM_CONF": "/c", "HOME": "/root"}


# -- credentials -------------------------------------------------------------------


def test_operator_password_file_must_be_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("alice\npw\n")
    path.chmod(0o640)
    with pytest.raises(ConfigError) as info:
        check_password_file(path)
    assert info.value.lines == [
        (
            f"password_file: {path} has mode 0640; Slurm workers read it, so it must be readable "
            f"by its owner only (chmod 600 {path})"
        )
    ]
    path.chmod(0o600)
    assert check_password_file(path) == path
    with pytest.raises(ConfigError, match="cannot read"):
        check_password_file(tmp_path / "missing")


def test_written_password_file_is_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "dir" / ".pw"
    old = os.umask(0)
    try:
        write_password_file(path, CREDS)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "alice\npw-Zq8#never-shown\n"
    assert sorted(p.name for p in path.parent.iterdir()) == [".pw"]


# -- settings and flags ------------------------------------------------------------------


def test_settings_refuse_values_that_would_break_the_script() -> None:
    with pytest.raises(ValueError, match="job_name"):
        SlurmBatchBackendSettings(partition="p", job_name="a b")
    with pytest.raises(ValueError, match="constraint"):
        SlurmBatchBackendSettings(partition="p", constraint="x\n#SBATCH --uid=0")
    with pytest.raises(ValueError, match="partition"):
        SlurmBatchBackendSettings(partition="")


def test_flags_fill_the_backend_pool_and_service(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("alice\nsecret\n")
    argv = [
        "slurm-batch", "--partition", "gpu", "--job-name", "cw", "--nodelist", "n1",
        "--exclude", "n2", "--cpus", "4", "--gpus", "0", "--gpu-type", "a100",
        "--constraint", "ib", "--memory-mb", "8192", "--time", "1-0", "--dry-run",
        "--user", "bob", "--password-file", str(pw), "--slurm-work-dir", str(tmp_path),
        "--exit-after-num-failed", "3", "--account", "nlp",
    ]  # fmt: skip
    args = build_parser().parse_args(split_search(argv))
    settings = settings_from_args(args, {})
    pool = settings.pools["default"]
    assert settings.dry_run is True
    assert settings.password_file == pw
    assert pool.exit_after_num_failed == 3
    assert pool.backend == SlurmBatchBackendSettings(
        partition="gpu", job_name="cw", nodelist="n1", exclude="n2", cpus=4, gpus=0,
        gpu_type="a100", constraint="ib", memory_mb=8192, time="1-0", user="bob",
        slurm_work_dir=tmp_path, account="nlp",
    )  # fmt: skip


def test_defaults_are_the_originals() -> None:
    s = SlurmBatchBackendSettings(partition="p")
    assert (s.job_name, s.nodelist, s.exclude, s.cpus, s.gpus, s.memory_mb, s.time) == (
        "codalab-slurm-worker", "", "", 1, 1, 2048, "10-0",
    )  # fmt: skip
    assert s.slurm_work_dir == Path("slurm-worker-scratch")


# -- the backend against stand-in commands ------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def text(path: Path) -> str:
    return path.read_text()


def exists(path: Path) -> bool:
    return path.exists()


class FakeSlurm:
    """``squeue`` prints ``squeue.out`` (exit status in ``squeue.rc``); ``sbatch`` prints 4242."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        for name, body in {
            "squeue": 'cat "$FAKE/squeue.out"; exit "$(cat "$FAKE/squeue.rc")"',
            "sbatch": 'echo "$@" > "$FAKE/sbatch.args"; echo "4242;cluster"',
        }.items():
            path = self.bin / name
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(0o755)
        self.root = root
        self.env = {"PATH": f"{self.bin}:/usr/bin:/bin", "FAKE": str(root)}
        self.answer("")

    def answer(self, text: str, rc: int = 0) -> None:
        (self.root / "squeue.out").write_text(text)
        (self.root / "squeue.rc").write_text(str(rc))


@pytest.fixture
def fake(tmp_path: Path) -> FakeSlurm:
    return FakeSlurm(tmp_path)


def backend(fake: FakeSlurm, clock: FakeClock | None = None, **settings: Any) -> SlurmBatchBackend:
    s = SlurmBatchBackendSettings(
        partition="p", job_name="cw", user=USER, slurm_work_dir=fake.root / "work", **settings
    )
    return SlurmBatchBackend(
        "pool", worker_options(), s, CREDS, env=fake.env, clock=clock or FakeClock()
    )


def row(job_id: str, state: str, worker_id: str, reason: str = "None") -> str:
    return f"{job_id}|{state}|{reason}|{USER}-cw-pool-{worker_id}\n"


async def test_states_map_to_pending_and_active_and_other_jobs_are_ignored(
    fake: FakeSlurm,
) -> None:
    b = backend(fake)
    fake.answer(
        row("1", "PENDING", W1) + row("2", "CONFIGURING", W2) + row("3", "RUNNING", W3)
        + row("4", "COMPLETING", "d" * 32) + "5|RUNNING|None|someone-elses-job\n"
        + row("6", "COMPLETED", "e" * 32) + "garbage\n"
    )  # fmt: skip
    with capture_logs() as logs:
        jobs = await b.list_jobs()
    assert [(j.job_id, j.state, j.worker_id) for j in jobs] == [
        ("1", JobState.PENDING, W1), ("2", JobState.PENDING, W2),
        ("3", JobState.ACTIVE, W3), ("4", JobState.ACTIVE, "d" * 32),
    ]  # fmt: skip
    assert [e["line"] for e in logs if e["event"] == "slurm.squeue_line_malformed"] == ["garbage"]


async def test_failed_jobs_are_reported_once_and_only_if_seen_alive(fake: FakeSlurm) -> None:
    b = backend(fake)
    fake.answer(row("1", "PENDING", W1) + row("2", "RUNNING", W2) + row("9", "FAILED", W3))
    assert len(await b.list_jobs()) == 2  # 9 failed before this instance knew it: not counted
    fake.answer(
        row("1", "FAILED", W1, "NonZeroExitCode") + row("2", "FAILED", W2, "NonZeroExitCode")
        + row("9", "FAILED", W3)
    )  # fmt: skip
    failed = await b.list_jobs()
    assert [(j.job_id, j.state, j.reason) for j in failed] == [
        ("1", JobState.FAILED, "FAILED (NonZeroExitCode) before running"),
        ("2", JobState.FAILED, "FAILED (NonZeroExitCode) after running"),
    ]
    assert await b.list_jobs() == []  # still listed by squeue -t all: not reported again


async def test_a_job_that_vanishes_while_pending_failed_to_start(fake: FakeSlurm) -> None:
    b = backend(fake)
    fake.answer(row("1", "PENDING", W1) + row("2", "RUNNING", W2) + row("3", "PENDING", W3))
    await b.list_jobs()
    fake.answer(row("3", "CANCELLED", W3))
    jobs = await b.list_jobs()
    assert [(j.job_id, j.state, j.reason) for j in jobs] == [
        ("1", JobState.FAILED, "vanished from squeue before it ever ran")
    ]
    assert b._tracked == {}  # memory holds live jobs only


async def test_a_submitted_job_not_listed_yet_is_not_a_failure(fake: FakeSlurm) -> None:
    clock = FakeClock()
    b = backend(fake, clock, gpus=0)
    job_id = await b.launch(W1)
    assert job_id == "4242"
    assert await b.list_jobs() == []
    clock.advance(10_000)
    with capture_logs() as logs:
        assert await b.list_jobs() == []
    assert b._tracked == {}
    assert [e["event"] for e in logs if e["event"].startswith("slurm.job")] == [
        "slurm.job_never_listed"
    ]


async def test_launch_writes_script_and_0600_password_file(fake: FakeSlurm) -> None:
    b = backend(fake, gpus=0)
    with capture_logs() as logs:
        await b.launch(W1)
    args = text(fake.root / "sbatch.args").split()
    script_path = Path(args[-1])
    assert args[:-1] == ["--parsable"]
    assert script_path == fake.root / "work" / W1 / f"{USER}-cw-pool-{W1}.slurm"
    password_file = fake.root / "work" / ".codalab-password-pool"
    assert mode(password_file) == mode(script_path) == 0o600
    assert f"--password-file {password_file}" in text(script_path)
    assert CREDS.password not in text(script_path)
    assert CREDS.password not in repr(logs)


async def test_describe_launch_writes_the_script_and_submits_nothing(fake: FakeSlurm) -> None:
    b = backend(fake)
    plan = await b.describe_launch(W1)
    assert "#SBATCH" in text(Path(plan["script"]))
    assert plan["sbatch"] == ["sbatch", "--parsable", plan["script"]]
    assert not exists(fake.root / "sbatch.args")
    assert not exists(fake.root / "work" / ".codalab-password-pool")
    assert CREDS.password not in repr(plan)


async def test_operator_password_file_is_passed_not_copied(fake: FakeSlurm) -> None:
    pw = fake.root / "pw"
    pw.write_text("alice\nsecret\n")
    pw.chmod(0o600)
    s = SlurmBatchBackendSettings(partition="p", user=USER, slurm_work_dir=fake.root / "w")
    b = SlurmBatchBackend(
        "pool", worker_options(), s, WorkerCredentials("a", "b", pw), env=fake.env
    )
    await b.launch(W1)
    assert not exists(fake.root / "w" / ".codalab-password-pool")
    assert f"--password-file {pw}" in text(
        fake.root / "w" / W1 / f"{USER}-codalab-slurm-worker-pool-{W1}.slurm"
    )


def test_construction_refuses_a_readable_password_file_and_another_user(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("a\nb\n")
    pw.chmod(0o644)
    s = SlurmBatchBackendSettings(partition="p", user=USER)
    with pytest.raises(ConfigError, match="mode 0644"):
        SlurmBatchBackend("p", worker_options(), s, WorkerCredentials("a", "b", pw))
    other = SlurmBatchBackendSettings(partition="p", user="somebody-else")
    with pytest.raises(ConfigError, match="user: 'somebody-else' is not the user sbatch"):
        SlurmBatchBackend("p", worker_options(), other, CREDS)


async def test_squeue_failures_map_to_transient_and_refused(fake: FakeSlurm) -> None:
    b = backend(fake)
    fake.answer("slurm_load_jobs error: Unable to contact slurm controller\n", rc=1)
    with pytest.raises(TransientError, match="Unable to contact"):
        await b.list_jobs()
    (fake.bin / "squeue").write_text("#!/bin/sh\necho 'squeue: error: Invalid user: x' >&2\n")
    with pytest.raises(LaunchRefused, match="Invalid user"):
        await b.list_jobs()


async def test_launch_refuses_odd_worker_ids(fake: FakeSlurm) -> None:
    with pytest.raises(LaunchRefused, match="letters and digits"):
        await backend(fake).launch("../x")
