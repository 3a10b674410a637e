"""Helpers for the operations-pack tests: the PromQL in the dashboard and the rules.

``selectors`` pulls the vector selectors out of an expression so a test can
ask a real Prometheus whether each one matches a series: a typo'd metric
name or a label value the scaler never exports matches nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "grafana" / "codalab-scaler.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
RUNBOOK = ROOT / "deploy" / "RUNBOOK.md"
JOB = "codalab-scaler"

# What Grafana would put in place of the dashboard's variables when the
# test's Prometheus scrapes the demo (pools "small" and "big", scraped every second).
GRAFANA_VARIABLES = {
    "${datasource}": "prometheus",
    "$__rate_interval": "15s",
    "$__interval": "5s",
    "$pool": "small",
}

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
# Grouping and matching clauses hold label names, not metric names.
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?")


@dataclass(frozen=True)
class Expr:
    origin: str  # where it comes from, for assertion messages
    promql: str
    kind: str  # "dashboard", "record", "alert"


def selectors(promql: str) -> list[str]:
    """Every vector selector (``name{matchers}``) in ``promql``, in order of appearance.

    Label matchers are taken whole (braces hold only quoted strings here), so
    label names inside them are never mistaken for metrics; identifiers
    followed by ``(`` are functions or aggregations; keywords and the label
    lists of ``by``/``on``/... are skipped.
    """
    text = _RANGE.sub(" ", _CLAUSE.sub(" ", promql))
    found: list[str] = []
    for match in _IDENT.finditer(text):
        name, braces, call = match.groups()
        if call and not braces:
            continue  # sum(, rate(, histogram_quantile(...
        if name.lower() in _KEYWORDS:
            continue
        found.append(name + (braces or ""))
    return found


def metric_name(selector: str) -> str:
    return selector.split("{", 1)[0]


def substitute(promql: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        promql = promql.replace(var, value)
    assert "$" not in promql, f"unknown Grafana variable left in {promql!r}"
    return promql


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, including panels nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_exprs() -> list[Expr]:
    exprs = []
    for panel in panels(load_dashboard()):
        for target in panel["targets"]:
            origin = f"dashboard panel {panel['title']!r} target {target['refId']}"
            exprs.append(Expr(origin, target["expr"], "dashboard"))
    return exprs


def load_rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return data


def rule_list() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def rule_exprs() -> list[Expr]:
    exprs = []
    for rule in rule_list():
        if "record" in rule:
            exprs.append(Expr(f"recording rule {rule['record']}", rule["expr"], "record"))
        else:
            exprs.append(Expr(f"alert {rule['alert']}", rule["expr"], "alert"))
    return exprs


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rule_list() if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rule_list() if "record" in rule}


def rule_test_series() -> list[tuple[str, dict[str, str]]]:
    """(metric name, labels) of every input series of the promtool unit tests."""
    out = []
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for series in case.get("input_series", []):
                text = series["series"]
                name = metric_name(text)
                labels = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', text[len(name) :]))
                out.append((name, labels))
    return out


# Labels every scraped series carries, or whose values are the installation's own.
_FREE_LABELS = {"job", "instance", "pool"}
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_WORD = re.compile(r"^\w+$")


def exported_series() -> dict[str, dict[str, set[str]]]:
    """Series name -> label name -> values, as the scaler exports them (no service).

    From ``reference_registry()``, the registry the metrics reference is
    generated from: every family with samples, every label with its values
    (the pool is called ``<pool>`` there).
    """
    from codalab_scaler.service.metrics import reference_registry

    out: dict[str, dict[str, set[str]]] = {}
    for family in reference_registry().collect():
        for sample in family.samples:
            labels = out.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return out


def selector_problem(selector: str, exported: dict[str, dict[str, set[str]]]) -> str | None:
    """Why ``selector`` cannot match what the scaler exports, or None when it can.

    Checks the metric name, every matched label name, and the values of
    ``=`` and ``=~`` matchers made of plain alternatives (``a|b``) on the
    scaler's own labels (reason, state, outcome, bound, source...).
    """
    name = metric_name(selector)
    labels = exported.get(name)
    if labels is None:
        return f"{name} is not exported"
    for key, op, value in _MATCHER.findall(selector[len(name) :]):
        if key in _FREE_LABELS:
            continue
        if key not in labels:
            return f"{name} has no label {key!r} (it has {sorted(labels)})"
        if op not in ("=", "=~"):
            continue
        wanted = value.split("|") if op == "=~" else [value]
        for alternative in wanted:
            if _WORD.match(alternative) and alternative not in labels[key]:
                return f"{name}{{{key}={alternative!r}}} is never exported: {sorted(labels[key])}"
    return None
