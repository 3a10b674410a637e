"""The ``codalab-scaler`` command: the original's flags and a backend, ``demo`` or ``simulate``.

A thin entry point: parse flags, validate settings (exit 2 naming each bad
field), configure logging, hand over to the service.
"""

from __future__ import annotations

import asyncio
import os
import sys
from argparse import Namespace
from collections.abc import Mapping, Sequence

import structlog

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.entry.flags import (
    build_parser,
    flag_name,
    print_config_errors,
    settings_from_args,
    settings_values,
    split_flags,
    split_search,
)
from codalab_scaler.service.app import serve
from codalab_scaler.service.logs import configure_logging

__all__ = [
    "build_parser",
    "main",
    "run",
    "settings_from_args",
    "settings_values",
    "split_flags",
    "split_search",
]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The command; ``environ`` defaults to the process's, read here once and passed on."""
    environ = dict(os.environ) if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(split_search(sys.argv[1:] if argv is None else list(argv)))
    if args.backend == "demo":
        from codalab_scaler.entry.demo import run_demo

        return run_demo(args, environ)
    if args.backend == "simulate":
        from codalab_scaler.entry.simulate import run_simulate

        return run_simulate(args)
    if args.backend == "top":
        return _top(args)
    try:
        settings = settings_from_args(args, environ)
    except ConfigError as exc:
        return print_config_errors(exc)
    configure_logging(verbose=settings.verbose, fmt=settings.log_format)
    return asyncio.run(run(settings))


def _top(args: Namespace) -> int:
    """``top`` reads a running scaler: settings flags would silently do nothing, so refuse them."""
    service, pool, _backend = split_flags(args)
    given = sorted({*service, *pool})
    if given or args.config is not None:
        names = ", ".join(flag_name(k) for k in given) or "--config"
        return print_config_errors(
            ConfigError([f"{names}: top reads a running scaler's /status and takes no settings"])
        )
    from codalab_scaler.entry.top import run_top

    return run_top(args.url, args.interval)


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
