"""``codalab-scaler top [URL]``: a live terminal view of a running scaler's ``/status``.

The textual app only polls, keeps the history and redraws; what it draws is
``top_view.render``, a pure function of the JSON. Each poll has a timeout
shorter than the refresh, so polls never pile up. A scaler that stops
answering is shown as "unreachable since ..." over the last status read,
and polling goes on until it answers again.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from rich.console import RenderableType
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from codalab_scaler.entry.top_view import History, render

DEFAULT_URL = "http://127.0.0.1:9740"
DEFAULT_INTERVAL = 1.0
TIMEOUT_SHARE = 0.8  # of the refresh interval: a poll ends before the next one is due
FIRST_TIMEOUT = 5.0  # the probe at start: a busy scaler may take a moment to answer once
EXIT_UNREACHABLE = 1
EXIT_CONFIG = 2  # a URL argument that is not a URL, as a bad flag


class StatusUnavailable(Exception):
    """The URL did not answer with a ``/status`` document; the message says what happened."""


def status_url(url: str) -> str:
    """``http://host:9740`` or ``.../status`` -> the ``/status`` URL."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path.rstrip("/")
    if not path.endswith("/status"):
        path += "/status"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def shown_url(url: str) -> str:
    """``url`` without a user name or password, to show and to put in messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be read (``None`` when it can), in words that never hold its password.

    ``urlsplit`` refuses an unclosed IPv6 bracket and ``.port`` a port that is
    not a number from 0 to 65535, both with ``ValueError``. Its message names
    only the port, except the one for characters that NFKC normalization
    changes, which quotes the whole netloc: that one is not repeated.
    """
    try:
        for parts in (urlsplit(url), urlsplit(status_url(url))):
            _ = parts.port
    except ValueError as exc:
        reason = str(exc)
        netloc = re.split(r"[/?#]", url.split("://", 1)[-1], maxsplit=1)[0]
        userinfo = netloc.rpartition("@")[0]
        if any(part and part in reason for part in (userinfo, userinfo.partition(":")[2])):
            reason = "its host part has characters that are not allowed"
        return f"URL: not a valid http(s) URL: {reason}"
    return None


async def fetch_status(session: aiohttp.ClientSession, url: str, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109 - one request's own timeout, shorter than the refresh
    """One ``GET`` of ``url``: the JSON object, or ``StatusUnavailable`` saying why not.

    The messages name the URL without its credentials, if it has any.
    """
    try:
        return await _fetch(session, url, timeout)
    except StatusUnavailable as exc:
        raise StatusUnavailable(str(exc).replace(url, shown_url(url))) from exc.__cause__


async def _fetch(session: aiohttp.ClientSession, url: str, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109 - see fetch_status
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:  # noqa: PLR2004 - HTTP OK
                raise StatusUnavailable(f"{url} answered HTTP {response.status}")
            body: object = await response.json(content_type=None)
    except TimeoutError as exc:
        raise StatusUnavailable(f"{url} did not answer within {timeout:g} s") from exc
    except aiohttp.ClientError as exc:
        raise StatusUnavailable(f"{url}: {str(exc) or type(exc).__name__}") from exc
    except (ValueError, RecursionError) as exc:  # not JSON, or nested deeper than json parses
        raise StatusUnavailable(f"{url} answered something that is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("pools"), dict):
        raise StatusUnavailable(f"{url} answered JSON that is not a codalab-scaler /status")
    return body


def wall_time() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S UTC")


class TopApp(App[int]):
    """Polls ``/status`` every ``interval`` seconds and shows ``top_view.render`` of it."""

    TITLE = "codalab-scaler top"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        url: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        first: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] = wall_time,
    ) -> None:
        super().__init__()
        self.url = status_url(url)
        self.interval = interval
        self.history = History()
        self.status: Mapping[str, Any] | None = None
        self.down_since: str | None = None  # wall time of the first failed poll in a row
        self.down_why = ""
        self.polls = 0
        self._clock, self._wall = clock, wall
        self._session: aiohttp.ClientSession | None = None
        if first is not None:
            self._record(first)

    def compose(self) -> ComposeResult:
        yield Static(self._view(), id="view")

    async def on_mount(self) -> None:
        self._session = aiohttp.ClientSession()
        self.set_interval(self.interval, self.poll)
        if self.status is None:
            await self.poll()

    async def on_unmount(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def poll(self) -> None:
        """One refresh: read ``/status``, or note since when it does not answer; redraw."""
        assert self._session is not None  # noqa: S101 - opened in on_mount, before any poll
        try:
            status = await fetch_status(self._session, self.url, self.interval * TIMEOUT_SHARE)
        except StatusUnavailable as exc:
            if self.down_since is None:
                self.down_since = self._wall()
            self.down_why = str(exc)
        else:
            self.down_since = None
            self._record(status)
        self.polls += 1
        self.query_one("#view", Static).update(self._view())

    def _record(self, status: Mapping[str, Any]) -> None:
        self.status = status
        self.history.add(status, self._clock())

    @property
    def unreachable(self) -> str | None:
        """Since when and why the scaler does not answer; ``None`` while it does."""
        return None if self.down_since is None else f"{self.down_since} ({self.down_why})"

    def _view(self) -> RenderableType:
        url = shown_url(self.url)
        return render(self.status, self.history, url=url, unreachable=self.unreachable)


async def probe(url: str, timeout: float = FIRST_TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109 - the start-up probe's own bound
    async with aiohttp.ClientSession() as session:
        return await fetch_status(session, status_url(url), timeout)


def run_top(url: str, interval: float = DEFAULT_INTERVAL) -> int:
    """The command: exit 1 with one line when nothing answers at ``url``, else run the view.

    A URL that is not one exits 2, as a bad flag. The view's own exit code
    is the command's: 0 when quit, 1 when it crashed (textual's).
    """
    problem = url_problem(url)
    if problem is not None:
        print(f"codalab-scaler: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        first = asyncio.run(probe(url))
    except StatusUnavailable as exc:
        print(f"codalab-scaler top: no scaler status: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130  # the shell's code for "stopped by Ctrl-C"
    app = TopApp(url, interval=interval, first=first)
    app.run()
    return app.return_code or 0
