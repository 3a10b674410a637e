"""Write the generated references under ``docs/reference/`` from the code.

Run ``python docs/generate.py`` after changing a setting or a metric;
``tests/test_docs.py`` fails while a generated file is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "reference"


def settings_markdown() -> str:
    """The settings reference, from the settings models' field descriptions."""
    from codalab_scaler.entry.reference import settings_markdown as render

    return render()


def metrics_markdown() -> str:
    """The metrics reference, from the metrics a service registers."""
    raise NotImplementedError


GENERATED = {"settings.md": settings_markdown, "metrics.md": metrics_markdown}


def main() -> int:
    REFERENCE.mkdir(exist_ok=True)
    for name, render in GENERATED.items():
        (REFERENCE / name).write_text(render())
        print(f"wrote {REFERENCE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
