"""The layers hold: import-linter's contracts (``pyproject.toml``) pass on the real source.

The same contracts also run in ``.ci/run``; here they run from the test
command too, and a copy of the package with one forbidden import planted in
it shows that each kind of contract catches what it should.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import codalab_scaler

PACKAGE_DIR = Path(codalab_scaler.__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter with the project's contracts on the package under ``root``."""
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"},
        timeout=120,
    )


def test_the_real_source_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("core/model.py", "import asyncio", "The pure core imports no I/O library"),
        ("core/decision.py", "import codalab_scaler.service.state", "Layers"),
        ("sources/codalab/jsonapi.py", "import codalab_scaler.config.settings", "Layers"),
        (
            "sources/backends/slurm/squeue.py",
            "import codalab_scaler.sources.backends.aws_batch.spec",
            "Backends: no backend imports another",
        ),
        (
            "service/metrics.py",
            "import codalab_scaler.simulator.wire",
            "Product code reaches the CodaLab simulator only through the demo",
        ),
        ("simulator/wire.py", "import codalab_scaler.service.state", "The simulator stands apart"),
        ("whatif/engine.py", "import asyncio", "What-if replays use the pure core"),
        (
            "whatif/report.py",
            "import codalab_scaler.sources.codalab.jsonapi",
            "What-if replays use the pure core",
        ),
        (
            "service/planning.py",
            "import codalab_scaler.whatif.engine",
            "Only the command line starts a what-if replay",
        ),
    ],
)
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    copy = tmp_path / "codalab_scaler"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{line}\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    broken_lines = [text for text in result.stdout.splitlines() if " BROKEN" in text]
    assert any(text.startswith(broken) for text in broken_lines), result.stdout
