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
    if options.tag:
        command += ["--tag", options.tag]
    if options.group:
        command += ["--group", options.group]
    if options.exit_after_num_runs and options.exit_after_num_runs > 0:
        command += ["--exit-after-num-runs", str(options.exit_after_num_runs)]
    if options.download_dependencies_max_retries:
        command += [
            "--download-dependencies-max-retries",
            str(options.download_dependencies_max_retries),
        ]
    if options.max_work_dir_size:
        command += ["--max-work-dir-size", options.max_work_dir_size]
    if options.delete_work_dir_on_exit:
        command += ["--delete-work-dir-on-exit"]
    if options.exit_on_exception:
        command += ["--exit-on-exception"]
    if options.tag_exclusive:
        command += ["--tag-exclusive"]
    if options.pass_down_termination:
        command += ["--pass-down-termination"]
    if options.checkin_frequency_seconds:
        command += ["--checkin-frequency-seconds", str(options.checkin_frequency_seconds)]
    if options.shared_memory_size_gb:
        command += ["--shared-memory-size-gb", str(options.shared_memory_size_gb)]
    if options.preemptible:
        command += ["--preemptible"]
    return command


def short_hostname(fqdn: str) -> str:
    """What ``hostname -s`` prints for ``fqdn``."""
    return fqdn.split(".")[0]


def resolve_hostname(command: list[str], hostname: str) -> list[str]:
    """Replace the shell expression ``$(hostname -s)`` for backends that exec without a shell."""
    return [arg.replace(HOSTNAME_EXPR, hostname) for arg in command]


def shell_word(arg: str) -> str:
    """``arg`` as one bash word: literal, except ``$(hostname -s)``, which bash expands."""
    pieces = arg.split(HOSTNAME_EXPR)
    return (
        f'"{HOSTNAME_EXPR}"'.join(shlex.quote(piece) if piece else "" for piece in pieces) or "''"
    )
