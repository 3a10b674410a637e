"""The ``codalab-scaler`` command: the original's flags, a backend subcommand, or ``demo``.

A thin entry point: parse flags, validate settings (exit 2 naming each bad
field), configure logging, hand over to the service.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import structlog

from codalab_scaler import __version__
from codalab_scaler.app import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, serve
from codalab_scaler.errors import ConfigError, LoginRefused
from codalab_scaler.logs import configure_logging
from codalab_scaler.settings import LocalBackendSettings, PoolSettings, Settings, load_settings

S = argparse.SUPPRESS

# Flags that set the service as a whole; every other global flag belongs to the CLI's pool.
GLOBAL_KEYS = frozenset(
    {
        "server", "verbose", "sleep_time", "once", "dry_run", "password_file", "http_host",
        "http_port", "log_format", "staleness_seconds", "in_flight_timeout_seconds",
        "temp_session", "restart_after_seconds", "request_timeout_seconds",
    }
)  # fmt: skip
BACKEND_KEYS = frozenset({"cpus", "gpus", "memory_mb", "state_dir"})
DEMO_ONLY = frozenset({"duration", "bundles", "bundles_per_minute", "max_run_seconds", "seed"})
CLI_POOL = "default"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def _default(model: type[Any], field: str) -> str:
    info = model.model_fields[field]
    if info.default_factory is not None:
        return ""
    return f" (default: {info.default})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="codalab-scaler",
        description="Keeps a CodaLab Worksheets installation supplied with workers.",
    )
    add = parser.add_argument

    def g(field: str) -> str:
        return _default(Settings, field)

    def p(field: str) -> str:
        return _default(PoolSettings, field)

    add("--version", action="version", version=f"codalab-scaler {__version__}")
    add("--server", default=S, help="CodaLab instance to connect to" + g("server"))
    add("--min-workers", type=int, default=S, help="Minimum number of workers" + p("min_workers"))
    add("--max-workers", type=int, default=S, help="Maximum number of workers" + p("max_workers"))
    add(
        "--search",
        nargs="*",
        action="extend",
        default=S,
        help="Monitor only runs that satisfy these criteria",
    )
    add("--verbose", action="store_true", default=S, help="Log debug events too")
    add("--sleep-time", type=float, default=S, help="Seconds between polls" + g("sleep_time"))
    add(
        "--once",
        action="store_true",
        default=S,
        help="Run one poll-decide-launch cycle and exit (0 if it could observe and decide)",
    )
    add(
        "--min-seconds-between-workers",
        type=int,
        default=S,
        help="Minimum time to wait between launching workers" + p("min_seconds_between_workers"),
    )
    add(
        "--no-prefilter",
        action="store_true",
        default=S,
        help="Do not drop bundles that request more than the worker shape",
    )
    add("--worker-tag", default=S, help="Tag to look for in bundles and put on workers")
    add(
        "--worker-tag-exclusive",
        action="store_true",
        default=S,
        help="Workers only run bundles that match their tag",
    )
    add("--worker-group", default=S, help="Workers only run bundles for this group")
    add(
        "--worker-executable",
        default=S,
        help="The CodaLab worker executable" + p("worker_executable"),
    )
    add(
        "--worker-idle-seconds",
        type=int,
        default=S,
        help="Workers wait this long for runs before quitting" + p("worker_idle_seconds"),
    )
    add("--worker-work-dir-prefix", default=S, help="Prefix of each worker's work dir")
    add("--worker-max-work-dir-size", default=S, help="Maximum size of temporary bundle data")
    add(
        "--worker-delete-work-dir-on-exit",
        action="store_true",
        default=S,
        help="Delete a worker's work dir when it exits",
    )
    add(
        "--worker-exit-after-num-runs",
        type=int,
        default=S,
        help="Workers exit after this many runs",
    )
    add(
        "--worker-exit-on-exception",
        action="store_true",
        default=S,
        help="Workers exit on an exception instead of sleeping",
    )
    add(
        "--worker-pass-down-termination",
        action="store_true",
        default=S,
        help="Workers kill and restage their runs when terminated",
    )
    add(
        "--worker-checkin-frequency-seconds",
        type=int,
        default=S,
        help="Seconds between worker check-ins",
    )
    add(
        "--worker-download-dependencies-max-retries",
        type=int,
        default=S,
        help="Worker retries of dependency downloads"
        + p("worker_download_dependencies_max_retries"),
    )
    add(
        "--worker-shared-memory-size-gb",
        type=int,
        default=S,
        help="Shared memory of run containers, GB" + p("worker_shared_memory_size_gb"),
    )
    add("--worker-preemptible", action="store_true", default=S, help="Workers are preemptible")
    add(
        "--temp-session",
        action="store_true",
        default=S,
        help="Accepted for compatibility with cl-worker-manager; sessions are always in memory",
    )
    add(
        "--restart-after-seconds",
        type=int,
        default=S,
        help="Accepted for compatibility with cl-worker-manager; ignored (no periodic restart)",
    )
    # new in codalab-scaler
    add("--config", type=Path, default=None, help="TOML file declaring settings and pools")
    add("--dry-run", action="store_true", default=S, help="Decide and log, never launch")
    add(
        "--password-file",
        type=Path,
        default=S,
        help="File with the CodaLab username (line 1) and password (line 2)",
    )
    add(
        "--max-launches-per-pass",
        type=int,
        default=S,
        help="Launch up to this many workers per pass" + p("max_launches_per_pass"),
    )
    add(
        "--staleness-seconds",
        type=float,
        default=S,
        help="A view older than this launches nothing (default: 3 x --sleep-time)",
    )
    add(
        "--in-flight-timeout-seconds",
        type=float,
        default=S,
        help="Count an accepted launch as pending this long at most"
        + g("in_flight_timeout_seconds"),
    )
    add(
        "--request-timeout-seconds",
        type=float,
        default=S,
        help="Timeout of one HTTP request" + g("request_timeout_seconds"),
    )
    add("--http-host", default=S, help="Address for /metrics, /healthz, /status" + g("http_host"))
    add("--http-port", type=int, default=S, help="Port (0 picks a free one)" + g("http_port"))
    add(
        "--log-format",
        choices=["auto", "json", "console"],
        default=S,
        help="Log format (auto: console on a TTY, JSON lines otherwise)",
    )

    sub = parser.add_subparsers(title="backends", dest="backend", metavar="BACKEND")
    local = sub.add_parser("local", help="Run workers as local processes (embedded default)")

    def lb(field: str) -> str:
        return _default(LocalBackendSettings, field)

    local.add_argument("--cpus", type=int, default=S, help="CPUs per worker" + lb("cpus"))
    local.add_argument("--gpus", type=int, default=S, help="GPUs per worker" + lb("gpus"))
    local.add_argument(
        "--memory-mb", type=int, default=S, help="Memory per worker in MB" + lb("memory_mb")
    )
    local.add_argument(
        "--state-dir",
        type=Path,
        default=S,
        help="Where worker pid files, logs and work dirs live "
        "(default: $XDG_STATE_HOME/codalab-scaler)",
    )
    demo = sub.add_parser("demo", help="Run against an embedded CodaLab simulator")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="Stop after this many seconds (default: run until Ctrl-C)",
    )
    demo.add_argument("--bundles", type=int, default=40, help="Bundles to stage (default: 40)")
    demo.add_argument(
        "--bundles-per-minute",
        type=float,
        default=30.0,
        help="Rate of the synthetic stream (default: 30)",
    )
    demo.add_argument(
        "--max-run-seconds",
        type=float,
        default=10.0,
        help="Each bundle runs 1 s to this long (default: 10)",
    )
    demo.add_argument("--seed", type=int, default=1, help="Random seed of the stream")
    return parser  # fmt: skip


SUBCOMMANDS = frozenset({"local", "demo"})


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
    given = {k: v for k, v in vars(args).items() if k not in {"config", "backend", *DEMO_ONLY}}
    service = {k: v for k, v in given.items() if k in GLOBAL_KEYS}
    pool = {k: v for k, v in given.items() if k not in GLOBAL_KEYS | BACKEND_KEYS}
    backend = {k: v for k, v in given.items() if k in BACKEND_KEYS}
    return service, pool, backend


def print_config_errors(exc: ConfigError) -> int:
    for line in exc.lines:
        print(f"codalab-scaler: config error: {line}", file=sys.stderr)
    return EXIT_CONFIG


def settings_values(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[dict[str, Any], Path | None]:
    """Turn parsed flags into the nested settings dict (only flags actually given)."""
    values, pool, backend = split_flags(args)
    if args.backend == "local":
        values["pools"] = {CLI_POOL: {**pool, "backend": {"kind": "local", **backend}}}
    elif pool and args.backend is None:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(pool))
        raise ConfigError([f"{flags}: pool flags need a backend subcommand (e.g. local)"])
    if "password_file" not in values:
        if "CODALAB_USERNAME" in environ:
            values["username"] = environ["CODALAB_USERNAME"]
        if "CODALAB_PASSWORD" in environ:
            values["password"] = environ["CODALAB_PASSWORD"]
    return values, args.config


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(split_search(sys.argv[1:] if argv is None else list(argv)))
    if args.backend == "demo":
        from codalab_scaler.demo import run_demo

        return run_demo(args)
    try:
        values, config = settings_values(args, os.environ)
        settings = load_settings(values, config)
    except ConfigError as exc:
        return print_config_errors(exc)
    configure_logging(verbose=settings.verbose, fmt=settings.log_format)
    return asyncio.run(run(settings))


async def run(settings: Settings) -> int:
    from codalab_scaler.service import Service

    log = structlog.get_logger()
    if settings.restart_after_seconds is not None:
        log.warning("config.ignored", setting="restart_after_seconds",
                    why="codalab-scaler holds no state that needs a periodic restart")  # fmt: skip
    service = Service.build(settings)
    if settings.once:
        try:
            result = await service.run_once()
        except LoginRefused as exc:
            log.error("codalab.login_refused", error=str(exc))
            await service.stop()
            return EXIT_CONFIG
        await service.stop()
        if not result.ok:
            log.error("once.failed", problems=list(result.problems))
            return EXIT_FAILURE
        return EXIT_OK
    return await serve(service, settings.http_host, settings.http_port)
