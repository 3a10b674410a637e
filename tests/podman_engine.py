"""A real container engine for moto's AWS Batch: rootful podman serving the Docker API.

moto runs each submitted Batch job as a container through the Docker API
(``DOCKER_HOST``).  This session fixture starts ``podman system service`` on
a unix socket in a temporary directory, with its own containers.conf and
storage.conf (vfs storage, graph root and run root in that directory, so the
machine's own podman state is never touched), and imports a tiny image made
from Debian's static busybox (nothing can be pulled here).

The image holds ``/bin/bash`` (a two-line wrapper: busybox has no ``bash``
applet; its ``sh`` accepts ``-c``) and two stand-ins for ``cl-worker`` that
ignore its flags except ``--idle-seconds``: they idle that long and exit as
``cl-worker --exit-when-idle`` does, with 0 (``WORKER``) or 3 (``CRASHING_WORKER``).

The service runs in a private mount namespace with a tmpfs on ``/run``: the
job definition bind-mounts ``/var/run/docker.sock`` from the host, and a
Docker-compatible engine creates a missing bind source (as a directory), so
that and runc's state stay out of the machine's ``/run``.  The cgroupfs
manager creates ``libpod_parent`` cgroups; teardown removes them when this
fixture created them.  Teardown removes every container (through the
service, then any process left in a container cgroup of ours is killed),
stops the service's process group and deletes the directory, even when a
test or the start-up failed.  Skips only when podman is missing or the
tests do not run as root (``.ci/deps/30-podman.sh`` installs it).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("podman", "runc", "conmon", "unshare")
BUSYBOX = Path("/bin/busybox")  # busybox-static: runs in an image with no libc
IMAGE = "localhost/codalab-worker-test:1"
WORKER = "/bin/fake-cl-worker"
CRASHING_WORKER = "/bin/fake-cl-worker-crash"
APPLETS = ("sh", "sleep", "hostname", "echo", "cat", "env", "true", "false", "ls")
START_TIMEOUT = 30.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "libpod_parent"  # where podman's cgroupfs manager puts containers and conmon

BASH = '#!/bin/sh\nexec /bin/sh "$@"\n'
FAKE_WORKER = """\
#!/bin/sh
# Stands in for cl-worker: idles --idle-seconds (no bundles), then exits {code}.
idle=600
while [ $# -gt 0 ]; do
  if [ "$1" = --idle-seconds ]; then idle=$2; fi
  shift
done
echo "fake cl-worker: idle for $idle s, then exit {code}"
sleep "$idle"
exit {code}
"""


def missing() -> str | None:
    """Why the podman engine cannot run here, or None."""
    absent = [name for name in BINARIES if shutil.which(name) is None]
    if not BUSYBOX.is_file():
        absent.append(f"{BUSYBOX} (busybox-static)")
    if absent:
        names = ", ".join(absent)
        return f"podman engine not installed (missing {names}); see .ci/deps/30-podman.sh"
    if os.geteuid() != 0:
        return "the podman engine runs rootful (tests must run as root)"
    return None


def _containers_conf(root: Path) -> str:
    return f"""\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
netns = "host"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "{root}/events.log"
tmp_dir = "{root}/libpod-tmp"

[network]
network_config_dir = "{root}/networks"
"""


def _storage_conf(root: Path) -> str:
    return f"""\
[storage]
driver = "vfs"
graphroot = "{root}/graph"
runroot = "{root}/runroot"
"""


def _add(tar: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o1777 if name == "tmp" else 0o755
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def image_tar() -> bytes:
    """A root filesystem: static busybox, its applets as symlinks, bash and the fake workers."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "etc", "proc", "sys", "dev", "run", "var"):
            _add(tar, directory, tarfile.DIRTYPE)
        _add(tar, "bin/busybox", tarfile.REGTYPE, BUSYBOX.read_bytes())
        for applet in APPLETS:
            _add(tar, f"bin/{applet}", tarfile.SYMTYPE, link="busybox")
        _add(tar, "bin/bash", tarfile.REGTYPE, BASH.encode())
        _add(tar, WORKER.lstrip("/"), tarfile.REGTYPE, FAKE_WORKER.format(code=0).encode())
        _add(tar, CRASHING_WORKER.lstrip("/"), tarfile.REGTYPE, FAKE_WORKER.format(code=3).encode())
    return buffer.getvalue()


@dataclass
class PodmanEngine:
    root: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "podman.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def remote(self, *argv: str, timeout: float = 30) -> str:
        """``podman --remote`` through the service (it sees the service's mount namespace)."""
        done = subprocess.run(
            ["podman", "--remote", "--url", self.docker_host, *argv],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(argv)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def start(self) -> None:
        (self.root / "containers.conf").write_text(_containers_conf(self.root))
        (self.root / "storage.conf").write_text(_storage_conf(self.root))
        (self.root / "registries.conf").write_text("")  # no registries: nothing is ever pulled
        # -n: libmount would otherwise create /run/mount/utab on the host's /run first
        script = (
            "mount -n -t tmpfs -o mode=755 codalab-podman-run /run && "
            'exec podman system service --time=0 "$1"'
        )
        with (self.root / "service.log").open("wb") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                 self.docker_host],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.socket.exists():
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.remote("version", timeout=5)
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"podman service did not start:\n{self.log()}")
            time.sleep(0.05)
        tar = self.root / "image.tar"
        tar.write_bytes(image_tar())
        self.remote("import", "--quiet", str(tar), IMAGE, timeout=60)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "service.log").read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        """Every container removed, the service's process group stopped; never raises."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.remote("rm", "--all", "--force", "--time", "0", timeout=60)
        self._kill_containers()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """conmon leaves the service's session: end any process still naming this directory."""
        deadline = time.monotonic() + 5
        while True:
            pids = [pid for pid in _pids() if str(self.root) in _cmdline(pid)]
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # conmon exits by itself once its container is gone
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _kill_containers(self) -> None:
        """Kill what is left in the cgroups of this storage's containers (if removal failed)."""
        containers = self.root / "graph" / "vfs-containers"
        ids = [p.name for p in containers.iterdir() if p.is_dir()] if containers.is_dir() else []
        for cid in ids:
            for procs in CGROUP_ROOT.glob(f"*/{CGROUP_PARENT}/libpod-{cid}*/cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    for pid in procs.read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _own_cgroups(before: set[Path]) -> None:
    """Remove the (empty) ``libpod_parent`` cgroups this session created, deepest first."""
    for parent in CGROUP_ROOT.glob(f"*/{CGROUP_PARENT}"):
        if parent in before:
            continue
        for directory in sorted(
            (p for p in parent.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            parent.rmdir()


@contextlib.contextmanager
def running_podman_engine() -> Iterator[PodmanEngine]:
    cgroups_before = set(CGROUP_ROOT.glob(f"*/{CGROUP_PARENT}"))
    root = Path(tempfile.mkdtemp(prefix="codalab-podman-"))
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(root / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
    }
    engine = PodmanEngine(root, env)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()
        _own_cgroups(cgroups_before)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def podman_engine() -> Iterator[PodmanEngine]:
    why = missing()
    if why is not None:
        pytest.skip(why)
    with running_podman_engine() as engine:
        yield engine
