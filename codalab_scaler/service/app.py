"""The application owns the program: ``make_app`` wires it, its ``cleanup_ctx`` runs it.

On start-up the lifecycle opens the CodaLab client, logs in, opens every
backend and starts the root loops, all on one ``AsyncExitStack``; on
clean-up (or a failure half-way through opening) the stack stops the loops
and closes the backends and the client, in reverse order.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, LoginRefused
from codalab_scaler.service.loops import run_once as one_pass
from codalab_scaler.service.loops import running
from codalab_scaler.service.web import CONTEXT, add_routes
from codalab_scaler.service.wiring import Overrides, assemble, open_context

log = structlog.get_logger()

__all__ = [
    "CONTEXT",
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "Overrides",
    "make_app",
    "refused_login",
    "run_once",
    "serve",
]


def refused_login(exc: LoginRefused) -> int:
    """A wrong password: say so, exit 2 (a restart would not help)."""
    log.error("codalab.login_refused", error=str(exc))
    return EXIT_CONFIG


def make_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    registry: CollectorRegistry | None = None,
    overrides: Overrides | None = None,
) -> web.Application:
    """The whole service as an aiohttp app; nothing is opened until it starts."""
    parts = assemble(settings, clock=clock, registry=registry, overrides=overrides)
    app = web.Application()
    add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.callback(log.info, "service.stopped")  # runs last, after every close
            app[CONTEXT] = ctx = await open_context(stack, parts, login=True)
            await stack.enter_async_context(running(ctx))
            yield

    app.cleanup_ctx.append(lifecycle)
    return app


async def run_once(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    registry: CollectorRegistry | None = None,
    overrides: Overrides | None = None,
) -> int:
    """``--once``: open everything, one poll of every source and one pass, close; exit 0 or 1.

    A wrong password exits 2; ``ConfigError`` propagates as from ``serve``.
    """
    parts = assemble(settings, clock=clock, registry=registry, overrides=overrides)
    try:
        async with AsyncExitStack() as stack:
            stack.callback(log.info, "service.stopped")
            result = await one_pass(await open_context(stack, parts, login=True))
    except LoginRefused as exc:
        return refused_login(exc)
    if parts.fatal.is_set():
        log.error("once.failed", problems=[parts.fatal.reason])
        return EXIT_FAILURE
    if not result.ok:
        log.error("once.failed", problems=list(result.problems))
        return EXIT_FAILURE
    return EXIT_OK


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    on_listening: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run ``app`` until SIGTERM/SIGINT or ``stop`` (exit 0) or until a root loop dies (exit 1).

    A taken port or a wrong password exits 2.  ``ConfigError`` (a backend's own
    checks when it opens, or one a loop raised, e.g. leader election's) propagates,
    after everything opened was closed.
    """
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _serve(app, host, port, stop, on_listening)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_listening: Callable[[int], None] | None,
) -> int:
    # Bind before anything opens or any loop starts: a port in use must not leave
    # workers launched behind it.
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        log.error("http.bind_failed", host=host, port=port, error=exc.strerror)
        return EXIT_CONFIG
    with sock:
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        # Start-up logs in first (a wrong password exits 2); a signal meanwhile still stops.
        setup = asyncio.ensure_future(runner.setup())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([setup, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not setup.done():
            setup.cancel()  # the lifecycle closes what it opened on its way out
            await asyncio.gather(setup, return_exceptions=True)
            return EXIT_OK
        try:
            setup.result()
        except LoginRefused as exc:
            return refused_login(exc)
        fatal = app[CONTEXT].fatal
        try:
            await web.SockSite(runner, sock).start()
            actual = sock.getsockname()[1]
            log.info("http.listening", host=host, port=actual)
            if on_listening is not None:
                on_listening(actual)
            await _until_stopped(stop, fatal.event)
        finally:
            log.info("service.stopping", fatal=fatal.reason)
            await runner.cleanup()
    if fatal.config_error is not None:  # a loop found a setting no restart can fix
        raise fatal.config_error
    if fatal.is_set():
        log.error("service.failed", reason=fatal.reason)
        return EXIT_FAILURE
    return EXIT_OK


async def _until_stopped(stop: asyncio.Event, *events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in (stop, *events)]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
