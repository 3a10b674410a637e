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
from typing import Any

import structlog

from codalab_scaler.config.settings import Settings, load_settings
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.entry.flags import (
    BACKENDS,
    CLI_POOL,
    DEMO_ONLY,
    GLOBAL_KEYS,
    SUBCOMMANDS,
    build_parser,
)
from codalab_scaler.service.app import EXIT_CONFIG, serve
from codalab_scaler.service.logs import configure_logging

__all__ = ["build_parser", "main", "run", "settings_values", "split_flags", "split_search"]


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
    model = BACKENDS.get(args.backend or "")
    backend_keys = set(model.model_fields) if model is not None else set()
    service = {k: v for k, v in given.items() if k in GLOBAL_KEYS}
    pool = {k: v for k, v in given.items() if k not in GLOBAL_KEYS | backend_keys}
    backend = {k: v for k, v in given.items() if k in backend_keys}
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
    if args.backend in BACKENDS:
        values["pools"] = {CLI_POOL: {**pool, "backend": {"kind": args.backend, **backend}}}
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
        from codalab_scaler.entry.demo import run_demo

        return run_demo(args)
    try:
        values, config = settings_values(args, os.environ)
        settings = load_settings(values, config)
    except ConfigError as exc:
        return print_config_errors(exc)
    configure_logging(verbose=settings.verbose, fmt=settings.log_format)
    return asyncio.run(run(settings))


async def run(settings: Settings) -> int:
    from codalab_scaler.service.app import make_app, run_once

    log = structlog.get_logger()
    if settings.restart_after_seconds is not None:
        log.warning("config.ignored", setting="restart_after_seconds",
                    why="codalab-scaler holds no state that needs a periodic restart")  # fmt: skip
    try:
        if settings.once:
            return await run_once(settings)
        return await serve(make_app(settings), settings.http_host, settings.http_port)
    except ConfigError as exc:  # a backend's own checks (e.g. a password file's mode)
        return print_config_errors(exc)
