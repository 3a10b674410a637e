"""A loopback HTTP proxy that answers with a chosen fault instead of its upstream's answer.

Placed in front of the CodaLab simulator or moto's server, it forwards
every request unchanged until a fault is set; ``clear()`` ends the fault.
Connection refused is the proxy closing its listening socket (and opening
the same port again when the fault ends); every other mode is an answer.
A request held by ``HANG`` is released when the fault ends or the proxy
stops, so nothing outlives ``stop()``.  Use the ``fault_proxy`` fixture's
factory: every proxy it starts is stopped in teardown, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web

# Headers that describe one hop's framing, never forwarded.
HOP_BY_HOP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}
)
RETRY_AFTER_SECONDS = 1
SLOW_SECONDS = 0.3  # well inside every request timeout the fault tests use
HANG_SECONDS = 60.0  # far past them; released early when the fault ends


class Fault(StrEnum):
    REFUSED = "connection refused"
    HANG = "hang past the timeout"
    ERROR_500 = "500"
    ERROR_502 = "502"
    ERROR_503 = "503"
    THROTTLED = "429 with Retry-After"
    UNAUTHORIZED = "401"
    MALFORMED_JSON = "malformed JSON"
    HTML_200 = "HTML error page with status 200"
    TRUNCATED = "truncated body"
    SLOW = "slow but valid answer"
    PARTIAL_PAGE = "partial page of results"


# Faults after which the view must fail; SLOW is valid, PARTIAL_PAGE looks valid.
FAILING = frozenset(Fault) - {Fault.SLOW, Fault.PARTIAL_PAGE}

HTML_PAGE = b"<!DOCTYPE html><html><body><h1>Sign in</h1><p>Session expired.</p></body></html>"


def _status(code: int) -> Callable[[], web.Response]:
    return lambda: web.Response(status=code, text=f"upstream said {code}")


def _json(status: int, error: str, message: str, **headers: str) -> Callable[[], web.Response]:
    """An error answer both CodaLab's client and botocore read (``__type`` names the error)."""
    body = {"__type": error, "message": message}
    return lambda: web.json_response(
        body, status=status, headers={"x-amzn-errortype": error, **headers}
    )


# Answers that do not depend on the request or the upstream.
CANNED: dict[Fault, Callable[[], web.Response]] = {
    Fault.ERROR_500: _status(500),
    Fault.ERROR_502: _status(502),
    Fault.ERROR_503: _status(503),
    Fault.THROTTLED: _json(
        429, "TooManyRequestsException", "slow down", **{"Retry-After": str(RETRY_AFTER_SECONDS)}
    ),
    Fault.UNAUTHORIZED: _json(401, "UnrecognizedClientException", "who are you"),
    Fault.MALFORMED_JSON: lambda: web.Response(
        body=b'{"data": [{"id": ', content_type="application/json"
    ),
    Fault.HTML_200: lambda: web.Response(body=HTML_PAGE, content_type="text/html"),
}

# Cuts a decoded JSON answer down to part of its results; None if it has no list of them.
Trim = Callable[[Any], Any | None]


def halve(key: str) -> Trim:
    """A trim keeping the first half of the list under ``key``, nothing else changed."""

    def trim(document: Any) -> Any | None:
        if not isinstance(document, dict) or not isinstance(document.get(key), list):
            return None
        return {**document, key: document[key][: len(document[key]) // 2]}

    return trim


class FaultProxy:
    """Forwards to ``upstream``; answers with ``fault`` for requests ``applies`` selects."""

    def __init__(
        self,
        upstream: str,
        *,
        applies: Callable[[web.Request], bool] = lambda _request: True,
        trim: Trim = lambda _document: None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.applies = applies
        self.trim = trim
        self.fault: Fault | None = None
        self._remaining: int | None = None
        self.faulted = 0  # requests answered with a fault
        self.forwarded = 0  # requests the upstream has answered
        self.answered: list[str] = []  # their paths, in order
        self.seen: list[tuple[float, str, str]] = []  # (loop time, method, path) of each request
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._http: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        """Serve on ``port`` (a free one the first time)."""
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        self.port = self._runner.addresses[-1][1]

    async def _close(self) -> None:
        """Stop listening and drop every open connection (kept-alive ones too)."""
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        server = None if self._runner is None else self._runner.server
        for connection in [] if server is None else list(server.connections):
            connection.force_close()

    async def stop(self) -> None:
        self._released.set()
        await self._close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def set(self, fault: Fault, times: int | None = None) -> None:
        """Answer with ``fault`` from now on, or for the next ``times`` requests it applies to."""
        await self.clear()
        self._released = asyncio.Event()
        self.fault = fault
        self._remaining = times
        if fault is Fault.REFUSED:
            await self._close()

    async def clear(self) -> None:
        """Forward everything again; held requests are let go."""
        self.fault = None
        self._released.set()
        if self._site is None and self._runner is not None:
            await self._listen()

    # -- answering ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((asyncio.get_running_loop().time(), request.method, request.path))
        fault = self.fault
        if fault is None or not self.applies(request):
            return await self._forward(request)
        self.faulted += 1
        if self._remaining is not None:
            self._remaining -= 1
            if self._remaining <= 0:
                self.fault = None
        return await self._answer(fault, request)

    async def _answer(self, fault: Fault, request: web.Request) -> web.StreamResponse:
        canned = CANNED.get(fault)
        if canned is not None:
            return canned()
        if fault is Fault.HANG:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), HANG_SECONDS)
            return web.Response(status=504, text="held too long")
        if fault is Fault.TRUNCATED:
            return await self._truncated(request)
        if fault is Fault.SLOW:
            await asyncio.sleep(SLOW_SECONDS)
        return await self._forward(request, trim=fault is Fault.PARTIAL_PAGE)

    async def _truncated(self, request: web.Request) -> web.StreamResponse:
        """The upstream's answer announced in full, half of it sent, then the connection closed."""
        status, headers, body = await self._upstream(request)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.close()
        return response

    async def _forward(self, request: web.Request, *, trim: bool = False) -> web.Response:
        status, headers, body = await self._upstream(request)
        self.forwarded += 1
        self.answered.append(request.path)
        if trim:
            try:
                trimmed = self.trim(json.loads(body))
            except ValueError:
                trimmed = None
            if trimmed is not None:
                body = json.dumps(trimmed).encode()
        return web.Response(status=status, headers=headers, body=body)

    async def _upstream(self, request: web.Request) -> tuple[int, dict[str, str], bytes]:
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._http.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return answer.status, kept, body


ProxyFactory = Callable[..., Awaitable[FaultProxy]]


@pytest_asyncio.fixture
async def fault_proxy() -> AsyncIterator[ProxyFactory]:
    """``await fault_proxy(upstream, **options)``: a started ``FaultProxy``, stopped in teardown."""
    started: list[FaultProxy] = []

    async def make(upstream: str, **options: Any) -> FaultProxy:
        proxy = FaultProxy(upstream, **options)
        started.append(proxy)
        await proxy.start()
        return proxy

    try:
        yield make
    finally:
        for proxy in started:
            await proxy.stop()
