"""The embedded default backend: ``cl-worker`` processes on this machine.

Layout under ``state_dir``::

    work/cl_worker_<id>_work_dir   work dirs (unless --worker-work-dir-prefix is set)
    logs/<worker_id>.log           the worker's stdout and stderr
    workers/<pool>/<worker_id>.json  one record per live worker: pid, start time, argv

The records are the only memory: a new instance (after a restart) lists the
workers an earlier one started, and pools never see each other's records.  A
pid alone can be reused, so a record names its process by pid *and* the start
time from ``/proc/<pid>/stat``; nothing is listed, reaped or signalled unless
both match.

Workers are started with ``subprocess.Popen``, not ``asyncio.create_subprocess_exec``:
from Python 3.12 asyncio kills a still-running child when its transport is
garbage collected (when the loop closes, i.e. whenever the scaler exits),
and workers must outlive the scaler.  Popen's fork+exec is what asyncio runs
inline too; reaping is a non-blocking ``poll()``.  Credentials travel in the
environment only, never in argv, the record or a log line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from codalab_scaler.core.errors import ConfigError, LaunchRefused, TransientError
from codalab_scaler.core.model import JobState, WorkerJob
from codalab_scaler.core.worker_command import (
    WorkerOptions,
    build_command,
    resolve_hostname,
    short_hostname,
    work_dir_for,
)
from codalab_scaler.sources.backends.base import (
    WorkerCredentials,
    exec_failure,
    write_private_file,
)
from codalab_scaler.sources.backends.local.settings import LocalBackendSettings

log = structlog.get_logger()

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # becomes a file name
_POLL_SECONDS = 0.05
_KILL_GRACE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class _Record:
    """One state file: which process is this pool's worker ``worker_id``."""

    path: Path
    worker_id: str
    job_id: str
    pid: int
    start_time: int | None  # clock ticks after boot; None if it exited before we looked


class LocalBackend:
    """Runs each worker as a detached local process (own session, output to a log file)."""

    def __init__(
        self,
        pool: str,
        options: WorkerOptions,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        hostname: str | None = None,
    ) -> None:
        if not _SAFE_NAME.fullmatch(pool):
            raise ConfigError([f"pool name {pool!r} must match {_SAFE_NAME.pattern}"])
        self._pool = pool
        self._options = options
        self._state_dir = Path(state_dir)
        self._records_dir = self._state_dir / "workers" / pool
        self._logs_dir = self._state_dir / "logs"
        self._env = dict(env or {})
        self._hostname = hostname if hostname is not None else short_hostname(socket.gethostname())
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    async def list_jobs(self) -> Sequence[WorkerJob]:
        jobs = []
        records = self._scan()
        for record in records:
            if self._alive(record):
                jobs.append(WorkerJob(record.job_id, JobState.ACTIVE, record.worker_id))
                continue
            returncode = self._forget(record)
            if returncode is not None and returncode > 0:  # a signal is a stop, not a failure
                reason = f"exited with status {returncode}"
                jobs.append(WorkerJob(record.job_id, JobState.FAILED, record.worker_id, reason))
        listed = {record.worker_id for record in records}
        for worker_id, child in list(self._children.items()):  # record removed by someone else
            if worker_id not in listed and child.poll() is not None:
                del self._children[worker_id]
        return jobs

    async def launch(self, worker_id: str) -> str:
        if not _SAFE_NAME.fullmatch(worker_id):
            raise LaunchRefused(f"worker id {worker_id!r} must match {_SAFE_NAME.pattern}")
        job_id = f"local-{worker_id}"
        existing = self._load(self._record_path(worker_id))
        if existing is not None and self._alive(existing):
            log.warning("local.launch_duplicate", pool=self._pool, worker_id=worker_id)
            return job_id
        work_dir, argv = self._command(worker_id)
        self._prepare_dirs(Path(work_dir))
        child = self._spawn(worker_id, argv)
        stat = _proc_stat(child.pid)
        start_time = None if stat is None else stat[1]
        record = _Record(self._record_path(worker_id), worker_id, job_id, child.pid, start_time)
        try:
            # No fsync: a machine crash that could lose the file also ends the workers it names.
            write_private_file(record.path, _record_json(record, argv))
        except OSError as exc:  # an unrecorded worker would be invisible: take it back
            child.kill()
            await _wait_exited(child, _KILL_GRACE_SECONDS)
            raise TransientError(f"cannot record worker {worker_id}: {exc}") from exc
        self._children[worker_id] = child
        log.info(
            "local.worker_launched",
            pool=self._pool,
            worker_id=worker_id,
            job_id=job_id,
            pid=child.pid,
            log_file=str(self._log_path(worker_id)),
        )
        return job_id

    async def describe_launch(self, worker_id: str) -> Mapping[str, Any]:
        work_dir, argv = self._command(worker_id)
        return {"argv": argv, "work_dir": work_dir, "log_file": str(self._log_path(worker_id))}

    def _command(self, worker_id: str) -> tuple[str, list[str]]:
        work_dir = work_dir_for(self._options, worker_id, str(self._state_dir / "work"))
        argv = resolve_hostname(build_command(self._options, worker_id, work_dir), self._hostname)
        return work_dir, argv

    def _log_path(self, worker_id: str) -> Path:
        return self._logs_dir / f"{worker_id}.log"

    async def aclose(self) -> None:
        """Nothing to release: workers keep running and the records stay for the next instance."""

    async def cancel(self, job_id: str) -> None:
        """SIGTERM the worker of ``job_id`` (a stuck one); gone already is fine."""
        for record in self._scan():
            if record.job_id == job_id and self._alive(record):
                self._signal(record, signal.SIGTERM)
                log.info("local.worker_cancelled", pool=self._pool, job_id=job_id, pid=record.pid)

    async def stop_all(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - the SIGTERM grace period, not a deadline for this call
        """SIGTERM every live worker of this pool, SIGKILL whoever is left after ``timeout``."""
        live = [record for record in self._scan() if self._alive(record)]
        for record in live:
            self._signal(record, signal.SIGTERM)
        stubborn = await self._wait_gone(live, timeout)
        for record in stubborn:
            self._signal(record, signal.SIGKILL)
        left = await self._wait_gone(stubborn, _KILL_GRACE_SECONDS)
        if left:
            log.warning(
                "local.stop_incomplete", pool=self._pool, worker_ids=[r.worker_id for r in left]
            )
        await self.list_jobs()  # reap the stopped and drop their records
        log.info("local.stopped", pool=self._pool, terminated=len(live), killed=len(stubborn))

    # -- processes ---------------------------------------------------------

    def _spawn(self, worker_id: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log_path = self._log_path(worker_id)
        try:
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except PermissionError as exc:
            raise LaunchRefused(f"cannot write worker log {log_path}: {exc.strerror}") from exc
        except OSError as exc:
            raise TransientError(f"cannot open worker log {log_path}: {exc}") from exc
        try:
            return subprocess.Popen(  # noqa: S603 - argv comes from the pool's configuration; no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._env},
                start_new_session=True,  # a Ctrl-C at the scaler's terminal must not reach workers
            )
        except OSError as exc:
            raise exec_failure(exc, argv[0]) from exc
        finally:
            os.close(log_fd)

    def _alive(self, record: _Record) -> bool:
        child = self._children.get(record.worker_id)
        if child is not None and child.pid == record.pid:
            return child.poll() is None  # our unreaped child: its pid cannot have been reused
        stat = _proc_stat(record.pid)
        return stat is not None and stat[1] == record.start_time and stat[0] not in ("Z", "X")

    def _forget(self, record: _Record) -> int | None:
        """The worker exited: reap it if it is ours to reap, drop its record, say so.

        Returns its exit status when known (a worker this process started or can reap).
        """
        child = self._children.get(record.worker_id)
        if child is not None and child.pid == record.pid:
            returncode = child.poll()
            del self._children[record.worker_id]
        else:
            returncode = self._reap_foreign(record)
        record.path.unlink(missing_ok=True)
        log.info(
            "local.worker_exited",
            pool=self._pool,
            worker_id=record.worker_id,
            pid=record.pid,
            returncode=returncode,
        )
        return returncode

    @staticmethod
    def _reap_foreign(record: _Record) -> int | None:
        """Reap a zombie child this instance did not start (an earlier instance in this process)."""
        stat = _proc_stat(record.pid)
        if stat is None or stat[0] != "Z" or stat[1] != record.start_time:
            return None  # gone, or the pid now names another process: not ours to wait for
        try:
            pid, status = os.waitpid(record.pid, os.WNOHANG)
        except ChildProcessError:
            return None  # reparented after a restart: init reaps it
        return os.waitstatus_to_exitcode(status) if pid else None

    def _signal(self, record: _Record, signum: signal.Signals) -> None:
        child = self._children.get(record.worker_id)
        if child is not None and child.pid == record.pid:
            child.send_signal(signum)  # no-op once reaped
            return
        # A pidfd pins the process, so the start-time check cannot race a pid reuse.
        try:
            pidfd = os.pidfd_open(record.pid)
        except ProcessLookupError:
            return
        try:
            if self._alive(record):
                signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)

    async def _wait_gone(self, records: list[_Record], grace: float) -> list[_Record]:
        deadline = time.monotonic() + grace
        while True:
            records = [record for record in records if self._alive(record)]
            remaining = deadline - time.monotonic()
            if not records or remaining <= 0:
                return records
            await asyncio.sleep(min(_POLL_SECONDS, remaining))

    # -- state files -------------------------------------------------------

    def _record_path(self, worker_id: str) -> Path:
        return self._records_dir / f"{worker_id}.json"

    def _prepare_dirs(self, work_dir: Path) -> None:
        try:
            for directory in (work_dir, self._logs_dir, self._records_dir):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except PermissionError as exc:
            raise LaunchRefused(f"cannot create {exc.filename}: {exc.strerror}") from exc
        except OSError as exc:
            raise TransientError(f"cannot create {exc.filename}: {exc}") from exc

    def _scan(self) -> list[_Record]:
        records = []
        for path in sorted(self._records_dir.glob("*.json")):
            record = self._load(path)
            if record is not None:
                records.append(record)
        return records

    def _load(self, path: Path) -> _Record | None:
        """The record in ``path``; None if there is none or it is unusable (then moved aside)."""
        try:
            return _parse_record(path, json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
            aside = path.with_name(path.name + ".invalid")
            try:
                path.replace(aside)
            except OSError:
                aside = path  # stays where it is; logged again next time
            log.warning(
                "local.state_file_invalid",
                pool=self._pool,
                path=str(path),
                moved_to=str(aside),
                error=str(exc),
            )
            return None


def _parse_record(path: Path, data: Any) -> _Record:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - a corrupt record, set aside as ValueError
    worker_id, job_id = data.get("worker_id"), data.get("job_id")
    pid, start_time = data.get("pid"), data.get("start_time")
    if worker_id != path.stem:
        raise ValueError(f"worker_id {worker_id!r} does not match the file name")
    if not isinstance(job_id, str):
        raise ValueError("job_id is not a string")  # noqa: TRY004 - a corrupt record, set aside as ValueError
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"pid {pid!r} is not a positive integer")
    if start_time is not None and (isinstance(start_time, bool) or not isinstance(start_time, int)):
        raise ValueError(f"start_time {start_time!r} is not an integer")
    return _Record(path, worker_id, job_id, pid, start_time)


def _record_json(record: _Record, argv: list[str]) -> bytes:
    return json.dumps(
        {
            "worker_id": record.worker_id,
            "job_id": record.job_id,
            "pid": record.pid,
            "start_time": record.start_time,
            "launched_at": time.time(),
            "argv": argv,
        },
        indent=2,
    ).encode()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) from ``/proc/<pid>/stat``; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2, the command name, is in parentheses and may contain spaces and ")".
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])  # fields 3 (state) and 22 (starttime)


async def _wait_exited(child: subprocess.Popen[bytes], grace: float) -> None:
    deadline = time.monotonic() + grace
    while True:
        remaining = deadline - time.monotonic()
        if child.poll() is not None or remaining <= 0:
            return
        await asyncio.sleep(min(_POLL_SECONDS, remaining))


def create_backend(
    pool: str,
    settings: LocalBackendSettings,
    options: WorkerOptions,
    credentials: WorkerCredentials,
) -> LocalBackend:
    """Build the backend; its ``aclose`` releases it (the registry opens and closes it)."""
    return LocalBackend(pool, options, settings.state_dir, env=credentials.env())
