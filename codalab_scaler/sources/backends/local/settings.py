"""Settings of the ``local`` backend (``pools.<name>.backend`` with ``kind = "local"``).

Imports no process machinery: the CLI and config validation read it
without starting anything.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from codalab_scaler.sources.backends.base import StrictModel

STATE_DIR_NAME = "codalab-scaler"


def state_dir_default(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/codalab-scaler``, else ``$HOME/.local/state/codalab-scaler``.

    Without ``HOME`` the account's home directory, as ``~`` expands.
    """
    base = environ.get("XDG_STATE_HOME")
    if not base:
        home = environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
        base = str(Path(home) / ".local" / "state")
    return Path(base) / STATE_DIR_NAME


def environ_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """The defaults that depend on the environment the loader was given."""
    return {"state_dir": state_dir_default(environ)}


class LocalBackendSettings(StrictModel):
    """Workers as child processes of the scaler (the embedded default)."""

    kind: Literal["local"] = Field(
        default="local",
        description="Backend kind. A pool's backend table without a kind is this one, "
        "the embedded default, as before kinds existed.",
    )
    cpus: PositiveInt = Field(
        default=1,
        description="CPUs each worker offers, a count. Staged bundles asking for more are "
        "not counted as work for this pool (unless no_prefilter). 1: the smallest useful "
        "worker, as the original's default.",
    )
    gpus: NonNegativeInt = Field(
        default=0,
        description="GPUs each worker offers, a count. 0: a laptop or CI machine has none.",
    )
    memory_mb: PositiveInt = Field(
        default=2048,
        description="Memory each worker offers, in MiB. 2048: the original's default worker size.",
    )
    state_dir: Path = Field(
        default_factory=lambda: state_dir_default({}),
        description="Directory for worker records, logs and work dirs; workers started "
        "by an earlier run are found again here. Default: $XDG_STATE_HOME/codalab-scaler, "
        "else $HOME/.local/state/codalab-scaler (the XDG place for state that survives "
        "a restart).",
    )
