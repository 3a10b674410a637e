"""``codalab-scaler demo``: the whole service on its embedded default, with no CodaLab and no cloud.

Starts the CodaLab simulator in-process, feeds it a synthetic stream of
staged bundles, and runs the service with the ``local`` backend whose
workers are the stand-in worker: they check in, take bundles and exit when
idle, so staged bundles drain and the pool scales up and then down.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from codalab_scaler.config.loader import load_settings
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.entry.flags import print_config_errors, split_flags
from codalab_scaler.service.app import CONTEXT, make_app, serve
from codalab_scaler.service.logs import configure_logging
from codalab_scaler.simulator.codalab_sim import CodaLabSimulator, run_bundle_stream

log = structlog.get_logger()

DEMO_POOL = "demo"
DEMO_USER = "codalab"
DEMO_PASSWORD = "codalab-demo"  # noqa: S105 - the simulator's own throwaway account


def _wrapper(state_dir: Path) -> Path:
    """A ``cl-worker`` stand-in executable that runs this interpreter's stand-in worker."""
    path = state_dir / "cl-worker"
    path.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m codalab_scaler.simulator.stand_in_worker "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def demo_values(args: argparse.Namespace, server: str, state_dir: Path) -> dict[str, Any]:
    given_service, given_pool, _backend = split_flags(args)  # the demo has no backend flags
    pool: dict[str, Any] = {
        "min_workers": 0,
        "max_workers": 4,
        "min_seconds_between_workers": 2,
        "worker_executable": str(_wrapper(state_dir)),
        "worker_idle_seconds": 4,
        "worker_checkin_frequency_seconds": 1,
        "backend": {"kind": "local", "cpus": 1, "memory_mb": 2048, "state_dir": state_dir},
    }
    pool.update(given_pool)
    values: dict[str, Any] = {
        "sleep_time": 1.0,
        "http_host": "127.0.0.1",
        "health_grace_seconds": 10,
    }
    values.update(given_service)
    values.update(
        server=server, username=DEMO_USER, password=DEMO_PASSWORD, pools={DEMO_POOL: pool}
    )
    values.pop("password_file", None)
    return values


async def _show(sim: CodaLabSimulator, app: web.Application, every: float = 2.0) -> None:
    while True:
        await asyncio.sleep(every)
        ctx = app.get(CONTEXT)  # set once the app has opened everything
        decision = None if ctx is None else ctx.state.snapshot.pools[DEMO_POOL].last_decision
        log.info(
            "demo.status",
            staged=len(sim.bundles_in_state("staged")),
            running=len(sim.bundles_in_state("running")),
            done=len(sim.bundles_in_state("ready")),
            pending=decision.counts.pending if decision else None,
            active=decision.counts.active if decision else None,
            decision=decision.reason.value if decision else None,
        )


async def _demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
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
        configure_logging(verbose=settings.verbose, fmt=settings.log_format)
        log.info("demo.started", codalab=server, state_dir=str(state_dir), bundles=args.bundles)
        app = make_app(settings)
        rng = random.Random(args.seed)  # noqa: S311 - a demo's synthetic workload, not crypto
        tasks.append(asyncio.create_task(run_bundle_stream(
            sim,
            rate_per_minute=args.bundles_per_minute,
            total=args.bundles,
            rng=rng,
            duration_range=(1.0, max(1.0, args.max_run_seconds)),
        )))  # fmt: skip
        tasks.append(asyncio.create_task(_show(sim, app)))
        stop = asyncio.Event()
        if args.duration is not None:
            asyncio.get_running_loop().call_later(args.duration, stop.set)
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
    configure_logging(verbose=getattr(args, "verbose", False), fmt="auto")
    return asyncio.run(_demo(args, environ))
