"""The alerting rules are documented and tested: annotations, runbook sections, the
alerts table of docs/operations.md, and a firing and a quiet promtool case for every alert."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.ops_promql import (
    ROOT,
    RULE_TESTS,
    RUNBOOK,
    alert_names,
    exported_series,
    recorded_names,
    rule_exprs,
    rule_list,
    selector_problem,
    selectors,
)

ALERTS = [rule for rule in rule_list() if "alert" in rule]


def anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {
        anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_alert_is_annotated_and_has_a_runbook_section(rule: dict[str, Any]) -> None:
    notes = rule["annotations"]
    assert notes["summary"]
    assert notes["description"]
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    url = notes["runbook_url"]
    path, _, fragment = url.partition("#")
    assert path == "deploy/RUNBOOK.md"
    assert fragment == rule["alert"].lower()
    assert fragment in runbook_anchors(), f"RUNBOOK.md has no section for {rule['alert']}"


def test_runbook_section_explains_each_alert() -> None:
    text = RUNBOOK.read_text()
    for name in alert_names():
        start = text.index(f"## {name}\n")
        end = text.find("\n## ", start + 1)
        body = text[start : end if end != -1 else None]
        for part in ("Meaning", "Impact", "Diagnosis", "Remedy"):
            assert f"**{part}.**" in body, f"{name}: no {part}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert set(alert_names()) <= fires
    assert set(alert_names()) <= quiet


def test_operations_alerts_table_lists_every_alert() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    start = operations.index("## Alerts")
    section = operations[start : operations.find("\n## ", start + 1)]
    listed = set(re.findall(r"^\| \[?`(\w+)`", section, flags=re.MULTILINE))
    assert listed == set(alert_names())


def test_every_rule_selector_is_exported_by_the_scaler() -> None:
    """Metric names, label names and label values as the metrics reference has them,
    without a Prometheus (test_ops_prometheus.py queries a live one as well)."""
    exported = exported_series() | {"up": {"job": set(), "instance": set()}}
    exported |= {name: {} for name in recorded_names()}
    for expr in rule_exprs():
        for selector in selectors(expr.promql):
            problem = selector_problem(selector, exported)
            assert problem is None, (expr.origin, problem)


def test_unroutable_alert_covers_every_reason_once() -> None:
    """Each reason the planner exports has exactly one severity."""
    exported = exported_series()["codalab_scaler_unroutable_bundles"]["reason"]
    covered: list[str] = []
    for rule in ALERTS:
        if rule["alert"] == "CodalabScalerBundlesUnroutable":
            (matcher,) = re.findall(r'reason=~?"([^"]*)"', rule["expr"])
            covered.extend(matcher.split("|"))
    assert sorted(covered) == sorted(exported)
