"""What a replay measured, per configuration: waits, cost, waste; as a table, JSON and CSV text.

- queue wait: from a bundle staged (submitted) to started on a worker; a
  bundle still staged when the replay ends counts up to the end; bundles no
  pool can ever take (``unroutable``) are left out;
- ``worker_hours``: every worker job from when it started provisioning
  (not while queued in its backend) to when it ended, or the end;
- ``idle_worker_hours``: of those, registered with nothing running;
- ``launches``: jobs the backend accepted; ``never_ran``: of those, workers
  that ended (or the replay did) without running a bundle;
- ``unroutable``: bundles the planner reported ``no_pool_for_tag`` or
  ``too_large``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from codalab_scaler.whatif.scenario import Result

COLUMNS = (
    ("name", "configuration", "{}"),
    ("mean_wait_seconds", "mean wait s", "{:.1f}"),
    ("p50_wait_seconds", "p50", "{:.1f}"),
    ("p95_wait_seconds", "p95", "{:.1f}"),
    ("max_wait_seconds", "max", "{:.1f}"),
    ("worker_hours", "worker h", "{:.1f}"),
    ("idle_worker_hours", "idle h", "{:.1f}"),
    ("launches", "launches", "{}"),
    ("never_ran", "never ran", "{}"),
    ("unroutable", "unroutable", "{}"),
)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    result: Result
    sweep_value: Any = None

    def summary(self) -> dict[str, Any]:
        r = self.result
        ordered = sorted(r.waits)
        mean = sum(ordered) / len(ordered) if ordered else 0.0
        return {
            "name": self.name,
            "sweep_value": self.sweep_value,
            "bundles": len(ordered) + r.unroutable,
            "started": r.started,
            "unstarted": r.unstarted,
            "mean_wait_seconds": round(mean, 3),
            "p50_wait_seconds": round(percentile(ordered, 50), 3),
            "p95_wait_seconds": round(percentile(ordered, 95), 3),
            "max_wait_seconds": round(ordered[-1] if ordered else 0.0, 3),
            "worker_hours": round(r.worker_seconds / 3600, 3),
            "idle_worker_hours": round(r.idle_worker_seconds / 3600, 3),
            "launches": r.launches,
            "refused_launches": r.refused,
            "failed_starts": r.failed_starts,
            "stuck_workers": r.stuck,
            "cancelled_workers": r.cancelled,
            "never_ran": r.never_ran,
            "unroutable": r.unroutable,
            "simulated_seconds": round(r.end, 3),
            "planner_passes": r.passes,
        }


def summary_json(rows: Sequence[Row], workload: dict[str, Any]) -> str:
    """The summary as JSON text: the same inputs give the same bytes."""
    doc = {"workload": workload, "configurations": [row.summary() for row in rows]}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def table(rows: Sequence[Row]) -> str:
    """The terminal table: one configuration a line."""
    cells = [[head for _key, head, _fmt in COLUMNS]]
    for row in rows:
        s = row.summary()
        cells.append([fmt.format(s[key]) for key, _head, fmt in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for line in cells:
        first = line[0].ljust(widths[0])
        rest = [cell.rjust(widths[i + 1]) for i, cell in enumerate(line[1:])]
        lines.append("  ".join([first, *rest]).rstrip())
    return "\n".join(lines) + "\n"


TIMELINE_COLUMNS = ("configuration", "seconds", "pool", "staged", "booting", "serving", "idle",
                    "stuck")  # fmt: skip


def timeline_csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TIMELINE_COLUMNS)
    for row in rows:
        for s in row.result.samples:
            writer.writerow([row.name, f"{s.at:.10g}", s.pool, s.staged, s.booting, s.serving,
                             s.idle, s.stuck])  # fmt: skip
    return out.getvalue()
