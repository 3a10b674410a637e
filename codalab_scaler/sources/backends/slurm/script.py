"""The batch script ``sbatch`` runs for one worker: pure text, from settings and paths.

Layout::

    #!/usr/bin/env bash
    #SBATCH --<option>=<value>     one per line, sorted by option name
    set -u
    echo ...                       where and what, for the job's log
    GPUSET=...                     only when the job asks for GPUs
    exec srun --unbuffered <cl-worker argv> --pass-down-termination --password-file F --gpuset G

The worker's argv is quoted word by word; only the original's ``$(hostname -s)``
in ``--id`` is left for bash to expand on the node.  Credentials never appear
here: the worker reads them from the 0600 file named by ``--password-file``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codalab_scaler.core.worker_command import shell_word
from codalab_scaler.sources.backends.slurm.settings import SlurmBatchBackendSettings

# Docker ignores Slurm's GPU isolation, so cl-worker is told which GPUs are the
# job's: their UUIDs as the job sees them, or NONE.
_GPU_DISCOVERY = """\
GPUSET=$(nvidia-smi -L 2>/dev/null | sed -n 's/.*UUID: \\([^)]*\\)).*/\\1/p' | paste -sd, -)
if [ -z "$GPUSET" ]; then
  echo "No GPUs found by nvidia-smi; the worker runs with --gpuset NONE"
  GPUSET=NONE
else
  echo "Using GPUs $GPUSET"
fi
"""


@dataclass(frozen=True, slots=True)
class JobFiles:
    """Where one worker's files go: all under ``slurm_work_dir/<worker_id>/``."""

    directory: Path
    job_name: str

    @property
    def script(self) -> Path:
        return self.directory / f"{self.job_name}.slurm"

    @property
    def output(self) -> Path:
        return self.directory / f"{self.job_name}.out"

    @property
    def error(self) -> Path:
        return self.directory / f"{self.job_name}.err"


def directives(settings: SlurmBatchBackendSettings, files: JobFiles) -> dict[str, str]:
    """``#SBATCH`` options; optional ones only when set, ``--gres`` only when ``gpus > 0``."""
    options = {
        "job-name": files.job_name,
        "partition": settings.partition,
        "nodes": "1",
        "ntasks": "1",
        "cpus-per-task": str(settings.cpus),
        "mem": f"{settings.memory_mb}M",
        "time": settings.time,
        "chdir": str(files.directory),
        "output": str(files.output),
        "error": str(files.error),
        "open-mode": "append",
    }
    if settings.gpus > 0:
        kind = f"gpu:{settings.gpu_type}" if settings.gpu_type else "gpu"
        options["gres"] = f"{kind}:{settings.gpus}"
    optional = {
        "constraint": settings.constraint,
        "nodelist": settings.nodelist,
        "exclude": settings.exclude,
        "account": settings.account,
    }
    options.update({key: value for key, value in optional.items() if value})
    return options


def worker_argv(command: Sequence[str], password_file: Path) -> list[str]:
    """The seed's worker command plus what every Slurm worker gets (before ``--gpuset``)."""
    argv = list(command)
    if "--pass-down-termination" not in argv:  # always: scancel must restage the runs
        argv.append("--pass-down-termination")
    return [*argv, "--password-file", str(password_file)]


quote = shell_word  # one shell word; ``$(hostname -s)`` stays an expansion


def render(settings: SlurmBatchBackendSettings, files: JobFiles, argv: Sequence[str]) -> str:
    """The whole batch script for a worker whose command (with credentials file) is ``argv``."""
    lines = ["#!/usr/bin/env bash"]
    lines += [
        f"#SBATCH --{key}={value}" for key, value in sorted(directives(settings, files).items())
    ]
    lines += [
        "# Written by codalab-scaler; the CodaLab password is in the --password-file, not here.",
        "set -u",
        'echo "codalab-scaler: job ${SLURM_JOB_ID:-?} on $(hostname)" || true',
    ]
    if settings.gpus > 0:
        lines.append(_GPU_DISCOVERY.rstrip("\n"))
        gpuset = '"$GPUSET"'
    else:
        gpuset = "NONE"
    words = ["srun", "--unbuffered", *argv]
    lines.append("exec " + " ".join(shell_word(word) for word in words) + f" --gpuset {gpuset}")
    return "\n".join(lines) + "\n"
