"""One pool's pass over 10,000 staged bundles through the command line: ``codalab-scaler --once``.

Run on demand (never in CI)::

    .venv/bin/python -m benchmarks.bench_once [--bundles 10000] [--rounds 3]

The CodaLab simulator (in this process, on 127.0.0.1, a free port) holds
the staged bundles, mixed as in ``bench_poll`` (1-4 cpus, 1-8 GiB); the
scaler is the ``codalab-scaler`` executable with one ``local`` pool of the
defaults (1 cpu, 2 GiB: three in four bundles are too large for it) and
``--dry-run`` (it decides and describes its launch, starts nothing), run
from the source tree ``--code`` (default: this one; the base commit's tree
gives the "before").  Its
CPU time (user + system, the process's own ``getrusage``) is measured with no staged bundle
and with ``--bundles``; the difference is what the bundles cost: fetching
and parsing the pages, the prefilter, the planner pass, the logs.  Then one
run under cProfile (``--profile TOP``) shows where that goes, by own time.
The simulator's own work is in this process, not counted.  Writes
``benchmarks/results/once.json`` (``--label`` names the run; the other
labels already in the file are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.code_tree import describe
from benchmarks.report import write_report
from codalab_scaler.simulator import CodaLabSimulator

USER, PASSWORD = "codalab", "once-password"
RESULTS = Path(__file__).parent / "results" / "once.json"
# The command line from the source tree argv[1] (this tree's editable install set
# aside), argv[3:] its arguments; under cProfile, written to argv[2], unless that is "-".
# Its CPU seconds (user + system, the whole process) go to stderr as the last line.
COMMAND = """
import cProfile, resource, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, sys.argv[1])
try:
    from codalab_scaler.entry.cli import main
    if sys.argv[2] == "-":
        sys.exit(main(sys.argv[3:]))
    profiler = cProfile.Profile()
    try:
        sys.exit(profiler.runcall(main, sys.argv[3:]))
    finally:
        profiler.dump_stats(sys.argv[2])
finally:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(usage.ru_utime + usage.ru_stime, file=sys.stderr)
"""


def _args(server: str) -> list[str]:
    return ["--server", server, "--once", "--dry-run", "--min-workers", "0",
            "--http-port", "0", "--log-format", "json", "local"]  # fmt: skip


async def _run(argv: list[str]) -> tuple[float, int, int]:
    """Run ``argv``; its CPU seconds (user + system), exit status and bytes of output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODALAB_", "XDG_"))}
    env.update(CODALAB_USERNAME=USER, CODALAB_PASSWORD=PASSWORD, PYTHONDONTWRITEBYTECODE="1")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    output, errors = await proc.communicate()
    lines = errors.decode().splitlines()
    if not lines:
        raise RuntimeError(f"no CPU time reported (exit {proc.returncode}): {output[-2000:]!r}")
    return float(lines[-1]), proc.returncode or 0, len(output)


async def measure(code: Path, bundles: int, rounds: int, top: int) -> dict[str, Any]:
    sim = CodaLabSimulator(users={USER: PASSWORD})
    await sim.start()
    scaler = [sys.executable, "-c", COMMAND, str(code)]
    try:
        empty = [await _run([*scaler, "-", *_args(sim.url)]) for _ in range(rounds)]
        for i in range(bundles):
            sim.add_bundle(USER, cpus=1 + i % 4, memory=f"{1 + i % 8}g")
        full = [await _run([*scaler, "-", *_args(sim.url)]) for _ in range(rounds)]
        profile: list[str] = []
        if top:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "once.prof"
                await _run([*scaler, str(out), *_args(sim.url)])
                profile = _top(out, top)
    finally:
        await sim.stop()
    codes = {code for _, code, _ in empty + full}
    if codes != {0}:
        raise RuntimeError(f"codalab-scaler --once exited {sorted(codes)}")
    cpu_empty = statistics.median(cpu for cpu, _, _ in empty)
    cpu_full = statistics.median(cpu for cpu, _, _ in full)
    return {
        "bundles": bundles,
        "cpu_seconds_no_bundles": round(cpu_empty, 3),
        f"cpu_seconds_{bundles}_bundles": round(cpu_full, 3),
        "cpu_seconds_for_the_bundles": round(cpu_full - cpu_empty, 3),
        "log_bytes_no_bundles": statistics.median(n for _, _, n in empty),
        f"log_bytes_{bundles}_bundles": statistics.median(n for _, _, n in full),
        "rounds": rounds,
        "profile_with_bundles": profile,
    }


def _top(path: Path, top: int) -> list[str]:
    stats = pstats.Stats(str(path), stream=io.StringIO())
    rows = []
    for (file, line, name), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}({name})" if line else name
        rows.append((own, cumulative, calls, where))
    rows.sort(reverse=True)
    return [f"{own:.4f}s own / {cum:.4f}s cum / {calls} calls  {where}"
            for own, cum, calls, where in rows[:top]]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, default=15, metavar="TOP")
    parser.add_argument(
        "--code",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="the source tree whose command line to run (default: this one)",
    )
    parser.add_argument("--label", default="after")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    measured = asyncio.run(measure(args.code, args.bundles, args.rounds, args.profile))
    result = {"label": args.label, "note": args.note, "code": describe(args.code), **measured}
    kept = []
    if args.out.exists():
        kept = [r for r in json.loads(args.out.read_text())["results"] if r["label"] != args.label]
    write_report("once", [*kept, result], args.out,
                 measured_on="2 shared cores; CPU of the codalab-scaler process only")  # fmt: skip


if __name__ == "__main__":
    main()
