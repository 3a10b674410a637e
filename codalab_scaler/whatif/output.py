"""The one part of ``whatif`` that writes files: ``summary.json``, ``timeline.csv`` and the plots.

Plots need matplotlib (the ``simulate`` extra: ``pip install
'codalab-scaler[simulate]'``), drawn with its Agg backend (no display).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codalab_scaler.whatif.report import Row, summary_json, timeline_csv

EXTRA_HINT = "plots need matplotlib: pip install 'codalab-scaler[simulate]' (or give --no-plots)"


def plots_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_outputs(
    out: Path, rows: Sequence[Row], workload: dict[str, Any], *, plots: bool = True
) -> list[Path]:
    """Write the results into ``out`` (made if missing); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.json", out / "timeline.csv"]
    written[0].write_text(summary_json(rows, workload))
    written[1].write_text(timeline_csv(rows))
    if plots:
        written += _plots(out, rows)
    return written


def _plots(out: Path, rows: Sequence[Row]) -> list[Path]:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    pools = sorted({s.pool for row in rows for s in row.result.samples})
    for pool in pools:
        fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
        for ax, what in zip(axes, ("staged", "booting", "serving"), strict=True):
            for row in rows:
                samples = [s for s in row.result.samples if s.pool == pool]
                ax.plot([s.at / 3600 for s in samples], [getattr(s, what) for s in samples],
                        label=row.name, linewidth=0.8)  # fmt: skip
            ax.set_ylabel(what)
        axes[0].set_title(f"pool {pool}: bundles staged, workers booting and serving")
        axes[0].legend(loc="upper right", fontsize="small")
        axes[-1].set_xlabel("hours")
        written.append(_save(fig, out / f"timeline-{pool}.png"))
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        waits = sorted(row.result.waits)
        n = len(waits)
        ax.step(waits, [(i + 1) / n for i in range(n)], where="post", label=row.name)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("queue wait, seconds (staged to started)")
    ax.set_ylabel("fraction of bundles")
    ax.set_title("CDF of queue wait")
    ax.legend(loc="lower right", fontsize="small")
    written.append(_save(fig, out / "wait_cdf.png"))
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        s = row.summary()
        ax.scatter(s["worker_hours"], s["mean_wait_seconds"])
        ax.annotate(row.name, (s["worker_hours"], s["mean_wait_seconds"]), fontsize="small",
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("cost: worker-hours")
    ax.set_ylabel("mean queue wait, seconds")
    ax.set_title("wait against cost")
    written.append(_save(fig, out / "wait_vs_cost.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
