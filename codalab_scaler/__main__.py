"""Allow ``python -m codalab_scaler``."""

from codalab_scaler.cli import main

raise SystemExit(main())
