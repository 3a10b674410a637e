"""A stand-in for ``cl-worker``: registers with a CodaLab server and "runs" bundles by sleeping.

It accepts every flag the scaler passes (``worker_command.build_command``)
plus ``--cpus``, ``--gpus`` and ``--memory-bytes`` for the capacity it
announces.  Credentials come from ``CODALAB_USERNAME`` / ``CODALAB_PASSWORD``
(or ``--password-file``: user name on line 1, password on line 2), as for
the real worker.

A run lasts ``metadata.request_time`` of the assigned bundle: a number with
an optional unit ``s``, ``m``, ``h`` or ``d`` (``"3s"``, ``"0.5s"``, ``"2m"``;
a bare number is seconds; empty or unreadable means 1 s; capped at an hour).
The simulator writes the wanted run time there as ``"<seconds>s"``.

Exit status: 0 when idle for ``--idle-seconds`` (with ``--exit-when-idle``)
or after ``--exit-after-num-runs`` runs, without checking out, as
``cl-worker`` 1.7.5 (the server lists it until 60 s after its last
check-in), or on SIGTERM/SIGINT (after a last check-in with
``is_terminating: true``); 1 when the login is refused or check-ins keep
failing; 2 for missing credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

CLIENT_AUTH = "Basic " + base64.b64encode(b"codalab_cli_client:").decode()
DEFAULT_RUN_SECONDS = 1.0
MAX_RUN_SECONDS = 3600.0
REQUEST_TIMEOUT = 10.0
MAX_CONSECUTIVE_FAILURES = 20
NO_RUN_LIMIT = 999999999  # what the real worker announces when --exit-after-num-runs is unset
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_request_time(text: object) -> float:
    """Seconds a run should last, from ``request_time`` (see the module docstring)."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        return DEFAULT_RUN_SECONDS
    return min(float(match.group(1)) * _UNITS[match.group(2).lower()], MAX_RUN_SECONDS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="codalab-sim-worker", description="A stand-in for cl-worker (CodaLab simulator)."
    )
    parser.add_argument("--server", default="https://worksheets.codalab.org")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--exit-when-idle", action="store_true")
    parser.add_argument("--idle-seconds", type=float, default=0.0)
    parser.add_argument("--work-dir", default="codalab-worker-scratch")
    parser.add_argument("--id", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--network-prefix", default="codalab_worker_network")
    parser.add_argument("--tag", default="")
    parser.add_argument("--group", default=None)
    parser.add_argument("--exit-after-num-runs", type=int, default=None)
    parser.add_argument("--download-dependencies-max-retries", type=int, default=3)
    parser.add_argument("--max-work-dir-size", default=None)
    parser.add_argument("--delete-work-dir-on-exit", action="store_true")
    parser.add_argument("--exit-on-exception", action="store_true")
    parser.add_argument("--tag-exclusive", action="store_true")
    parser.add_argument("--pass-down-termination", action="store_true")
    parser.add_argument("--checkin-frequency-seconds", type=float, default=2.0)
    parser.add_argument("--shared-memory-size-gb", type=int, default=1)
    parser.add_argument("--preemptible", action="store_true")
    parser.add_argument("--password-file", default=None)
    parser.add_argument("--gpuset", default="ALL")  # accepted, as cl-worker; unused
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--memory-bytes", type=int, default=2 * 1024**3)
    args = parser.parse_args(argv)
    if args.checkin_frequency_seconds <= 0:
        parser.error("--checkin-frequency-seconds must be positive")
    return args


def _free_disk(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


PASSWORD_FILE_LINES = 2  # the username, then the password


def read_credentials(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.password_file:
        try:
            lines = Path(args.password_file).read_text().splitlines()
        except OSError:
            return None
        return (lines[0].strip(), lines[1].strip()) if len(lines) >= PASSWORD_FILE_LINES else None
    username, password = os.environ.get("CODALAB_USERNAME"), os.environ.get("CODALAB_PASSWORD")
    return (username, password) if username and password is not None else None


class _Refused(Exception):
    """The server refused the credentials."""


class _Worker:
    def __init__(self, args: argparse.Namespace, username: str, password: str) -> None:
        self.args = args
        self._server = args.server.rstrip("/")
        self._username, self._password = username, password
        self._token: str | None = None
        self._runs: dict[str, str] = {}  # bundle uuid -> "running" | "finished"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = 0
        self._last_busy = time.monotonic()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    def say(self, message: str, *, always: bool = False) -> None:
        if always or self.args.verbose:
            print(f"codalab-sim-worker[{self.args.id}]: {message}", file=sys.stderr, flush=True)

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self, session: aiohttp.ClientSession) -> int:
        failures = 0
        while not self._stop.is_set():
            try:
                if self._token is None:
                    self._token = await self._login(session)
                assignment = await self._checkin(session, terminating=False)
                failures = 0
            except _Refused as exc:
                self.say(f"login refused: {exc}", always=True)
                return 1
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failures += 1
                self.say(f"check-in failed ({failures}): {type(exc).__name__}: {exc}", always=True)
                if self.args.exit_on_exception or failures >= MAX_CONSECUTIVE_FAILURES:
                    return 1
                await self._pause()
                continue
            if isinstance(assignment, dict) and assignment.get("type") == "run":
                self._start(assignment)
            if not self._tasks and self._should_exit():
                return 0  # no check-out: cl-worker 1.7.5 just leaves
            await self._pause()
        await self._last_checkin(session)
        return 0

    def _should_exit(self) -> bool:
        limit = self.args.exit_after_num_runs
        if limit is not None and limit > 0 and self._started >= limit:
            self.say(f"exiting after {self._started} runs")
            return True
        idle = time.monotonic() - self._last_busy
        if self.args.exit_when_idle and idle >= self.args.idle_seconds:
            self.say(f"exiting after {idle:.1f} s idle")
            return True
        return False

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.args.checkin_frequency_seconds)
        self._wake.clear()

    async def _login(self, session: aiohttp.ClientSession) -> str:
        form = {"grant_type": "password", "username": self._username, "password": self._password}
        async with session.post(
            f"{self._server}/rest/oauth2/token", data=form, headers={"Authorization": CLIENT_AUTH}
        ) as response:
            if response.status in (400, 401):
                raise _Refused(f"status {response.status}")
            response.raise_for_status()
            body: Any = await response.json(content_type=None)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            raise ValueError("the token endpoint answered without an access_token")  # noqa: TRY004 - a bad answer, not a bad argument
        self.say("logged in")
        return token

    async def _checkin(self, session: aiohttp.ClientSession, *, terminating: bool) -> object:
        limit = self.args.exit_after_num_runs
        remaining = NO_RUN_LIMIT if not limit or limit <= 0 else max(limit - self._started, 0)
        reported = dict(self._runs)
        body = {
            "tag": self.args.tag or "",
            "group_name": self.args.group,
            "cpus": self.args.cpus,
            "gpus": self.args.gpus,
            "memory_bytes": self.args.memory_bytes,
            "free_disk_bytes": _free_disk(self.args.work_dir),
            "hostname": socket.gethostname(),
            "runs": [{"bundle_uuid": uuid, "state": state} for uuid, state in reported.items()],
            "tag_exclusive": self.args.tag_exclusive,
            "exit_after_num_runs": remaining,
            "is_terminating": terminating,
            "preemptible": self.args.preemptible,
        }
        url = f"{self._server}/rest/workers/{quote(self.args.id, safe='')}/checkin"
        headers = {"Authorization": f"Bearer {self._token}"}
        async with session.post(url, json=body, headers=headers) as response:
            if response.status == HTTPStatus.UNAUTHORIZED:
                self._token = None  # log in again before the next check-in
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=401, message="token rejected"
                )
            response.raise_for_status()
            answer: object = await response.json(content_type=None)
        for uuid, state in reported.items():
            if state == "finished":
                self._runs.pop(uuid, None)
        return answer

    async def _last_checkin(self, session: aiohttp.ClientSession) -> None:
        for task in self._tasks.values():
            task.cancel()
        try:
            await self._checkin(session, terminating=True)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.say(f"last check-in failed: {type(exc).__name__}", always=True)

    def _start(self, assignment: dict[str, Any]) -> None:
        bundle = assignment.get("bundle")
        uuid = bundle.get("uuid") if isinstance(bundle, dict) else None
        if not isinstance(uuid, str) or uuid in self._runs:
            return
        metadata = bundle.get("metadata") if isinstance(bundle, dict) else None
        seconds = parse_request_time(
            metadata.get("request_time") if isinstance(metadata, dict) else None
        )
        self._started += 1
        self._last_busy = time.monotonic()
        self._runs[uuid] = "running"
        self._tasks[uuid] = asyncio.create_task(self._execute(uuid, seconds), name=f"run-{uuid}")
        self.say(f"running {uuid} for {seconds:g} s")

    async def _execute(self, uuid: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._runs[uuid] = "finished"
        self._tasks.pop(uuid, None)
        self._last_busy = time.monotonic()
        self._wake.set()
        self.say(f"finished {uuid}")


async def _main(args: argparse.Namespace, username: str, password: str) -> int:
    worker = _Worker(args, username, password)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Signal handlers only work in the main thread (tests may run main() in a thread).
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, worker.request_stop)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    headers = {"X-Requested-With": "XMLHttpRequest"}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        return await worker.run(session)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    credentials = read_credentials(args)
    if credentials is None:
        print(
            "codalab-sim-worker: set CODALAB_USERNAME and CODALAB_PASSWORD"
            " or give a readable --password-file",
            file=sys.stderr,
        )
        return 2
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_main(args, *credentials))
    finally:
        if args.delete_work_dir_on_exit:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
