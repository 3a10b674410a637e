"""The Grafana dashboard is provisioning-ready: valid JSON, Grafana 10+ schema,
data source and pool as variables used by every panel and query."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.ops_promql import (
    DASHBOARD,
    ROOT,
    exported_series,
    load_dashboard,
    panels,
    selector_problem,
    selectors,
    substitute,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Metrics without a pool label: everything else must be filtered by $pool.
# A bundle no pool takes belongs to no pool: unroutable_bundles is by reason only.
POOL_LESS = {"up", "codalab_scaler_build_info", "codalab_scaler_unroutable_bundles"}


@pytest.fixture(name="dashboard")
def dashboard_fixture() -> dict[str, Any]:
    return load_dashboard()


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_identity_and_schema(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "codalab-scaler"
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 38
    assert "__inputs" not in dashboard, "provisioned dashboards take no import inputs"
    assert dashboard.get("id") is None


def test_datasource_is_a_variable(dashboard: dict[str, Any]) -> None:
    ds = variables(dashboard)["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"


def test_pool_variable(dashboard: dict[str, Any]) -> None:
    pool = variables(dashboard)["pool"]
    assert pool["type"] == "query"
    assert pool["datasource"] == DATASOURCE
    assert pool["query"]["query"] == "label_values(codalab_scaler_staged_bundles, pool)"
    assert pool["definition"] == pool["query"]["query"]
    assert pool["multi"] is True
    assert pool["includeAll"] is True


def test_every_panel_and_target_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    all_panels = panels(dashboard)
    assert len(all_panels) >= 12
    for panel in all_panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])


def test_every_pool_labelled_selector_is_filtered_by_pool(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        for target in panel["targets"]:
            for selector in selectors(target["expr"]):
                name = selector.split("{", 1)[0]
                if name in POOL_LESS:
                    continue
                assert re.search(r'pool=~"\$pool', selector), (panel["title"], selector)


def test_expressions_use_only_known_variables(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        for target in panel["targets"]:
            substitute(target["expr"])  # fails on an unknown $variable


def test_panel_ids_unique_and_layout_fits(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]


def test_what_the_issue_asks_is_graphed(dashboard: dict[str, Any]) -> None:
    text = DASHBOARD.read_text()
    for metric in (
        "codalab_scaler_staged_bundles",
        "codalab_scaler_worker_jobs",
        "codalab_scaler_launches_total",
        "codalab_scaler_decisions_total",
        "codalab_scaler_filtered_bundles",
        "codalab_scaler_poll_duration_seconds_bucket",
        "codalab_scaler_poll_errors_total",
        "codalab_scaler_observation_age_seconds",
        "codalab_scaler_observation_ok",
        "codalab_scaler_retries_total",
        "codalab_scaler_failed_starts_total",
        "codalab_scaler_in_flight_launches",
        "codalab_scaler_pool_workers_limit",
        # The planner (issue 10): routing, workers by state, backoff, tokens, waits.
        "codalab_scaler_unroutable_bundles",
        "codalab_scaler_routed_bundles",
        "codalab_scaler_workers",
        "codalab_scaler_backoff_remaining_seconds",
        "codalab_scaler_launch_tokens",
        "codalab_scaler_stuck_workers_total",
        "codalab_scaler_cancelled_workers_total",
        "codalab_scaler_backoffs_total",
        "codalab_scaler_bundle_launch_wait_seconds_bucket",
        "codalab_scaler_bundle_staged_seconds_bucket",
    ):
        assert metric in text, metric


def test_every_selector_is_exported_by_the_scaler(dashboard: dict[str, Any]) -> None:
    """Metric names, label names and label values as the metrics reference has them,
    without a Prometheus (test_ops_prometheus.py queries a live one as well)."""
    exported = exported_series() | {"up": {"job": set(), "instance": set()}}
    for panel in panels(dashboard):
        for target in panel["targets"]:
            for selector in selectors(target["expr"]):
                problem = selector_problem(selector, exported)
                assert problem is None, (panel["title"], target["refId"], problem)


def test_workers_panel_stacks_the_states_and_not_idle(dashboard: dict[str, Any]) -> None:
    """Idle workers are serving workers: stacked with them they would count twice."""
    (panel,) = [p for p in panels(dashboard) if p["title"].startswith("Workers by state")]
    assert panel["repeat"] == "pool"
    assert panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    stacked, idle = panel["targets"]
    assert 'state=~"booting|serving|stuck"' in stacked["expr"]
    assert 'state="idle"' in idle["expr"]
    (override,) = [
        o for o in panel["fieldConfig"]["overrides"]
        if o["matcher"] == {"id": "byName", "options": idle["legendFormat"]}
    ]  # fmt: skip
    stacking = {p["id"]: p["value"] for p in override["properties"]}["custom.stacking"]
    assert stacking["mode"] == "none"


def test_provisioning_files() -> None:
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards.yaml").read_text())
    assert provider["apiVersion"] == 1
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"]
    datasources = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources.example.yaml").read_text()
    )
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
