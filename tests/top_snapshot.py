"""A real scaler whose ``/status`` has something in every part of the top view, and its snapshot.

``live_scaler`` runs the whole app (``make_app``) on 127.0.0.1 with a port
chosen at run time, against the CodaLab simulator, with three ``fast`` pools
of the ``local`` backend whose workers are the stand-in ``cl-worker``:

- ``small`` (1 cpu, max 2) and ``big`` (4 cpus, max 1): four 1-cpu bundles
  go to small, two run and two wait at its max; three 2-cpu bundles go to
  big, two share its worker and one waits;
- ``broken`` (1 cpu, priority 1) whose executable does not exist: it is
  refused, backs off, and its bundles fall through to small;
- a 16-cpu bundle no pool can take: unroutable, ``too_large``.

The stored fixture (``tests/fixtures/top/status.json``, a few ``/status``
documents a second apart) and the text they render to (``status.txt``) are
written by this module run as a command::

    .venv/bin/python -m tests.top_snapshot capture   # a new fixture from a live scaler
    .venv/bin/python -m tests.top_snapshot update    # the expected text from the fixture
"""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from codalab_scaler.config.settings import Settings
from codalab_scaler.entry.top_view import History, render, render_text
from codalab_scaler.service.app import CONTEXT, make_app
from codalab_scaler.simulator import CodaLabSimulator

FIXTURES = Path(__file__).parent / "fixtures" / "top"
STATUS_JSON = FIXTURES / "status.json"
STATUS_TXT = FIXTURES / "status.txt"
FIXTURE_URL = "http://127.0.0.1:9740/status"  # the URL the snapshot names, whatever was captured
USER, PASSWORD = "codalab", "top-pw"
BIG_BUNDLE_CPUS = 16


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _settings(sim: CodaLabSimulator, tmp: Path) -> Settings:
    worker = f'exec "{sys.executable}" -m codalab_scaler.simulator.stand_in_worker'
    small = _script(tmp / "small-worker", f'{worker} "$@"')
    big = _script(tmp / "big-worker", f'{worker} --cpus 4 --memory-bytes {8 << 30} "$@"')

    def pool(executable: Path, cpus: int, memory_mb: int, **extra: Any) -> dict[str, Any]:
        return {
            "policy": "fast",
            "min_workers": 0,
            "max_workers": extra.pop("max_workers", 2),
            "worker_executable": str(executable),
            "worker_idle_seconds": 30,
            "worker_checkin_frequency_seconds": 1,
            "backend": {
                "kind": "local",
                "cpus": cpus,
                "memory_mb": memory_mb,
                "state_dir": str(tmp / "state"),
            },
            **extra,
        }

    return Settings.model_validate(
        {
            "server": sim.url,
            "username": USER,
            "password": PASSWORD,
            "sleep_time": 0.5,
            "request_timeout_seconds": 2,
            "http_host": "127.0.0.1",
            "http_port": 0,
            "pools": {
                # Tagged, so CodaLab's bundle manager cannot hand the 1-cpu bundles to the
                # big worker before a small one boots (it would: fewest cpus among the listed).
                "small": pool(small, 1, 2048, worker_tag="small"),
                "big": pool(big, 4, 8192, max_workers=1),
                "broken": pool(
                    tmp / "no-such-cl-worker",
                    1,
                    2048,
                    priority=1,
                    worker_tag="small",
                    backoff_initial_seconds=120,
                    backoff_max_seconds=120,
                ),
            },
        }
    )


@asynccontextmanager
async def live_scaler(tmp: Path) -> AsyncIterator[str]:
    """The scaler's base URL; the simulator, the app and every worker are stopped on the way out."""
    sim = CodaLabSimulator(users={USER: PASSWORD})
    await sim.start("127.0.0.1", 0)
    runner: web.AppRunner | None = None
    try:
        for _ in range(4):
            sim.add_bundle(USER, cpus=1, memory="1g", duration=120, queue="small")
        for _ in range(3):
            sim.add_bundle(USER, cpus=2, memory="4g", duration=120)
        sim.add_bundle(USER, cpus=BIG_BUNDLE_CPUS, memory="4g", duration=120)
        app = make_app(_settings(sim, tmp), registry=CollectorRegistry())
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        if runner is not None:
            ctx = runner.app.get(CONTEXT)
            await runner.cleanup()
            for pool in ctx.pools.values() if ctx is not None else ():
                stop = getattr(pool.backend, "stop_all", None)
                if stop is not None:
                    await stop(timeout=2)
        await sim.stop()


def settled(status: Mapping[str, Any]) -> bool:
    """Every part of the view has something: both shapes serving and full, a backoff, a too-large
    bundle."""
    pools = status["pools"]
    planner = {name: pools[name]["planner"] or {} for name in ("small", "big", "broken")}
    workers = {name: p.get("workers") or {} for name, p in planner.items()}
    reasons = {(row["unroutable"] or {}).get("reason") for row in status["bundles"]["staged"]}
    return (
        len(workers["small"].get("serving", [])) == 2
        and len(workers["big"].get("serving", [])) == 1
        and (planner["broken"].get("backoff_seconds") or 0) > 0
        and {"too_large", "pools_at_max"} <= reasons
    )


async def get_status(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/status") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def wait_settled(base: str, within: float = 30.0) -> dict[str, Any]:
    """Poll ``/status`` until ``settled``; the settled document."""
    async with asyncio.timeout(within):
        while True:
            status = await get_status(base)
            if settled(status):
                return status
            await asyncio.sleep(0.25)


def render_fixture(documents: list[dict[str, Any]], url: str = FIXTURE_URL) -> str:
    """What the view shows after reading ``documents`` a second apart."""
    history = History()
    for second, document in enumerate(documents):
        history.add(document, float(second))
    return render_text(render(documents[-1], history, url=url))


async def _capture(after: int = 3, within: float = 30.0) -> list[dict[str, Any]]:
    """``/status`` every second from the start until settled, and ``after`` more."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="top-capture-") as tmp:
        async with live_scaler(Path(tmp)) as base, asyncio.timeout(within):
            documents = [await get_status(base)]
            while not settled(documents[-1]):
                await asyncio.sleep(1.0)
                documents.append(await get_status(base))
            for _ in range(after):
                await asyncio.sleep(1.0)
                documents.append(await get_status(base))
    return documents


def main(argv: list[str]) -> int:
    commands: dict[str, Callable[[], object]] = {
        "capture": lambda: STATUS_JSON.write_text(
            json.dumps(asyncio.run(_capture()), indent=1, sort_keys=True) + "\n"
        ),
        "update": lambda: STATUS_TXT.write_text(
            render_fixture(json.loads(STATUS_JSON.read_text()))
        ),
    }
    if len(argv) != 1 or argv[0] not in commands:
        print("usage: python -m tests.top_snapshot capture|update", file=sys.stderr)  # noqa: T201
        return 2
    FIXTURES.mkdir(parents=True, exist_ok=True)
    commands[argv[0]]()
    if argv[0] == "capture":
        commands["update"]()
    print(f"wrote {STATUS_JSON if argv[0] == 'capture' else STATUS_TXT}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
