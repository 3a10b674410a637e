"""One results file per benchmark: what ran, where, when, and the numbers."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codalab_scaler import __version__


def write_report(
    name: str, results: Sequence[dict[str, Any]], out: Path, **context: Any
) -> dict[str, Any]:
    """Write ``out`` (JSON) and print it; ``context`` (JSON values) says what was measured on."""
    report = {
        "benchmark": name,
        "version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        **context,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": list(results),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report
