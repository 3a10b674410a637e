"""The ``codalab-scaler`` executable as a subprocess: start it, follow its JSON log, scrape it.

Import the fixtures explicitly into a test module (``launcher``, ``sim``);
every process ``launcher`` starts is killed in teardown, and its output read
to the end, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from codalab_scaler.simulator import CodaLabSimulator

EXECUTABLE = Path(sys.executable).parent / "codalab-scaler"
PASSWORD = "pw-for-process-tests"


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def event(
        self, name: str, within: float = 10.0, after: dict[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """The first log event ``name`` with these fields (logged after ``after``, if given)."""
        async with asyncio.timeout(within):
            while True:
                start = 0 if after is None else self.lines.index(after) + 1
                for line in self.lines[start:]:
                    wanted = all(line.get(k) == v for k, v in fields.items())
                    if line.get("event") == name and wanted:
                        return line
                if self.proc.returncode is not None and self.reader is not None:
                    await self.reader
                    raise AssertionError(f"exited {self.proc.returncode} before {name}: {self.raw}")
                await asyncio.sleep(0.02)

    async def exit_code(self, within: float = 10.0) -> int:
        """Wait for the process to end and its output to be read; its exit status."""
        async with asyncio.timeout(within):
            code = await self.proc.wait()
            if self.reader is not None:
                await self.reader
        return code


# launcher(*args, env=None, base=None): ``base`` (default ``os.environ``) without its
# CODALAB_* and XDG_* variables, then ``env`` on top.
Launcher = Callable[..., Awaitable[Running]]


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[CodaLabSimulator]:
    simulator = CodaLabSimulator(users={"codalab": PASSWORD})
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest_asyncio.fixture
async def launcher() -> AsyncIterator[Launcher]:
    started: list[Running] = []

    async def launch(
        *args: str, env: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
    ) -> Running:
        environment = {
            k: v
            for k, v in (os.environ if base is None else base).items()
            if not k.startswith(("CODALAB_", "XDG_"))
        }
        environment.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            str(EXECUTABLE), *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=environment,
        )  # fmt: skip
        running = Running(proc)

        async def read() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                text = raw.decode(errors="replace").rstrip("\n")
                running.raw.append(text)
                with contextlib.suppress(ValueError):
                    running.lines.append(json.loads(text))

        running.reader = asyncio.create_task(read())
        started.append(running)
        return running

    try:
        yield launch
    finally:
        for running in started:
            if running.proc.returncode is None:
                running.proc.kill()
            await running.proc.wait()
            if running.reader is not None:
                await running.reader


def creds(password: str = PASSWORD) -> dict[str, str]:
    return {"CODALAB_USERNAME": "codalab", "CODALAB_PASSWORD": password}


async def scrape(port: int) -> tuple[int, str]:
    """GET the scaler's ``/metrics`` on 127.0.0.1: HTTP status and text."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        return resp.status, await resp.text()
