"""Import rules read from the source with ``ast``: the pure core stays pure, backends stay apart."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import codalab_scaler

PACKAGE_DIR = Path(codalab_scaler.__file__).resolve().parent
PACKAGE = "codalab_scaler"
BACKENDS = f"{PACKAGE}.backends"

PURE_MODULES = ("decision", "model", "prefilter")
PURE_MAY_IMPORT = frozenset({"model", "decision", "prefilter", "sizes"})
IO_LIBRARIES = frozenset(
    {
        "asyncio", "aiohttp", "socket", "subprocess", "os", "time", "structlog",
        "prometheus_client", "tenacity", "aiobotocore", "botocore", "urllib", "http",
        "requests",
    }
)  # fmt: skip
NOT_BACKENDS = frozenset({"__init__", "base"})


def imports(source: str, module: str) -> Iterator[tuple[int, str, bool]]:
    """(line, absolute dotted name, named) of everything ``source`` may import.

    ``module`` is the dotted name of the file (``pkg.__init__`` for a package's
    own ``__init__``), against which relative imports are resolved.  For
    ``from M import a`` both ``M`` (named False: only its ``a`` is taken) and
    ``M.a`` (named True: ``a`` may be a module) are yielded.  Imports anywhere
    count, including inside functions and ``if TYPE_CHECKING:``.
    """
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, True
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            yield node.lineno, base, False
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}", True


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def pure_violations(source: str, module: str) -> list[str]:
    """Why ``source`` is not pure: each I/O library or non-core scaler module it imports."""
    found = []
    for line, name, _ in imports(source, module):
        top = name.split(".")[0]
        if top in IO_LIBRARIES:
            found.append(f"line {line}: imports I/O library {name}")
        elif top == PACKAGE and name != PACKAGE:
            sibling = name.split(".")[1]
            if sibling not in PURE_MAY_IMPORT:
                found.append(f"line {line}: imports {name}, outside the pure core")
    return found


def backend_violations(source: str, module: str) -> list[str]:
    """Why backend ``module`` is not self-contained: each other backend it imports.

    Within ``codalab_scaler.backends`` a backend may import only ``base`` and
    its own submodules; taking the package itself (and with it the factory's
    view of every backend) counts as importing another backend.
    """
    own = ".".join(module.split(".")[:3])  # codalab_scaler.backends.<name>
    allowed = (f"{BACKENDS}.base", own)
    found = []
    for line, name, named in imports(source, module):
        if name == BACKENDS and not named:
            continue  # `from codalab_scaler.backends import X`: X is checked on its own
        if _within(name, BACKENDS) and not any(_within(name, ok) for ok in allowed):
            found.append(f"line {line}: imports {name}")
    return found


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    return ".".join(relative.parts)


def backend_files() -> list[Path]:
    """Every backend module, and every file of every backend package."""
    found = []
    for entry in sorted((PACKAGE_DIR / "backends").iterdir()):
        if entry.suffix == ".py" and entry.stem not in NOT_BACKENDS:
            found.append(entry)
        elif entry.is_dir() and (entry / "__init__.py").exists():
            found.extend(sorted(entry.rglob("*.py")))
    return found


# -- the rules, over the real source --------------------------------------


@pytest.mark.parametrize("name", PURE_MODULES)
def test_the_pure_core_imports_no_io(name: str) -> None:
    path = PACKAGE_DIR / f"{name}.py"
    assert pure_violations(path.read_text(), module_name(path)) == []


def test_backend_modules_are_discovered() -> None:
    names = {module_name(path) for path in backend_files()}
    assert f"{BACKENDS}.local" in names
    assert not names & {f"{BACKENDS}.base", f"{BACKENDS}.__init__"}


@pytest.mark.parametrize("path", backend_files(), ids=lambda path: module_name(path))
def test_a_backend_imports_no_other_backend(path: Path) -> None:
    assert backend_violations(path.read_text(), module_name(path)) == []


# -- the checkers catch what they should, and only that ----------------------


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "from os import path",
        "from asyncio import sleep",
        "import urllib.request",
        "from http import HTTPStatus",
        "import structlog",
        "import botocore.exceptions",
        "def later():\n    import time\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import socket\n",
        "from codalab_scaler.retry import retry_transient",
        "from codalab_scaler import retry",
        "from codalab_scaler import model, worker_command",
        "import codalab_scaler.backends.local",
        "from . import errors",
        "from .backends.local import LocalBackend",
    ],
)
def test_pure_check_reports_a_forbidden_import(source: str) -> None:
    assert pure_violations(source, f"{PACKAGE}.decision")


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations",
        "import enum\nfrom dataclasses import dataclass\nimport math",
        "import osmosis\nimport timeit\nimport httpx_free",
        "from codalab_scaler.model import JobState",
        "from codalab_scaler import sizes, model",
        "from . import prefilter",
        "from .decision import decide",
    ],
)
def test_pure_check_allows_the_core_and_the_standard_library(source: str) -> None:
    assert pure_violations(source, f"{PACKAGE}.decision") == []


@pytest.mark.parametrize(
    "source",
    [
        "from codalab_scaler.backends.aws_batch import AwsBatchBackend",
        "import codalab_scaler.backends.slurm",
        "import codalab_scaler.backends.slurm.script",
        "import codalab_scaler.backends",
        "from codalab_scaler.backends import slurm",
        "from codalab_scaler.backends import create_backend",
        "from codalab_scaler import backends",
        "from . import slurm",
        "from .slurm import SlurmBackend",
        "from .. import backends",
        "from ..backends.slurm import SlurmBackend",
        "def later():\n    from codalab_scaler.backends.slurm import SlurmBackend\n",
    ],
)
def test_backend_check_reports_another_backend(source: str) -> None:
    assert backend_violations(source, f"{BACKENDS}.local")


@pytest.mark.parametrize(
    "source",
    [
        "from codalab_scaler.backends.base import Backend",
        "from .base import Backend",
        "from . import base",
        "from codalab_scaler.model import WorkerJob",
        "import os\nimport asyncio",
        "from codalab_scaler.backends.local import LocalBackend",
    ],
)
def test_backend_check_allows_base_and_itself(source: str) -> None:
    assert backend_violations(source, f"{BACKENDS}.local") == []


def test_backend_package_may_import_its_own_submodules() -> None:
    module = f"{BACKENDS}.slurm.backend"
    assert backend_violations("from .script import render", module) == []
    assert backend_violations("from ..local import LocalBackend", module)
