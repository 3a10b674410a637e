"""How a Slurm worker gets its CodaLab credentials: a file only its user can read.

Either the operator's ``--password-file`` (checked to be mode 0600 or
stricter when the backend is built) or, without one, a file this backend
writes under ``slurm_work_dir``: created 0600 by ``os.open`` itself (never
chmod-ed afterwards), written in full, then renamed into place.  The batch
script, its ``#SBATCH`` lines and the job's environment only ever name the
file.
"""

from __future__ import annotations

import stat
from pathlib import Path

from codalab_scaler.core.errors import ConfigError, LaunchRefused, TransientError
from codalab_scaler.sources.backends.base import WorkerCredentials, write_private_file


def check_password_file(path: Path) -> Path:
    """``path`` made absolute, if only its owner can read it; ``ConfigError`` otherwise."""
    absolute = path.expanduser().resolve()
    try:
        mode = stat.S_IMODE(absolute.stat().st_mode)
    except OSError as exc:
        raise ConfigError([f"password_file: cannot read {absolute} ({exc.strerror})"]) from None
    if mode & 0o077:
        raise ConfigError(
            [
                (
                    f"password_file: {absolute} has mode {mode:04o}; Slurm workers read it, "
                    f"so it must be readable by its owner only (chmod 600 {absolute})"
                )
            ]
        )
    return absolute


def write_password_file(path: Path, credentials: WorkerCredentials) -> None:
    """Write the two-line file (username, password) at ``path`` with mode 0600."""
    content = f"{credentials.username}\n{credentials.password}\n".encode()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private_file(path, content)
    except PermissionError as exc:
        raise LaunchRefused(
            f"cannot write the workers' password file {path}: {exc.strerror}"
        ) from exc
    except OSError as exc:
        raise TransientError(f"cannot write the workers' password file {path}: {exc}") from exc
