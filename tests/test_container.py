"""The container image, built and run as an operator would run it (issue 14).

``deploy/Dockerfile`` built with podman on a base made from Debian packages
(``tests/container_image.py``), then run against the CodaLab simulator on
loopback: as the image's own user (no ``--user``), with a read-only root
filesystem, all capabilities dropped and a tmpfs on ``/tmp`` for the local
backend's state; ``/healthz`` probed (and the image's HEALTHCHECK run),
``/metrics`` scraped, SIGTERM sent, exit 0 within 10 s expected.

``.ci/deps/40-container.sh`` builds the base (once per machine) and the
image; the session fixture rebuilds the image from the working tree on its
cached layers, so the test never runs a stale image.  Skips only when
podman or the base image is absent.  Every container it starts is removed in
teardown, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from codalab_scaler.simulator import CodaLabSimulator
from tests import container_image
from tests.scaler_process import PASSWORD, creds, scrape, sim

__all__ = ["sim"]  # fixtures

pytestmark = [pytest.mark.process, pytest.mark.timeout(600)]

STOP_WITHIN = 10.0  # SIGTERM to exit, as the issue asks
START_WITHIN = 60.0


@pytest.fixture(scope="session")
def image() -> str:
    why = container_image.podman_missing()
    if why is None and not container_image.image_exists(container_image.BASE_IMAGE):
        why = f"no base image {container_image.BASE_IMAGE}; run .ci/deps/40-container.sh"
    if why is not None:
        pytest.skip(why)
    return container_image.build_image()


async def podman(*argv: str, within: float = 30.0) -> tuple[int, str]:
    """A podman command that leaves the event loop (and the simulator on it) running."""
    proc = await asyncio.create_subprocess_exec(
        "podman", *argv,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=container_image.podman_env(),
    )  # fmt: skip
    try:
        async with asyncio.timeout(within):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")


@dataclass
class Container:
    """``podman run`` in the foreground: its exit status is the container's."""

    name: str
    proc: asyncio.subprocess.Process | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def start(self, *argv: str, env: dict[str, str]) -> None:
        """``podman run ARGV`` with ``env`` passed by name (values stay off the command line)."""
        names = [item for key in env for item in ("--env", key)]
        self.proc = await asyncio.create_subprocess_exec(
            "podman", "run", "--name", self.name, *names, *argv,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**container_image.podman_env(), **env},
        )  # fmt: skip
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            text = raw.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(text))

    async def event(self, name: str, within: float) -> dict[str, Any]:
        """The first log event ``name``; fails at once if the container has ended."""
        assert self.proc is not None
        async with asyncio.timeout(within):
            while True:
                for line in self.lines:
                    if line.get("event") == name:
                        return line
                if self.proc.returncode is not None:
                    await self.finished()
                    raise AssertionError(f"exited {self.proc.returncode} before {name}: {self.raw}")
                await asyncio.sleep(0.05)

    async def finished(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self.reader is not None:
            await self.reader
        return code

    async def remove(self) -> None:
        """The container and the podman client gone; never raises."""
        with contextlib.suppress(Exception):
            await podman("rm", "--force", "--time", "0", self.name, within=60)
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        if self.proc is not None:
            await self.proc.wait()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await self.reader


@pytest_asyncio.fixture
async def container() -> AsyncIterator[Container]:
    running = Container(f"codalab-scaler-test-{uuid.uuid4().hex[:12]}")
    try:
        yield running
    finally:
        await running.remove()


def free_port() -> int:
    """A loopback port free now (the image's HEALTHCHECK must be told it before start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_image_runs_read_only_as_its_user_probed_scraped_and_stopped(
    image: str, sim: CodaLabSimulator, container: Container
) -> None:
    for _ in range(2):
        sim.add_bundle(duration=600)
    port = free_port()
    env = {**creds(), "HEALTHCHECK_PORT": str(port)}
    await container.start(
        "--network", "host", "--read-only", "--read-only-tmpfs=false",
        "--tmpfs", "/tmp:rw,nosuid,nodev,size=16m,mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        image,
        "--server", sim.url, "--sleep-time", "0.5", "--min-workers", "0", "--max-workers", "2",
        "--min-seconds-between-workers", "0", "--dry-run",
        "--http-host", "127.0.0.1", "--http-port", str(port),
        "local", "--state-dir", "/tmp/state",
        env=env,
    )  # fmt: skip
    await container.event("http.listening", within=START_WITHIN)
    await container.event("scaler.dry_run_launch", within=START_WITHIN)

    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["ok"] is True
    status, metrics = await scrape(port)
    assert status == 200
    assert 'codalab_scaler_staged_bundles{pool="default"} 2.0' in metrics
    assert 'codalab_scaler_launches_total{outcome="dry_run",pool="default"}' in metrics
    code, out = await podman("healthcheck", "run", container.name)
    assert code == 0, f"the image's HEALTHCHECK failed: {out}"

    # The service is the image's own user, not root; / is read-only, /tmp is not.
    code, out = await podman("exec", container.name, "cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in out.splitlines() if line.startswith("Uid:"))
    assert uids == [str(container_image.UID)] * 4, out
    code, out = await podman("exec", container.name, "id", "-u")
    assert (code, out.strip()) == (0, str(container_image.UID))
    code, out = await podman("exec", container.name, "sh", "-c", "echo x > /probe")
    assert code != 0, "wrote to / on a read-only root"
    assert "Read-only file system" in out, out
    code, out = await podman("exec", container.name, "touch", "/var/lib/codalab-scaler/probe")
    assert code != 0, "the home directory is writable on a read-only root"
    code, out = await podman("exec", container.name, "touch", "/tmp/probe")
    assert code == 0, out

    sent = time.monotonic()
    code, out = await podman("kill", "--signal", "TERM", container.name)
    assert code == 0, out
    try:
        async with asyncio.timeout(STOP_WITHIN):
            exit_code = await container.finished()
    except TimeoutError:
        pytest.fail(f"still running {STOP_WITHIN:.0f} s after SIGTERM: {container.raw[-5:]}")
    took = time.monotonic() - sent
    assert exit_code == 0, container.raw[-20:]
    code, out = await podman("inspect", "--format", "{{.State.ExitCode}}", container.name)
    assert (code, out.strip()) == (0, "0")
    assert took < STOP_WITHIN
    events = [line.get("event") for line in container.lines]
    assert "service.stopped" in events
    assert PASSWORD not in metrics + "\n".join(container.raw)
