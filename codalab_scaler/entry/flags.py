"""The command line's surface, generated from the settings models.

Every setting with a flag gets ``--<name with - for _>``; its type or action
comes from the annotation and its help from the description and default.
Service and pool settings are global flags (before the subcommand, as in
``cl-worker-manager``); a backend's settings follow its subcommand.  Every
flag defaults to "not given" (``SUPPRESS``) so that the environment and the
TOML file can fill what the command line leaves out.

What differs from that rule is written down here, in the few tables below,
and in each backend kind's ``also_accepts`` (the registry).
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from codalab_scaler import __version__
from codalab_scaler.config.loader import load_settings, read_config_file
from codalab_scaler.config.settings import PoolSettings, Settings
from codalab_scaler.core.errors import EXIT_CONFIG, ConfigError
from codalab_scaler.sources.backends.registry import BACKEND_KINDS, backend_kind, kind_names

__all__ = [
    "CLI_POOL",
    "build_parser",
    "flag_name",
    "print_config_errors",
    "settings_from_args",
    "settings_values",
    "split_flags",
    "split_search",
]

S = argparse.SUPPRESS
CLI_POOL = "default"

# Settings with no flag: credentials stay off the command line (every local user can
# read it), pools and backend tables are TOML's, kind is the subcommand.
NO_FLAG = frozenset({"username", "password", "pools", "backend", "kind"})
# Pool settings accepted after every backend subcommand too (the original had
# --exit-after-num-failed after slurm-batch only).
AFTER_ANY_BACKEND = ("exit_after_num_failed",)
# What the original's help said where the description is not the whole story.
HELP_DEFAULTS = {"staleness_seconds": "3 x --sleep-time"}
# Flags of the demo subcommand only: the synthetic workload, not settings.
DEMO_ONLY = frozenset(
    {"duration", "bundles", "bundles_per_minute", "max_run_seconds", "seed", "no_tui"}
)
# Arguments of the top subcommand only: it reads a running scaler, it has no settings.
TOP_ONLY = frozenset({"url", "interval"})
# Flags of the simulate subcommand only: the workload, the variants and the output.
SIMULATE_ONLY = frozenset({"workload", "trace_format", "days", "seed", "sim_configs", "policies",
                           "sweep", "out", "no_plots"})  # fmt: skip

SIMULATE_EPILOG = """\
a configuration file may add a [simulate] table (the service ignores it):
  quota            per-user parallel runs, as CodaLab's quota (unset: none)
  drain_seconds    replay this long after the last submission (21600)
  sample_seconds   timeline resolution (60)
  [simulate.pools.NAME]
  boot_seconds     median delay from provisioning to registration (90)
  boot_sigma       its lognormal spread; 0: exact (0.3)
  capacity         jobs the backend runs at once; more wait queued (unset: no limit)
  refuse_rate      share of launches refused (0)
  fail_rate        share of starts that fail, never registering (0)
  stuck_rate       share of workers that never register (0)
  stuck_seconds    when a stuck job finally ends (3600)

reported per configuration: queue wait from staged to started (mean, p50, p95,
max; unstarted bundles count up to the end), worker-hours from provisioning to
exit, idle worker-hours (registered, running nothing), launches, workers that
never ran a bundle, unroutable bundles (no pool for the tag, or too large).

--out DIR writes summary.json, timeline.csv, timeline-POOL.png, wait_cdf.png,
wait_vs_cost.png; exit status 2 on a bad setting, file or trace line.
"""

GLOBAL_KEYS = frozenset(Settings.model_fields)
TOOLS = ("demo", "top", "simulate")  # subcommands that are not a backend
SUBCOMMANDS = frozenset({*kind_names(), *TOOLS})


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _plain(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> ``X``."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _plain(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _plain(args[0])
    return annotation


def flag_kwargs(name: str, info: FieldInfo) -> dict[str, Any] | None:
    """``add_argument`` keywords for the setting ``name``; ``None`` if it has no flag."""
    if name in NO_FLAG:
        return None
    annotation = _plain(info.annotation)
    kwargs: dict[str, Any] = {"default": S, "help": _help(name, info)}
    if annotation is bool:
        kwargs["action"] = "store_true"
    elif typing.get_origin(annotation) is Literal:
        kwargs["choices"] = list(typing.get_args(annotation))
    elif typing.get_origin(annotation) is list:
        kwargs.update(nargs="*", action="extend")  # see split_search
    elif annotation in (int, float, Path):
        kwargs["type"] = annotation
    elif annotation not in (str, SecretStr):  # a secret flag exists for compatibility only
        return None
    return kwargs


def _help(name: str, info: FieldInfo) -> str:
    text = info.description or ""
    if name in HELP_DEFAULTS:
        text += f" (default: {HELP_DEFAULTS[name]})"
    elif info.is_required():
        text += " (required)"
    elif info.default_factory is None and info.default not in (None, False, ""):
        text += f" (default: {info.default})"
    return text.replace("%", "%%")


def _add_fields(
    parser: argparse.ArgumentParser, model: type[BaseModel], names: Sequence[str]
) -> None:
    for name in names:
        kwargs = flag_kwargs(name, model.model_fields[name])
        if kwargs is not None:
            parser.add_argument(flag_name(name), **kwargs)


def _field_model(name: str) -> type[BaseModel]:
    return Settings if name in Settings.model_fields else PoolSettings


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="codalab-scaler",
        description="Keeps a CodaLab Worksheets installation supplied with workers.",
    )
    parser.add_argument("--version", action="version", version=f"codalab-scaler {__version__}")
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML file declaring settings and pools"
    )
    _add_fields(parser, Settings, list(Settings.model_fields))
    _add_fields(parser, PoolSettings, list(PoolSettings.model_fields))
    sub = parser.add_subparsers(title="backends", dest="backend", metavar="BACKEND")
    for kind in BACKEND_KINDS:
        backend = sub.add_parser(kind.name, help=kind.help)
        fields = [name for name in kind.settings.model_fields if name not in GLOBAL_KEYS]
        _add_fields(backend, kind.settings, fields)
        for name in (*kind.also_accepts, *AFTER_ANY_BACKEND):
            _add_fields(backend, _field_model(name), [name])
    _demo_flags(sub.add_parser("demo", help="Run against an embedded CodaLab simulator"))
    _simulate_flags(sub.add_parser(
        "simulate",
        help="Replay a workload through the planner on a virtual clock and compare settings",
        description=textwrap.fill(
            "Replay a workload through the real planner on a virtual clock, with models of "
            "CodaLab's bundle manager, of workers and of backends, and compare configurations "
            "(files, policies, a sweep of one setting). Global pool and service flags before "
            "simulate apply to every configuration. See docs/simulate.md.",
            width=79,
        ),
        epilog=SIMULATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ))  # fmt: skip
    _top_flags(sub.add_parser("top", help="Live terminal view of a running scaler's /status"))
    return parser


MIN_TOP_INTERVAL = 0.1  # seconds; less would spin the refresh (each poll has 80 % of it)


def _refresh_seconds(text: str) -> float:
    """``top``'s ``--interval``: a finite number of seconds, at least ``MIN_TOP_INTERVAL``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= MIN_TOP_INTERVAL):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds from {MIN_TOP_INTERVAL:g} up"
        )
    return value


def _top_flags(top: argparse.ArgumentParser) -> None:
    top.add_argument(
        "url",
        nargs="?",
        default="http://127.0.0.1:9740",
        help="The scaler's HTTP address, or its /status URL (default: http://127.0.0.1:9740)",
    )
    top.add_argument(
        "--interval",
        type=_refresh_seconds,
        default=1.0,
        help="Seconds between refreshes; each request times out before the next (default: 1)",
    )


def _demo_flags(demo: argparse.ArgumentParser) -> None:
    add = demo.add_argument
    add(
        "--duration",
        type=float,
        default=None,
        help="Stop after this many seconds (default: run until Ctrl-C)",
    )
    add("--bundles", type=int, default=40, help="Bundles to stage (default: 40)")
    add(
        "--bundles-per-minute",
        type=float,
        default=30.0,
        help="Rate of the synthetic stream (default: 30)",
    )
    add(
        "--max-run-seconds",
        type=float,
        default=10.0,
        help="Each bundle runs 1 s to this long (default: 10)",
    )
    add("--seed", type=int, default=1, help="Random seed of the stream")  # fmt: skip
    add(
        "--no-tui",
        action="store_true",
        help="Log to standard output instead of showing the live view "
        "(also when standard output is not a terminal)",
    )


def _simulate_flags(simulate: argparse.ArgumentParser) -> None:
    add = simulate.add_argument
    add(
        "--workload",
        default="synthetic",
        metavar="synthetic|FILE",
        help="synthetic (seeded: a daily cycle times a bursty two-state arrival process, "
        "sweeps, lognormal run times, CPU and GPU shapes), or a trace file: CSV "
        "(submit_seconds,cpus,gpus,memory,run_seconds,tag,owner) or SWF (Parallel Workloads "
        "Archive), told apart by the suffix .csv or .swf (default: synthetic)",
    )
    add(
        "--format",
        dest="trace_format",
        choices=["csv", "swf"],
        default=None,
        help="Format of the trace file when its suffix does not say",
    )
    add("--days", type=float, default=7.0, help="Days of synthetic workload (default: 7)")
    add(
        "--seed",
        type=int,
        default=1,
        help="Seed of the synthetic workload and of the models' random draws (default: 1)",
    )
    add(
        "--config",
        dest="sim_configs",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="A configuration to compare: a TOML file as the service reads it, with an "
        "optional [simulate] table of model assumptions; repeat to compare several "
        "(default: two pools, cpu and gpu, see docs/simulate.md)",
    )
    add(
        "--policy",
        dest="policies",
        default=None,
        metavar="P[,P...]",
        help="Replay each configuration under each of these policies, e.g. compat,fast "
        "(default: the policies the configuration sets)",
    )
    add(
        "--sweep",
        default=None,
        metavar="SETTING=V1,V2,...",
        help="Replay each configuration with each value of one setting: a pool setting "
        "(every pool), pools.NAME.SETTING, a service setting, or a [simulate] one",
    )
    add(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="Also write summary.json, timeline.csv and PNG plots into DIR (plots need the "
        "simulate extra: matplotlib)",
    )
    add("--no-plots", action="store_true", help="With --out, write no plots")  # fmt: skip


def split_search(argv: list[str]) -> list[str]:
    """``--search a b local`` -> ``--search=a --search=b local``.

    ``--search`` takes any number of words, so argparse would swallow the
    backend subcommand that follows it (the original has the same trap).
    A word that names a subcommand ends the list; write ``--search=local``
    to search for that word itself.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg != "--search":
            out.append(arg)
            continue
        words = []
        while i < len(argv) and not argv[i].startswith("-") and argv[i] not in SUBCOMMANDS:
            words.append(argv[i])
            i += 1
        # A bare --search (no words) means the default, []: nothing to pass on.
        out += [f"--search={word}" for word in words]
    return out


def split_flags(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The flags actually given, sorted into (service, pool, backend) settings."""
    skip = {"config", "backend", *DEMO_ONLY, *SIMULATE_ONLY, *TOP_ONLY}
    given = {k: v for k, v in vars(args).items() if k not in skip}
    backend_keys: set[str] = set()
    if args.backend in kind_names():
        backend_keys = set(backend_kind(args.backend).settings.model_fields) - GLOBAL_KEYS
    service = {k: v for k, v in given.items() if k in GLOBAL_KEYS}
    pool = {k: v for k, v in given.items() if k not in GLOBAL_KEYS | backend_keys}
    backend = {k: v for k, v in given.items() if k in backend_keys}
    return service, pool, backend


def settings_values(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """Parsed flags as the nested settings table (only flags actually given), and ``--config``."""
    values, pool, backend = split_flags(args)
    if args.backend in kind_names():
        values["pools"] = {CLI_POOL: {**pool, "backend": {"kind": args.backend, **backend}}}
    elif pool and args.backend is None:
        flags = ", ".join(flag_name(k) for k in sorted(pool))
        raise ConfigError([f"{flags}: pool flags need a backend subcommand (e.g. local)"])
    return values, args.config


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """The validated settings: parsed flags over ``environ`` over the ``--config`` file."""
    values, config = settings_values(args)
    toml = read_config_file(config) if config is not None else None
    return load_settings(values, environ, toml)


def print_config_errors(exc: ConfigError) -> int:
    for line in exc.lines:
        print(f"codalab-scaler: config error: {line}", file=sys.stderr)
    return EXIT_CONFIG
