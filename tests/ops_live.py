"""A real Prometheus scraping a running ``codalab-scaler demo``, for the operations tests.

``scaler_and_prometheus`` starts both on 127.0.0.1 with ports chosen by the
caller at run time (the scaler scraped every second, the rules of
``deploy/prometheus/rules.yml`` evaluated every second) and stops both on
the way out, even when the test fails.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops_promql import JOB, RULES

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
EXECUTABLE = Path(sys.executable).parent / "codalab-scaler"

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not installed (apt-get install prometheus; see .ci/deps)",
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (apt-get install prometheus; see .ci/deps)",
)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL
            return int(resp.status), bytes(resp.read())
    except OSError:
        return 0, b""


def wait_for(
    what: str, check: Callable[[], bool], within: float, output: Callable[[], str]
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {within:g}s waiting for {what}\n{output()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def tail(path: Path, chars: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return f"--- {path.name}:\n{text[-chars:]}"


@dataclass
class LivePrometheus:
    url: str
    config: Path
    logs: Callable[[], str]  # the scaler's and Prometheus's last lines, for failure messages
    scaler_log: Path  # the scaler's whole log (JSON lines)

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = http_get(
            f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        )
        assert status == 200, f"query {promql!r} answered {status}: {body[:500]!r}"
        data = json.loads(body)
        assert data["status"] == "success", data
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def api(self, path: str) -> Any:
        status, body = http_get(f"{self.url}{path}")
        assert status == 200, f"{path} answered {status}"
        return json.loads(body)["data"]


def prometheus_config(scaler_port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{scaler_port}"]}]}
        ],
    }


@contextmanager
def scaler_and_prometheus(
    tmp: Path,
    scaler_port: int,
    prom_port: int,
    *,
    scaler_flags: Sequence[str],
    demo_flags: Sequence[str],
) -> Iterator[LivePrometheus]:
    """``codalab-scaler [scaler_flags] demo [demo_flags]`` and a Prometheus scraping it."""
    assert PROMETHEUS is not None
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(scaler_port)))
    scaler_log, prom_log = tmp / "scaler.log", tmp / "prometheus.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with scaler_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [str(EXECUTABLE), "--http-port", str(scaler_port), "--log-format", "json",
                 *scaler_flags, "demo", *demo_flags],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            ))  # fmt: skip
        with prom_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp,
            ))  # fmt: skip
        logs = lambda: tail(scaler_log) + "\n" + tail(prom_log)  # noqa: E731
        prom = LivePrometheus(f"http://127.0.0.1:{prom_port}", config, logs, scaler_log)
        wait_for(
            "the scaler's /metrics",
            lambda: http_get(f"http://127.0.0.1:{scaler_port}/metrics")[0] == 200,
            20,
            logs,
        )
        wait_for("Prometheus ready", lambda: http_get(f"{prom.url}/-/ready")[0] == 200, 20, logs)
        yield prom
    finally:
        for proc in reversed(procs):
            stop(proc)
