"""The planner's alerts become active in a real Prometheus scraping a real scaler in trouble.

``codalab-scaler demo`` runs two ``fast`` pools (``small`` and ``big``) whose
worker executable only sleeps: their workers start but never register with CodaLab, so each is stuck
after ``provision_timeout_seconds`` (1 s) and cancelled
(``cancel_stuck_workers``), which puts each pool in backoff, during which their
staged bundles are unroutable (``pools_backing_off``). A real Prometheus
evaluates ``deploy/prometheus/rules.yml`` on the scrapes: the three alerts
must go pending (their ``for:`` is minutes long) with the labels that the
promtool unit tests assume, and the alerts of reasons this run cannot
produce must not.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.ops_live import LivePrometheus, needs_prometheus, scaler_and_prometheus, wait_for
from tests.ops_promql import rule_list

POOL = "small"  # the demo's pools are small and big; both get into this trouble


def sleeper(tmp: Path) -> Path:
    """A ``cl-worker`` that never checks in: it sleeps until cancelled (SIGTERM)."""
    path = tmp / "never-registers"
    path.write_text("#!/bin/sh\nexec sleep 120\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def active(prom: LivePrometheus) -> dict[tuple[str, str], dict[str, Any]]:
    """Pending or firing alerts by (alert name, pool or reason)."""
    out = {}
    for alert in prom.api("/api/v1/alerts")["alerts"]:
        labels = alert["labels"]
        out[(labels["alertname"], labels.get("pool") or labels.get("reason", ""))] = alert
    return out


EXPECTED = {
    ("CodalabScalerWorkersStuck", POOL): "warning",
    ("CodalabScalerPoolBackingOff", POOL): "warning",
    ("CodalabScalerBundlesUnroutable", "pools_backing_off"): "critical",
}


@needs_prometheus
def test_stuck_workers_backoff_and_stranded_bundles_raise_their_alerts(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> None:
    with scaler_and_prometheus(
        tmp_path,
        unused_tcp_port_factory(),
        unused_tcp_port_factory(),
        scaler_flags=[
            "--policy", "fast",
            "--worker-executable", str(sleeper(tmp_path)),
            "--provision-timeout-seconds", "1",
            "--cancel-stuck-workers",
            "--backoff-initial-seconds", "2",
            "--backoff-max-seconds", "4",
        ],
        demo_flags=["--duration", "120", "--bundles-per-minute", "120", "--seed", "5"],
    ) as prom:  # fmt: skip
        # Each stuck worker is cancelled in the pass that finds it, so the stuck gauge
        # shows it for about one scrape; the rule's counter branch must hold on its own.
        (stuck_rule,) = [r for r in rule_list() if r.get("alert") == "CodalabScalerWorkersStuck"]
        _gauge, counter = stuck_rule["expr"].split(" or ")
        wait_for(
            "the planner's alerts to become active and three stuck workers counted",
            lambda: (
                set(EXPECTED) <= set(active(prom))
                and POOL in {series["metric"]["pool"] for series in prom.query(counter)}
            ),
            90,
            lambda: f"active: {sorted(active(prom))}\n{prom.logs()}",
        )
        alerts = active(prom)
        counted = prom.query(counter)
        scaler_log = prom.scaler_log.read_text()

    for key, severity in EXPECTED.items():
        alert = alerts[key]
        assert alert["state"] in {"pending", "firing"}, alert
        assert alert["labels"]["severity"] == severity, alert
        assert alert["labels"]["job"] == "codalab-scaler", alert
        assert alert["annotations"]["runbook_url"].startswith("deploy/RUNBOOK.md#"), alert
    pools = {series["metric"]["pool"] for series in counted}
    assert POOL in pools, counter
    assert pools <= {"small", "big"}, counter  # the demo's two pools, both in this trouble
    assert '"event": "worker.cancelled"' in scaler_log
    # Every bundle of the demo fits the pool and has no tag.
    for reason in ("too_large", "no_pool_for_tag"):
        assert ("CodalabScalerBundlesUnroutable", reason) not in alerts
