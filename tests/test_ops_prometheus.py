"""The dashboard's and the rules' PromQL against a real Prometheus scraping a running scaler.

A real ``prometheus`` server (Debian's package) on 127.0.0.1 scrapes
``codalab-scaler demo`` every second and evaluates ``deploy/prometheus/rules.yml``;
every vector selector of every expression must then match at least one
series, so a typo'd metric name or a label value the scaler never exports
fails here. ``promtool`` checks the rules and runs their unit tests.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops_promql import (
    JOB,
    RULE_TESTS,
    RULES,
    Expr,
    alert_names,
    dashboard_exprs,
    metric_name,
    recorded_names,
    rule_exprs,
    rule_test_series,
    selectors,
    substitute,
)

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


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Callable[[], int]
) -> Iterator[LivePrometheus]:
    """The demo scaler and a Prometheus scraping it, stopped in teardown even on failure."""
    assert PROMETHEUS is not None
    tmp = tmp_path_factory.mktemp("ops-prometheus")
    scaler_port, prom_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(scaler_port)))
    scaler_log, prom_log = tmp / "scaler.log", tmp / "prometheus.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with scaler_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [str(EXECUTABLE), "--http-port", str(scaler_port), "--log-format", "json",
                 # fast: only a fast pool has launch tokens (the dashboard graphs them)
                 "--policy", "fast",
                 "demo", "--duration", "90", "--bundles-per-minute", "120", "--seed", "5"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            ))  # fmt: skip
        with prom_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp,
            ))  # fmt: skip
        logs = lambda: tail(scaler_log) + "\n" + tail(prom_log)  # noqa: E731
        prom = LivePrometheus(f"http://127.0.0.1:{prom_port}", config)
        wait_for(
            "the scaler's /metrics",
            lambda: http_get(f"http://127.0.0.1:{scaler_port}/metrics")[0] == 200,
            20,
            logs,
        )
        wait_for("Prometheus ready", lambda: http_get(f"{prom.url}/-/ready")[0] == 200, 20, logs)

        def scraped_enough() -> bool:
            # Several scrapes, and the recording rules evaluated on them.
            up = prom.query(f'count_over_time(up{{job="{JOB}"}}[1m]) >= 6')
            return bool(up) and all(prom.query(name) for name in recorded_names())

        wait_for("six scrapes and the recording rules", scraped_enough, 30, logs)
        yield prom
    finally:
        for proc in reversed(procs):
            stop(proc)


def _ids(exprs: list[Expr]) -> list[str]:
    return [e.origin for e in exprs]


DASHBOARD_EXPRS = dashboard_exprs()
RULE_EXPRS = rule_exprs()


@needs_prometheus
def test_scaler_target_is_up(live: LivePrometheus) -> None:
    result = live.query(f'up{{job="{JOB}"}}')
    assert [r["value"][1] for r in result] == ["1"]


@needs_prometheus
@pytest.mark.parametrize("expr", DASHBOARD_EXPRS, ids=_ids(DASHBOARD_EXPRS))
def test_dashboard_expression_returns_series(live: LivePrometheus, expr: Expr) -> None:
    promql = substitute(expr.promql)
    found = selectors(promql)
    assert found, f"no selector found in {promql!r}"
    for selector in found:
        assert live.query(selector), f"{expr.origin}: {selector} matches no series"
    assert live.query(promql), f"{expr.origin}: {promql} returns nothing"


@needs_prometheus
@pytest.mark.parametrize("expr", RULE_EXPRS, ids=_ids(RULE_EXPRS))
def test_rule_selectors_return_series(live: LivePrometheus, expr: Expr) -> None:
    """Every selector matches; a recording rule's whole expression returns series.

    An alert's whole expression is meant to be empty while all is well, so
    only its selectors are checked here; its joins are exercised by the
    promtool unit tests, whose input series carry the real labels (checked
    by ``test_rule_unit_tests_use_real_series``).
    """
    found = selectors(expr.promql)
    assert found, f"no selector found in {expr.promql!r}"
    known = recorded_names() | {"up"}
    for selector in found:
        name = metric_name(selector)
        ours = name.startswith(("codalab_scaler_", "process_"))
        assert name in known or ours, f"odd selector {selector}"
        assert live.query(selector), f"{expr.origin}: {selector} matches no series"
    if expr.kind == "record":
        assert live.query(expr.promql), f"{expr.origin}: expression returns nothing"


@needs_prometheus
def test_rule_unit_tests_use_real_series(live: LivePrometheus) -> None:
    """The promtool tests' input series have the metric names, label names and
    label values (other than job, instance, pool) that the real scaler exports."""
    for name, labels in rule_test_series():
        if name == "up":
            continue
        series = live.query(name)
        assert series, f"unit tests use {name}, which the scaler does not export"
        live_keys = {k for s in series for k in s["metric"]} - {"__name__"}
        assert set(labels) == live_keys, f"{name}: tests use {sorted(labels)}, live {live_keys}"
        for key, value in labels.items():
            if key in {"job", "instance", "pool"}:
                continue
            values = {s["metric"][key] for s in series}
            assert value in values, f"{name}{{{key}={value!r}}} is never exported: {values}"


@needs_prometheus
def test_rules_are_loaded_and_healthy(live: LivePrometheus) -> None:
    groups = live.api("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    loaded = {rule["name"] for rule in rules if rule["type"] == "alerting"}
    assert loaded == set(alert_names())
    assert {rule["name"] for rule in rules if rule["type"] == "recording"} == recorded_names()
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not unhealthy


@needs_prometheus
def test_promtool_check_config(live: LivePrometheus) -> None:
    assert PROMTOOL is not None
    run = subprocess.run(
        [PROMTOOL, "check", "config", str(live.config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    run = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    assert RULE_TESTS
    run = subprocess.run(
        [PROMTOOL, "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
