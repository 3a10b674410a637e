"""The ``cl-worker`` command line, built exactly as the original worker manager builds it.

Same flag order, optional flags left out when unset.  ``--id`` carries the
original's ``$(hostname -s)-<worker_id>`` so a backend job can be matched to
the worker it registers; backends that do not run a shell substitute it
(see ``resolve_hostname``).
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

HOSTNAME_EXPR = "$(hostname -s)"
DEFAULT_WORK_DIR_PREFIX = "/tmp/"  # noqa: S108 - the original's default prefix, overridable by --worker-work-dir-prefix


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """The ``--worker-*`` flags of the original, one pool's worth.

    Values only: the defaults live once, in the pool settings.
    """

    server: str
    executable: str
    idle_seconds: int
    tag: str | None
    tag_exclusive: bool
    group: str | None
    exit_after_num_runs: int | None
    download_dependencies_max_retries: int | None
    max_work_dir_size: str | None
    delete_work_dir_on_exit: bool
    exit_on_exception: bool
    pass_down_termination: bool
    checkin_frequency_seconds: int | None
    shared_memory_size_gb: int | None
    preemptible: bool
    work_dir_prefix: str | None


def work_dir_for(
    options: WorkerOptions, worker_id: str, default_prefix: str = DEFAULT_WORK_DIR_PREFIX
) -> str:
    """One work dir per worker under ``--worker-work-dir-prefix``."""
    prefix = options.work_dir_prefix or default_prefix
    return posixpath.join(prefix, f"cl_worker_{worker_id}_work_dir")


def build_command(options: WorkerOptions, worker_id: str, work_dir: str) -> list[str]:
    command = [
        options.executable,
        "--server",
        options.server,
        "--verbose",
        "--exit-when-idle",
        "--idle-seconds",
        str(options.idle_seconds),
        "--work-dir",
        work_dir,
        "--id",
        f"{HOSTNAME_EXPR}-{worker_id}",
        "--network-prefix",
        f"cl_worker_{worker_id}_network",
    ]
    # The optional flags in the original's order: a value flag when set (and, for
    # a count, positive), a switch when true.
    valued: tuple[tuple[str, str | int | None], ...] = (
        ("--tag", options.tag),
        ("--group", options.group),
        ("--exit-after-num-runs", options.exit_after_num_runs),
        ("--download-dependencies-max-retries", options.download_dependencies_max_retries),
        ("--max-work-dir-size", options.max_work_dir_size),
    )
    switches = (
        ("--delete-work-dir-on-exit", options.delete_work_dir_on_exit),
        ("--exit-on-exception", options.exit_on_exception),
        ("--tag-exclusive", options.tag_exclusive),
        ("--pass-down-termination", options.pass_down_termination),
    )
    trailing: tuple[tuple[str, str | int | None], ...] = (
        ("--checkin-frequency-seconds", options.checkin_frequency_seconds),
        ("--shared-memory-size-gb", options.shared_memory_size_gb),
    )
    command += _valued(valued)
    command += [flag for flag, on in switches if on]
    command += _valued(trailing)
    if options.preemptible:
        command.append("--preemptible")
    return command


def _valued(flags: tuple[tuple[str, str | int | None], ...]) -> list[str]:
    """``[flag, value, ...]`` for each flag whose value is set (a count must be positive)."""
    out: list[str] = []
    for flag, value in flags:
        if isinstance(value, int) and value <= 0:
            continue
        if value:
            out += [flag, str(value)]
    return out


def short_hostname(fqdn: str) -> str:
    """What ``hostname -s`` prints for ``fqdn``."""
    return fqdn.split(".", 1)[0]


def resolve_hostname(command: list[str], hostname: str) -> list[str]:
    """Replace the shell expression ``$(hostname -s)`` for backends that exec without a shell."""
    return [arg.replace(HOSTNAME_EXPR, hostname) for arg in command]


def shell_word(arg: str) -> str:
    """``arg`` as one bash word: literal, except ``$(hostname -s)``, which bash expands."""
    pieces = arg.split(HOSTNAME_EXPR)
    return (
        f'"{HOSTNAME_EXPR}"'.join(shlex.quote(piece) if piece else "" for piece in pieces) or "''"
    )
