"""The dashboard's and the rules' PromQL against a real Prometheus scraping a running scaler.

A real ``prometheus`` server (Debian's package) on 127.0.0.1 scrapes
``codalab-scaler demo`` every second and evaluates ``deploy/prometheus/rules.yml``;
every vector selector of every expression must then match at least one
series, so a typo'd metric name or a label value the scaler never exports
fails here. ``promtool`` checks the rules and runs their unit tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.ops_live import (
    PROMTOOL,
    LivePrometheus,
    needs_prometheus,
    needs_promtool,
    scaler_and_prometheus,
    wait_for,
)
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


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Callable[[], int]
) -> Iterator[LivePrometheus]:
    """The demo scaler and a Prometheus scraping it, stopped in teardown even on failure."""
    with scaler_and_prometheus(
        tmp_path_factory.mktemp("ops-prometheus"),
        unused_tcp_port_factory(),
        unused_tcp_port_factory(),
        # fast: only a fast pool has launch tokens (the dashboard graphs them)
        scaler_flags=["--policy", "fast"],
        demo_flags=["--duration", "90", "--bundles-per-minute", "120", "--seed", "5"],
    ) as prom:

        def scraped_enough() -> bool:
            # Several scrapes, and the recording rules evaluated on them.
            up = prom.query(f'count_over_time(up{{job="{JOB}"}}[1m]) >= 6')
            return bool(up) and all(prom.query(name) for name in recorded_names())

        wait_for("six scrapes and the recording rules", scraped_enough, 30, prom.logs)
        yield prom


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
