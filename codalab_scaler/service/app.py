"""The application: the service's lifecycle is owned by the aiohttp app (``cleanup_ctx``)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from codalab_scaler.core.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, LoginRefused
from codalab_scaler.service.runtime import Service
from codalab_scaler.service.web import SERVICE, add_routes

log = structlog.get_logger()

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "make_app", "refused_login", "serve"]


async def refused_login(service: Service, exc: LoginRefused) -> int:
    """A wrong password: say so, stop what started, exit 2 (a restart would not help)."""
    log.error("codalab.login_refused", error=str(exc))
    await service.stop()
    return EXIT_CONFIG


def make_app(service: Service) -> web.Application:
    app = web.Application()
    app[SERVICE] = service
    add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[SERVICE].start()
        yield
        await app[SERVICE].stop()

    app.cleanup_ctx.append(lifecycle)
    return app


async def serve(
    service: Service,
    host: str,
    port: int,
    *,
    on_listening: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until a root loop dies (exit 1)."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _serve(service, host, port, stop, on_listening)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _until_stopped(stop: asyncio.Event, *events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in (stop, *events)]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


async def _serve(
    service: Service,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_listening: Callable[[int], None] | None,
) -> int:
    # Log in first (a wrong password exits 2), but a signal during a slow login still stops.
    login = asyncio.ensure_future(service.login())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([login, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not login.done():
        login.cancel()
        await asyncio.gather(login, return_exceptions=True)
        await service.stop()
        return EXIT_OK
    try:
        login.result()
    except LoginRefused as exc:
        return await refused_login(service, exc)
    # Bind before any loop starts: a port in use must not leave workers launched behind it.
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        log.error("http.bind_failed", host=host, port=port, error=exc.strerror)
        await service.stop()
        return EXIT_CONFIG
    runner = web.AppRunner(
        make_app(service), handle_signals=False, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        actual = sock.getsockname()[1]
        log.info("http.listening", host=host, port=actual)
        if on_listening is not None:
            on_listening(actual)
        await _until_stopped(stop, service.fatal)
    finally:
        log.info("service.stopping", fatal=service.fatal_reason)
        await runner.cleanup()
    if service.fatal.is_set():
        log.error("service.failed", reason=service.fatal_reason)
        return EXIT_FAILURE
    return EXIT_OK
