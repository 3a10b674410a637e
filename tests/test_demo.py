"""``codalab-scaler demo`` on a terminal (a real pseudo-terminal) and with ``--no-tui``.

On a terminal the demo shows the top view of itself and writes its logs to a
file whose path it prints; with ``--no-tui`` (or without a terminal, as in
``test_process.py``) it logs to standard output as before. Every process is
killed in teardown, and every read is bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codalab_scaler.entry.demo import DEMO_POOLS, wants_tui
from tests.scaler_process import EXECUTABLE

pytestmark = pytest.mark.process

ESCAPES = re.compile(r"\x1b(?:\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07]*\x07|[()][A-Za-z0-9]|[=>])")
LOG_PATH = re.compile(r"codalab-scaler demo: logs go to (\S+)")
WORKLOAD = ("--bundles", "8", "--bundles-per-minute", "600", "--max-run-seconds", "2")


class Terminal:
    """The executable on a pseudo-terminal 140 x 45: stdin, stdout and stderr all on it."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 45, 140, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "TEXTUAL"}}
        env["TERM"] = "xterm-256color"
        self.proc = subprocess.Popen(
            [str(EXECUTABLE), *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.raw = b""

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; ``False`` once the other side has closed."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # the other side closed: the process has ended
            return False
        self.raw += chunk
        return bool(chunk)

    def read_until(self, pattern: str, within: float) -> None:
        """Read until ``pattern`` shows (escape sequences removed); fail after ``within`` s."""
        deadline = time.monotonic() + within
        while re.search(pattern, self.text) is None:
            if time.monotonic() > deadline or not self._read(0.2):
                pytest.fail(f"{pattern!r} not shown within {within:g} s: {self.text[-2000:]}")

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def read_until_exit(self, within: float) -> int:
        """Everything it writes until it exits (bounded by ``within`` seconds); its exit status."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and self.proc.poll() is None:
            if not self._read(0.2):
                time.sleep(0.05)  # closed but not yet reaped
        for _ in range(10):  # what it wrote last, still in the terminal's buffer
            if not self._read(0.1):
                break
        return self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))

    @property
    def text(self) -> str:
        return ESCAPES.sub("", self.raw.decode("utf-8", errors="replace"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    try:
        yield started
    finally:
        for term in started:
            term.kill()


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_on_a_terminal_it_shows_the_view_and_logs_to_the_file_it_names(
    terminal: list[Terminal],
) -> None:
    term = Terminal("--http-port", "0", "demo", "--duration", "15", *WORKLOAD)
    terminal.append(term)
    assert term.read_until_exit(within=60) == 0, term.text[-2000:]
    found = LOG_PATH.search(term.text)
    assert found is not None, term.text[:500]
    log_file = Path(found.group(1))
    try:
        assert f"stopped (exit 0); its logs are in {log_file}" in term.text
        events = _events(log_file)
        names = {e["event"] for e in events}
        assert {"demo.started", "http.listening", "scaler.launched", "demo.stopped"} <= names
        launched = {e["pool"] for e in events if e["event"] == "scaler.launched"}
        assert launched == {p.name for p in DEMO_POOLS}  # the workload reaches both shapes
        screen = term.text
        assert "codalab-scaler top http://127.0.0.1:" in screen  # the view of itself
        for pool in DEMO_POOLS:
            assert re.search(rf"\b{pool.name}\s+fast\s+{pool.cpus} cpu", screen), pool.name
        assert "routed bundles" in screen
        assert '"event"' not in screen  # no log line drawn over the view
    finally:
        log_file.unlink(missing_ok=True)


def test_q_in_the_view_stops_the_demo(terminal: list[Terminal]) -> None:
    term = Terminal("--http-port", "0", "demo", "--duration", "120", *WORKLOAD)
    terminal.append(term)
    term.read_until(r"small\s+fast", within=30)
    term.send(b"q")
    assert term.read_until_exit(within=30) == 0, term.text[-2000:]
    assert "stopped (exit 0)" in term.text
    found = LOG_PATH.search(term.text)
    assert found is not None
    log_file = Path(found.group(1))
    events = _events(log_file)
    log_file.unlink()
    assert {"service.stopped", "demo.stopped"} <= {e["event"] for e in events}


@pytest.fixture
def scaler() -> Iterator[str]:
    """A real scaler to watch: the demo without its view; its URL. Killed in teardown."""
    proc = subprocess.Popen(
        [str(EXECUTABLE), "--http-port", "0", "--log-format", "json", "demo", "--no-tui",
         "--duration", "120", *WORKLOAD],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        for line in proc.stdout:  # bounded: the demo logs every 2 s, and ends by --duration
            event = json.loads(line) if line.startswith(b"{") else {}
            if event.get("event") == "http.listening":
                break
            assert time.monotonic() < deadline, "the demo did not listen within 30 s"
        else:
            pytest.fail("the demo ended before listening")
        yield f"http://127.0.0.1:{event['port']}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize(("key", "name"), [(b"q", "q"), (b"\x03", "ctrl-c")])
def test_top_watches_a_real_scaler_and_quits_on_a_key(
    scaler: str, terminal: list[Terminal], key: bytes, name: str
) -> None:
    term = Terminal("top", scaler)
    terminal.append(term)
    term.read_until(rf"codalab-scaler top {re.escape(scaler)}/status\s+healthy", within=30)
    term.read_until(r"big\s+fast\s+4 cpu 8 GiB", within=10)
    term.send(key)
    assert term.read_until_exit(within=20) == 0, f"{name}: {term.text[-2000:]}"


def test_no_tui_logs_to_the_terminal_and_names_no_file(terminal: list[Terminal]) -> None:
    term = Terminal("--http-port", "0", "demo", "--no-tui", "--duration", "4", *WORKLOAD)
    terminal.append(term)
    assert term.read_until_exit(within=60) == 0, term.text[-2000:]
    assert "demo.started" in term.text
    assert "demo.stopped" in term.text
    assert LOG_PATH.search(term.text) is None
    assert "codalab-scaler top" not in term.text


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("no_tui", "ttys", "expected"),
    [
        (False, (True, True, True), True),
        (True, (True, True, True), False),
        (False, (True, False, True), False),  # stdout to a pipe or a file
        (False, (False, True, True), False),  # no keyboard
        (False, (True, True, False), False),  # textual draws on stderr
    ],
)
def test_wants_tui(no_tui: bool, ttys: tuple[bool, ...], expected: bool) -> None:
    from argparse import Namespace

    streams = tuple(_Stream(t) for t in ttys)
    assert wants_tui(Namespace(no_tui=no_tui), streams) is expected  # type: ignore[arg-type]
