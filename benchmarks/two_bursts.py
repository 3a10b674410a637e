"""Issue 10's two-burst workload, `fast` against `compat` at its fastest, over real HTTP.

Run on demand (about 4 minutes; the test ``tests/test_two_bursts.py`` runs
the `fast` half)::

    .venv/bin/python -m benchmarks.two_bursts [--out FILE]

The workload and what is measured are described in ``tests/two_bursts.py``:
the whole service against the CodaLab simulator, the ``local`` backend
starting real stand-in ``cl-worker`` processes of one cpu that exit after
20 s idle without checking out (the scaler checks them out on their
behalf, unless ``keep_exited_workers_listed``); 20 bundles of 10 s, then
10 more 60 s later.  `compat` at its fastest is the original's rules with no gap between
launches: one launch per pass, a pass per ``sleep_time`` (1 s here).
Writes ``benchmarks/results/two_bursts.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import write_report
from tests import two_bursts

RESULTS = Path(__file__).parent / "results" / "two_bursts.json"
# name: (pool settings, seconds CodaLab lists a worker after its last check-in)
RUNS: dict[str, tuple[Mapping[str, Any], float]] = {
    "fast": (two_bursts.FAST, 60.0),
    "compat_fastest": (two_bursts.COMPAT_FASTEST, 60.0),
    # Without the checkout of exited workers (the scaler before it, and the original):
    # CodaLab keeps dispatching the second burst's runs to the first burst's exited workers.
    "fast_exited_workers_kept_listed": (
        {**two_bursts.FAST, "keep_exited_workers_listed": True},
        60.0,
    ),
}


async def measure(names: Sequence[str]) -> list[dict[str, Any]]:
    results = []
    for name in names:
        pool, timeout = RUNS[name]
        with tempfile.TemporaryDirectory(prefix=f"two-bursts-{name}-") as directory:
            outcome = await two_bursts.run(Path(directory), pool, worker_timeout=timeout)
        results.append({"name": name, **outcome.as_dict()})
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", choices=sorted(RUNS), action="append")
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.only or list(RUNS)))
    write_report(
        "two_bursts",
        results,
        args.out,
        workload=(
            f"{two_bursts.FIRST} bundles of {two_bursts.RUN_SECONDS:g} s, then "
            f"{two_bursts.SECOND} more {two_bursts.GAP_SECONDS:g} s later; 1-cpu workers, "
            f"idle exit {two_bursts.IDLE_SECONDS} s, check-in every 1 s, listed 60 s after "
            f"the last check-in; sleep_time {two_bursts.SLEEP_TIME:g} s, "
            f"max_workers {two_bursts.MAX_WORKERS}"
        ),
        target="mean wait (staged -> started) <= 10 s over both bursts, <= 2 workers that "
        "never run a bundle (issue 10)",
        peers="CodaLab simulator over 127.0.0.1 HTTP, local backend, stand-in cl-worker",
    )


if __name__ == "__main__":
    main()
