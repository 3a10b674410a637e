"""Allow ``python -m codalab_scaler``."""

from codalab_scaler.entry.cli import main

raise SystemExit(main())
