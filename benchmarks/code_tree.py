"""Run a benchmark module on another source tree's ``codalab_scaler`` (the "before" of a change).

``python -c BOOT TREE MODULE ARGS...`` sets this checkout's editable install
aside, imports ``codalab_scaler`` from ``TREE`` (a clone or worktree at the
base commit) and runs ``MODULE`` (``benchmarks.*`` and ``tests.*`` still come
from this checkout) as ``__main__`` with ``ARGS``.  Nothing is written into
``TREE`` (no bytecode).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

BOOT = """
import runpy, sys
sys.dont_write_bytecode = True
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
tree, module, here = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, tree)
import codalab_scaler  # from the tree: its submodules follow its __path__
sys.path.insert(0, here)
sys.argv = [module, *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def describe(tree: Path | None) -> str:
    """``tree`` (None: this checkout) as its commit, ``+dirty`` when its package has changes."""
    root = HERE if tree is None else tree
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"],  # noqa: S603 - git, our args
                          capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "codalab_scaler"],  # noqa: S603
                           capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return f"{root} at {head or '?'}{' +dirty' if dirty else ''}"


def command(tree: Path | None, module: str, args: Sequence[str]) -> list[str]:
    """The argv that runs ``module`` with ``args`` on ``tree`` (None: this checkout)."""
    if tree is None:
        return [sys.executable, "-m", module, *args]
    return [sys.executable, "-c", BOOT, str(tree), module, str(HERE), *args]
