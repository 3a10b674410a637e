"""``codalab-scaler demo``: the whole service on its embedded default, with no CodaLab and no cloud.

Starts the CodaLab simulator in-process, feeds it a synthetic stream of
staged bundles of three shapes, and runs the service with two ``fast``
pools of the ``local`` backend, ``small`` (1 cpu) and ``big`` (4 cpus),
whose workers are the stand-in worker: they check in, take bundles and exit
when idle, so staged bundles are routed to one pool or the other, packed
onto workers, drain, and the pools scale up and then down.

On a terminal it shows the ``top`` view of itself and writes its logs to a
file whose path it prints; with ``--no-tui``, or when standard input,
output or error is not a terminal, it logs to standard output as before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog
from aiohttp import web

from codalab_scaler.config.loader import load_settings
from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.entry.flags import print_config_errors, split_flags
from codalab_scaler.entry.top import TopApp
from codalab_scaler.service.app import CONTEXT, make_app, serve
from codalab_scaler.service.logs import configure_logging
from codalab_scaler.simulator.codalab_sim import CodaLabSimulator, run_bundle_stream
from codalab_scaler.simulator.stream import BundleShape

log = structlog.get_logger()

DEMO_USER = "codalab"
DEMO_PASSWORD = "codalab-demo"  # noqa: S105 - the simulator's own throwaway account


@dataclass(frozen=True, slots=True)
class DemoPool:
    name: str
    cpus: int
    memory_mb: int
    max_workers: int


# Two shapes, so routing (each bundle to the smallest shape that fits) and bin-packing
# (two 2-cpu bundles share a big worker) can be watched.
DEMO_POOLS = (DemoPool("small", 1, 2048, 4), DemoPool("big", 4, 8192, 3))
# Mostly 1-cpu bundles (to small), some that only big takes: 2 cpus (two fit on one
# big worker) and 4 cpus (a big worker each).
DEMO_SHAPES = (
    BundleShape(cpus=1, memory="1g", weight=7),
    BundleShape(cpus=2, memory="4g", weight=2),
    BundleShape(cpus=4, memory="8g", weight=1),
)


def _wrapper(state_dir: Path, pool: DemoPool) -> Path:
    """A ``cl-worker`` stand-in that runs this interpreter's stand-in worker with the pool's shape.

    A real ``cl-worker`` finds its cpus and memory itself; the stand-in is told.
    """
    path = state_dir / f"cl-worker-{pool.name}"
    shape = f"--cpus {pool.cpus} --memory-bytes {pool.memory_mb * 1024 * 1024}"
    path.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m codalab_scaler.simulator.stand_in_worker '
        f'{shape} "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def demo_values(args: argparse.Namespace, server: str, state_dir: Path) -> dict[str, Any]:
    """The demo's settings: two ``fast`` pools; pool flags given apply to both."""
    given_service, given_pool, _backend = split_flags(args)  # the demo has no backend flags
    pools: dict[str, Any] = {}
    for shape in DEMO_POOLS:
        pool: dict[str, Any] = {
            "policy": "fast",
            "min_workers": 0,
            "max_workers": shape.max_workers,
            "worker_executable": str(_wrapper(state_dir, shape)),
            "worker_idle_seconds": 4,
            "worker_checkin_frequency_seconds": 1,
            "backend": {
                "kind": "local",
                "cpus": shape.cpus,
                "memory_mb": shape.memory_mb,
                "state_dir": state_dir,
            },
        }
        pool.update(given_pool)
        pools[shape.name] = pool
    values: dict[str, Any] = {
        "sleep_time": 1.0,
        "http_host": "127.0.0.1",
        "health_grace_seconds": 10,
    }
    values.update(given_service)
    values.update(server=server, username=DEMO_USER, password=DEMO_PASSWORD, pools=pools)
    values.pop("password_file", None)
    return values


async def _show(sim: CodaLabSimulator, app: web.Application, every: float = 2.0) -> None:
    while True:
        await asyncio.sleep(every)
        ctx = app.get(CONTEXT)  # set once the app has opened everything
        pools = {}
        for name, state in ({} if ctx is None else ctx.state.snapshot.pools).items():
            decision = state.last_decision
            pools[name] = {
                "pending": decision.counts.pending if decision else None,
                "active": decision.counts.active if decision else None,
                "decision": decision.reason.value if decision else None,
            }
        log.info(
            "demo.status",
            staged=len(sim.bundles_in_state("staged")),
            running=len(sim.bundles_in_state("running")),
            done=len(sim.bundles_in_state("ready")),
            pools=pools,
        )


def wants_tui(args: argparse.Namespace, streams: tuple[TextIO, ...]) -> bool:
    """The live view, unless ``--no-tui`` or a stream is not a terminal.

    Textual reads keys from stdin and draws on stderr; stdout is the user's.
    """
    return not args.no_tui and all(s.isatty() for s in streams)


@contextlib.contextmanager
def _log_file() -> Iterator[tuple[Path, TextIO]]:
    """A file for the demo's logs while the live view has the terminal; kept afterwards."""
    fd, name = tempfile.mkstemp(prefix="codalab-scaler-demo-", suffix=".log")
    with open(fd, "a", buffering=1, encoding="utf-8") as out:  # noqa: PTH123 - an fd, not a path
        yield Path(name), out


def _local_url(host: str, port: int) -> str:
    """Where the view reads ``/status``: a wildcard address is reached on loopback."""
    reach = "127.0.0.1" if host in {"", "0.0.0.0", "::"} else host  # noqa: S104 - compared, not bound
    return f"http://[{reach}]:{port}" if ":" in reach else f"http://{reach}:{port}"


async def _serve_with_view(app: web.Application, host: str, port: int, stop: asyncio.Event) -> int:
    """Serve ``app`` and show the top view of it.

    Quitting the view stops the demo; the end of the service (``--duration``,
    SIGTERM) closes the view.
    """
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_listening(actual: int) -> None:
        if not listening.done():
            listening.set_result(actual)

    server = asyncio.create_task(serve(app, host, port, stop=stop, on_listening=on_listening))
    await asyncio.wait([server, listening], return_when=asyncio.FIRST_COMPLETED)
    if server.done():  # it never listened: a taken port, a wrong password
        listening.cancel()
        return server.result()
    view = TopApp(_local_url(host, listening.result()))
    shown = asyncio.create_task(view.run_async())
    await asyncio.wait([server, shown], return_when=asyncio.FIRST_COMPLETED)
    if not server.done():  # q or Ctrl-C in the view, or the view failed
        stop.set()
    else:
        view.exit()
    (outcome,) = await asyncio.gather(shown, return_exceptions=True)
    code = await server  # the service has stopped and closed everything by now
    if isinstance(outcome, Exception):
        log.error("demo.view_failed", error=repr(outcome))
        raise outcome
    return code


async def _demo(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    tui: bool,
    configure: Callable[[Settings], None],
) -> int:
    from codalab_scaler.sources.backends.local.backend import LocalBackend

    sim = CodaLabSimulator(users={DEMO_USER: DEMO_PASSWORD})
    server = await sim.start("127.0.0.1", 0)
    state_dir = Path(tempfile.mkdtemp(prefix="codalab-scaler-demo-"))
    tasks: list[asyncio.Task[None]] = []
    app: web.Application | None = None
    try:
        try:
            settings = load_settings(demo_values(args, server, state_dir), environ)
        except ConfigError as exc:
            return print_config_errors(exc)
        configure(settings)
        log.info("demo.started", codalab=server, state_dir=str(state_dir), bundles=args.bundles,
                 pools=[p.name for p in DEMO_POOLS])  # fmt: skip
        app = make_app(settings)
        rng = random.Random(args.seed)  # noqa: S311 - a demo's synthetic workload, not crypto
        tasks.append(asyncio.create_task(run_bundle_stream(
            sim,
            rate_per_minute=args.bundles_per_minute,
            total=args.bundles,
            rng=rng,
            duration_range=(1.0, max(1.0, args.max_run_seconds)),
            shapes=DEMO_SHAPES,
        )))  # fmt: skip
        tasks.append(asyncio.create_task(_show(sim, app)))
        stop = asyncio.Event()
        if args.duration is not None:
            asyncio.get_running_loop().call_later(args.duration, stop.set)
        if tui:
            return await _serve_with_view(app, settings.http_host, settings.http_port, stop)
        return await serve(app, settings.http_host, settings.http_port, stop=stop)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The app has closed its backends; the demo's local workers are still running.
        ctx = None if app is None else app.get(CONTEXT)
        if ctx is not None:
            for pool in ctx.pools.values():
                if isinstance(pool.backend, LocalBackend):
                    await pool.backend.stop_all()
        await sim.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
        log.info("demo.stopped")


def run_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    verbose = getattr(args, "verbose", False)
    if not wants_tui(args, (sys.stdin, sys.stdout, sys.stderr)):
        configure_logging(verbose=verbose, fmt="auto")

        def to_stdout(settings: Settings) -> None:
            configure_logging(verbose=settings.verbose, fmt=settings.log_format)

        return asyncio.run(_demo(args, environ, tui=False, configure=to_stdout))
    with _log_file() as (path, out):
        print(f"codalab-scaler demo: logs go to {path}")
        configure_logging(verbose=verbose, fmt="json", stream=out)

        def to_file(settings: Settings) -> None:
            configure_logging(verbose=settings.verbose, fmt="json", stream=out)

        code = asyncio.run(_demo(args, environ, tui=True, configure=to_file))
    print(f"codalab-scaler demo: stopped (exit {code}); its logs are in {path}")
    return code
