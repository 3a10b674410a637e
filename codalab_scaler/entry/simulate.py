"""``codalab-scaler simulate``: replay a workload through the real planner and compare settings.

A thin entry point over ``codalab_scaler.whatif``: read the workload and the
configuration files, build the variants, replay each, print the table and,
with ``--out``, write the files.  Bad input (a setting, a missing file, a
malformed trace line) exits 2 with one line naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from codalab_scaler.config.loader import read_config_file
from codalab_scaler.core.errors import EXIT_CONFIG, ConfigError
from codalab_scaler.entry.flags import print_config_errors, split_flags
from codalab_scaler.whatif.configs import (
    Source,
    apply_setting,
    default_source,
    parse_sweep,
    variants,
)
from codalab_scaler.whatif.engine import replay
from codalab_scaler.whatif.output import EXTRA_HINT, plots_available, write_outputs
from codalab_scaler.whatif.report import Row, table
from codalab_scaler.whatif.workload import Job, Synthetic, TraceError, read_csv, read_swf, synthetic

POLICIES = ("compat", "fast")


def load_workload(args: argparse.Namespace) -> tuple[tuple[Job, ...], dict[str, Any]]:
    """The jobs and how they were made (for ``summary.json``)."""
    if args.workload == "synthetic":
        if not args.days > 0:
            raise ConfigError([f"--days: must be more than 0, not {args.days:g}"])
        jobs = synthetic(Synthetic(days=args.days), args.seed)
        return jobs, {"kind": "synthetic", "days": args.days, "seed": args.seed, "jobs": len(jobs)}
    path = Path(args.workload)
    kind = args.trace_format or path.suffix.lower().lstrip(".")
    if kind not in ("csv", "swf"):
        raise ConfigError([f"--workload: {path}: say --format csv or swf (suffix {kind!r})"])
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError([f"--workload: cannot read {path} ({exc.strerror})"]) from None
    jobs = read_csv(text, str(path)) if kind == "csv" else read_swf(text, str(path))
    return jobs, {"kind": kind, "file": path.name, "seed": args.seed, "jobs": len(jobs)}


def _sources(args: argparse.Namespace) -> list[Source]:
    paths: list[Path] = ([args.config] if args.config else []) + list(args.sim_configs)
    sources = [Source(p.stem, read_config_file(p)) for p in paths] or [default_source()]
    service, pool, _backend = split_flags(args)  # global flags apply to every configuration
    for key, value in {**service, **pool}.items():
        sources = [Source(s.label, apply_setting(s.table, key, value)) for s in sources]
    labels = [s.label for s in sources]
    if len(set(labels)) < len(labels):  # a.toml and x/a.toml: name them by position too
        sources = [Source(f"{i + 1}:{s.label}", s.table) for i, s in enumerate(sources)]
    return sources


def _policies(text: str | None) -> list[str]:
    if text is None:
        return []
    names = [p.strip() for p in text.split(",")]
    bad = [p for p in names if p not in POLICIES]
    if bad:
        raise ConfigError([f"--policy: {bad[0] or '(empty)'}: not one of compat, fast"])
    return names


def run_simulate(args: argparse.Namespace) -> int:
    if args.out is not None and not args.no_plots and not plots_available():
        return print_config_errors(ConfigError([f"--out: {EXTRA_HINT}"]))
    try:
        sweep = parse_sweep(args.sweep) if args.sweep is not None else None
        found = variants(_sources(args), _policies(args.policies), sweep, args.seed)
        jobs, workload = load_workload(args)
    except ConfigError as exc:
        return print_config_errors(exc)
    except TraceError as exc:
        print(f"codalab-scaler: workload error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    rows = [Row(v.name, replay(v.scenario, jobs), v.sweep_value) for v in found]
    sys.stdout.write(f"{workload['jobs']} bundles ({workload['kind']}), {len(rows)} "
                     f"configuration(s)\n\n")  # fmt: skip
    sys.stdout.write(table(rows))
    if args.out is not None:
        try:
            written = write_outputs(args.out, rows, workload, plots=not args.no_plots)
        except OSError as exc:
            print(f"codalab-scaler: --out: cannot write {args.out} ({exc.strerror})",
                  file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
        sys.stdout.write("\n" + "".join(f"wrote {p}\n" for p in written))
    return 0
