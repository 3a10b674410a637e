"""The one way this backend runs a Slurm command: argv (never a shell string), bounded, logged.

``run`` returns stdout of a command that succeeded and raises otherwise:
``TransientError`` when asking again may work (controller down or busy, a
timeout, munge unreachable, an unclassified failure) and ``LaunchRefused``
when it will not (invalid partition, account or job options).  Both carry
the command's exit code, stdout and stderr in ``CommandFailed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from codalab_scaler.core.errors import LaunchRefused, ScalerError, TransientError
from codalab_scaler.sources.backends.base import exec_failure

log = structlog.get_logger()

_KILL_GRACE_SECONDS = 2.0
_EXCERPT = 400  # characters of stdout/stderr kept in an error message

# Matched against stderr, in this order: "try again" first, because sbatch
# prefixes transient errors too with "Batch job submission failed:".
TRANSIENT = re.compile(
    r"unable to contact slurm controller|socket timed out|connection refused"
    r"|communication connection failure|slurm controller not responding|in standby mode"
    r"|temporarily unavailable|temporarily unable to accept job|zero bytes were transmitted"
    r"|transport endpoint|munge|protocol authentication error|try again",
    re.IGNORECASE,
)
REFUSED = re.compile(
    r"invalid partition|invalid account|invalid user|invalid qos|invalid generic resource"
    r"|invalid feature|invalid node name|invalid --|requested node configuration is not available"
    r"|batch job submission failed|access denied|not permitted|unrecognized option"
    r"|invalid option",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class CommandFailed:
    """What a failed command said: for messages and tests."""

    argv: tuple[str, ...]
    returncode: int | None  # None: killed after the timeout
    stdout: str
    stderr: str

    def message(self) -> str:
        status = "timed out" if self.returncode is None else f"exited {self.returncode}"
        said = (self.stderr.strip() or self.stdout.strip())[:_EXCERPT] or "(no output)"
        return f"{self.argv[0]} {status}: {said}"


class SlurmTransient(TransientError):
    def __init__(self, failure: CommandFailed) -> None:
        super().__init__(failure.message())
        self.failure = failure


class SlurmRefused(LaunchRefused):
    def __init__(self, failure: CommandFailed) -> None:
        super().__init__(failure.message())
        self.failure = failure


def classify(failure: CommandFailed) -> ScalerError:
    """The error a failed command means; unknown failures are transient (the view goes stale)."""
    if failure.returncode is None or TRANSIENT.search(failure.stderr):
        return SlurmTransient(failure)
    if REFUSED.search(failure.stderr):
        return SlurmRefused(failure)
    return SlurmTransient(failure)


async def run(
    argv: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 - the subprocess's deadline: it is killed, not just abandoned
    env: Mapping[str, str] | None = None,
    stderr_is_error: bool = False,
) -> str:
    """Run ``argv`` and return its stdout; raise (see the module docstring) if it failed.

    ``stderr_is_error``: squeue reports some bad filters (an unknown user) on
    stderr with exit status 0 and then lists nothing; such a run fails too.
    """
    command = tuple(argv)
    log.debug("slurm.command", argv=list(command))
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
    except OSError as exc:
        raise exec_failure(exc, command[0]) from exc
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        await _kill(process)
        failure = CommandFailed(command, None, "", f"no answer within {timeout:g}s")
        log.warning("slurm.command_failed", argv=list(command), error=failure.message())
        raise SlurmTransient(failure) from None
    except BaseException:  # cancelled by the caller's own deadline: leave no orphan behind
        await _kill(process)
        raise
    stdout = out.decode(errors="replace")
    stderr = err.decode(errors="replace")
    failed = process.returncode != 0 or (stderr_is_error and "error" in stderr.lower())
    if failed:
        failure = CommandFailed(command, process.returncode, stdout, stderr)
        error = classify(failure)
        log.debug("slurm.command_failed", argv=list(command), error=str(error))
        raise error
    if stderr.strip():
        log.debug("slurm.command_stderr", argv=list(command), stderr=stderr.strip()[:_EXCERPT])
    return stdout


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        async with asyncio.timeout(_KILL_GRACE_SECONDS):
            await process.wait()


# Variables never handed to sbatch (which copies its environment into the job):
# credentials, and sbatch's own input variables, which would override the
# script's #SBATCH lines.
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)


def job_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment sbatch runs with: ours, minus credentials and ``SBATCH_*`` overrides."""
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if not name.startswith(("CODALAB_", "SBATCH_")) and not _SECRET_NAME.search(name)
    }
