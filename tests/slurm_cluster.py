"""A real single-node Slurm for the tests: munged, slurmctld and slurmd on loopback.

Everything lives in a temporary directory (config, key, state, spool, logs);
ports are picked free at run time (pytest-asyncio's ``unused_tcp_port_factory``,
never the same port twice); ``SLURM_CONF`` reaches the commands through
``cluster.env`` (passed explicitly, ``os.environ`` is never touched).
The session fixture stops every daemon it started (their whole process
groups) even when a test or the start-up fails, and cancels every job.
Tests skip only when the Slurm binaries are missing (``.ci/deps/10-slurm.sh``
installs them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
PARTITION = "debug"
CPUS = 2
START_TIMEOUT = 30.0


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def _config(root: Path, host: str, ports: tuple[int, int]) -> str:
    return f"""\
ClusterName=scalertest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MinJobAge=60
MessageTimeout=3
ReturnToService=2
SchedulerParameters=sched_interval=1
NodeName={host} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=4000 State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """The daemons of one test session and helpers to drive them."""

    def __init__(self, root: Path, ports: tuple[int, int]) -> None:
        self.root = root
        self.ports = ports  # slurmctld's and slurmd's
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.partition = PARTITION
        self._daemons: dict[str, subprocess.Popen[bytes]] = {}

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(_config(self.root, self.host, self.ports))
        key = self.root / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, timeout=30)
        key.chmod(0o600)
        self._spawn("munged", ["munged", "-F", "--force", f"--key-file={key}",
                               f"--socket={self.root}/munge.sock",
                               f"--pid-file={self.root}/munged.pid",
                               f"--seed-file={self.root}/munge.seed",
                               f"--log-file={self.root}/log/munged.log"])  # fmt: skip
        self._wait((self.root / "munge.sock").exists, "munged socket")
        self.start_controller()
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self.wait_idle()

    def start_controller(self) -> None:
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])

    def stop_controller(self) -> None:
        self._stop("slurmctld")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if "slurmctld" in self._daemons:
                self.scancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            self._stop(name)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / "log" / f"{name}.out").open("ab")
        self._daemons[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def _stop(self, name: str) -> None:
        process = self._daemons.pop(name, None)
        if process is None:
            return
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue

    # -- commands ------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout: float = 20) -> str:
        done = subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "--noheader", "--format=%t", check=False).strip()

    def wait_idle(self, timeout: float = START_TIMEOUT) -> None:
        self._wait(lambda: self.node_state() == "idle", "node idle", timeout)

    def jobs(self) -> dict[str, tuple[str, str]]:
        """job id -> (state, name) of every job squeue still knows."""
        out = self.run("squeue", "--noheader", "--states=all", "--format=%i|%T|%j")
        rows = (line.split("|", 2) for line in out.splitlines() if line.strip())
        return {job_id: (state, name) for job_id, state, name in rows}

    @contextlib.contextmanager
    def partition_down(self) -> Iterator[None]:
        """Jobs submitted meanwhile stay PENDING (reason PartitionDown), as behind a full cluster.

        On the way out every job is cancelled (none of the held ones starts) and the
        partition is UP again, even when the body failed.
        """
        self.run("scontrol", "update", f"PartitionName={self.partition}", "State=DOWN")
        try:
            yield
        finally:
            try:
                self.scancel_all()
            finally:
                self.run("scontrol", "update", f"PartitionName={self.partition}", "State=UP")

    def scancel_all(self) -> None:
        """Cancel every job and wait (bounded) until none is pending or running."""
        self.run("scancel", "--user=root", check=False)
        live = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING"}
        self._wait(
            lambda: not any(state in live for state, _ in self.jobs().values()),
            "jobs cancelled",
            20,
        )

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self._daemons.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited {process.returncode}; see {self.root}/log")
            if ready():
                return
            time.sleep(0.1)
        raise TimeoutError(
            f"Slurm test cluster: no {what} within {timeout:g}s; see {self.root}/log"
        )


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture(
    tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Callable[[], int]
) -> Iterator[SlurmCluster]:
    """A running single-node Slurm for the whole session; stopped in teardown."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm not installed (missing {', '.join(missing)}); see .ci/deps/10-slurm.sh")
    if os.geteuid() != 0:
        pytest.skip("the Slurm test cluster runs its daemons as root (SlurmUser=root)")
    # A short path: the munge socket path must fit in sun_path (108 bytes).
    root = Path(tmp_path_factory.mktemp("slurm", numbered=True))
    cluster = SlurmCluster(root, (unused_tcp_port_factory(), unused_tcp_port_factory()))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(name="slurm")
def slurm_fixture(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session's cluster: controller running, node idle, every job cancelled afterwards."""
    if "slurmctld" not in slurm_cluster._daemons:
        slurm_cluster.start_controller()
    slurm_cluster.wait_idle()
    try:
        yield slurm_cluster
    finally:
        if "slurmctld" not in slurm_cluster._daemons:
            slurm_cluster.start_controller()
        slurm_cluster.scancel_all()
