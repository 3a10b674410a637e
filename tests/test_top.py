"""``codalab-scaler top``: the textual app against a real HTTP server that goes away and comes back.

The server answers ``/status`` with the stored fixture on 127.0.0.1, on a
port chosen at run time; stopping it closes its listening socket, starting
it again listens on the same port. Every server is stopped in teardown.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import textual.constants
from aiohttp import web
from rich.console import RenderableType
from textual.widgets import Static

from codalab_scaler.entry import top
from codalab_scaler.entry.cli import main
from codalab_scaler.entry.top import TopApp, status_url
from codalab_scaler.entry.top_view import render_text
from tests.scaler_process import EXECUTABLE
from tests.top_snapshot import STATUS_JSON
from tests.waiting import eventually

DOCUMENTS: list[dict[str, Any]] = json.loads(STATUS_JSON.read_text())
INTERVAL = 0.1  # the app's refresh in these tests; each poll times out within 80 ms


class StatusServer:
    """Serves the fixture's documents at ``/status``, one further per request, the last again.

    ``stop`` is the scaler going away: the listening socket and every open
    connection close; ``start`` again listens on the same port.
    """

    def __init__(self) -> None:
        self.port = 0
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def _status(self, _request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response(DOCUMENTS[min(self.requests, len(DOCUMENTS)) - 1])

    async def _deep(self, _request: web.Request) -> web.Response:
        """JSON nested deeper than Python's parser recurses: it raises RecursionError."""
        return web.Response(text="[" * 100_000 + "]" * 100_000, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/status", self._status)
        app.router.add_get("/deep/status", self._deep)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest_asyncio.fixture
async def server() -> AsyncIterator[StatusServer]:
    srv = StatusServer()
    try:
        await srv.start()
        yield srv
    finally:
        await srv.stop()


def shown(app: TopApp) -> str:
    """What the app's view holds now, as text."""
    return render_text(app.query_one("#view", Static).content)  # type: ignore[arg-type]


async def test_the_view_survives_a_scaler_that_goes_away_and_comes_back(
    server: StatusServer,
) -> None:
    app = TopApp(server.url, interval=INTERVAL, wall=lambda: "12:34:56 UTC")
    async with app.run_test() as pilot:
        await eventually(lambda: app.status is not None, "the first status", within=10)
        await eventually(lambda: len(app.history.samples) >= 3, "three refreshes", within=10)
        assert "big" in shown(app)
        assert "unreachable" not in shown(app)
        assert shown(app).startswith(f"codalab-scaler top {server.url}/status  healthy")

        await server.stop()
        await eventually(lambda: app.unreachable is not None, "unreachable noticed", within=10)
        polls = app.polls
        await eventually(lambda: app.polls >= polls + 3, "polling goes on", within=10)
        text = shown(app)
        assert f"unreachable since 12:34:56 UTC ({server.url}/status:" in text
        assert "big" in text  # the last status read stays on screen
        samples = len(app.history.samples)

        await server.start()
        await eventually(lambda: app.unreachable is None, "recovered", within=10)
        await pilot.pause()
        assert "unreachable" not in shown(app)
        assert len(app.history.samples) > samples

        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_ctrl_c_quits(server: StatusServer) -> None:
    app = TopApp(server.url, interval=INTERVAL)
    async with app.run_test() as pilot:
        await eventually(lambda: app.status is not None, "the first status", within=10)
        await pilot.press("ctrl+c")
        await pilot.pause()
    assert app.return_code == 0


async def test_an_answer_that_is_not_a_status_is_unreachable_too(server: StatusServer) -> None:
    app = TopApp(f"{server.url}/nothing-here", interval=INTERVAL, wall=lambda: "noon")
    async with app.run_test():
        await eventually(lambda: app.unreachable is not None, "the 404 noticed", within=10)
    assert app.unreachable == f"noon ({server.url}/nothing-here/status answered HTTP 404)"
    assert app.status is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:9740", "http://127.0.0.1:9740/status"),
        ("http://127.0.0.1:9740/", "http://127.0.0.1:9740/status"),
        ("http://h:1/status", "http://h:1/status"),
        ("h:1", "http://h:1/status"),
        ("https://h/scaler/", "https://h/scaler/status"),
    ],
)
def test_status_url(given: str, expected: str) -> None:
    assert status_url(given) == expected


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_command_exits_1_with_one_line_when_nothing_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["top", url], environ={}) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"codalab-scaler top: no scaler status: {url}/status: ")


def test_credentials_in_the_url_are_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    port = _closed_port()
    assert main(["top", f"http://watcher:s3cret@127.0.0.1:{port}"], environ={}) == 1
    err = capsys.readouterr().err
    assert "s3cret" not in err
    assert "watcher" not in err
    assert f"http://127.0.0.1:{port}/status" in err


async def test_the_view_shows_no_credentials(server: StatusServer) -> None:
    app = TopApp(f"http://watcher:s3cret@127.0.0.1:{server.port}", interval=INTERVAL)
    async with app.run_test():
        await eventually(lambda: app.status is not None, "the first status", within=10)
        text = shown(app)
        await server.stop()
        await eventually(lambda: app.unreachable is not None, "unreachable noticed", within=10)
        down = shown(app) + (app.unreachable or "")
    for seen in (text, down):
        assert "s3cret" not in seen
        assert "watcher" not in seen
    assert f"codalab-scaler top http://127.0.0.1:{server.port}/status" in text


async def test_the_command_exits_1_when_the_url_is_not_a_scaler(
    server: StatusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The probe runs its own event loop: call the command from a thread.
    code = await asyncio.to_thread(main, ["top", f"{server.url}/elsewhere"], {})
    assert code == 1
    assert f"{server.url}/elsewhere/status answered HTTP 404" in capsys.readouterr().err


async def test_json_too_deep_to_parse_is_not_a_status(
    server: StatusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(main, ["top", f"{server.url}/deep"], {})
    assert code == 1
    err = capsys.readouterr().err.splitlines()
    why = "answered something that is not JSON"
    assert err == [f"codalab-scaler top: no scaler status: {server.url}/deep/status {why}"]


@pytest.mark.parametrize("flag", [["--max-workers", "3"], ["--sleep-time", "2"]])
def test_settings_flags_exit_2_naming_them(
    flag: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*flag, "top"], environ={}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [(f"codalab-scaler: config error: {flag[0]}: top reads a running scaler's "
                   "/status and takes no settings")]  # fmt: skip


@pytest.mark.parametrize(
    "interval", ["0", "-1", "soon", "inf", "-inf", "nan", "1e400", "1e-9", "0.099"]
)
def test_a_bad_interval_exits_2_naming_it(
    interval: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["top", "--interval", interval], environ={})
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--interval" in err[0]


def test_the_shortest_interval_is_a_tenth_of_a_second(capsys: pytest.CaptureFixture[str]) -> None:
    """0.1 s is taken: the command goes on to look for the scaler (and finds none)."""
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["top", url, "--interval", "0.1"], environ={}) == 1
    assert "no scaler status" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://watcher:s3cret@[::1", "Invalid IPv6 URL"),
        ("http://watcher:s3cret@127.0.0.1:abc", "Port could not be cast to integer value as 'abc'"),
        ("watcher:s3cret@127.0.0.1:99999", "Port out of range 0-65535"),
        ("http://watcher:s3cret@h\uff03x", "its host part has characters that are not allowed"),
    ],
)
def test_a_url_that_is_not_one_exits_2_in_one_line_without_the_password(
    url: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["top", url], environ={}) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"codalab-scaler: config error: URL: not a valid http(s) URL: {why}"
    ]
    assert "s3cret" not in err


async def test_the_command_exits_1_when_the_view_crashes(
    server: StatusServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash inside the running view (here: drawing it fails) is the command's exit code."""

    def broken_render(*_args: object, **_kwargs: object) -> RenderableType:
        raise RuntimeError("the view broke")

    # No terminal here: textual's headless driver (what TEXTUAL_DRIVER names at import).
    monkeypatch.setattr(
        textual.constants, "DRIVER", "textual.drivers.headless_driver:HeadlessDriver"
    )
    monkeypatch.setattr(top, "render", broken_render)
    # run_top runs its own event loops: call it from a thread.
    code = await asyncio.to_thread(top.run_top, server.url, INTERVAL)
    assert code == 1
    assert server.requests >= 1  # the probe read the status: the crash was in the view
    assert "the view broke" in capsys.readouterr().err


@pytest.mark.process
def test_the_executable_exits_1_when_nothing_answers() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    done = subprocess.run(
        [str(EXECUTABLE), "top", url],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"codalab-scaler top: no scaler status: {url}/status: ")
    assert done.stderr.count("\n") == 1
