"""Domain values built from the settings' defaults (the one place a default lives).

``Policy``, ``WorkerShape``, ``RetryPolicy`` and ``WorkerOptions`` take
values only; tests that want "the defaults but ..." build them here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from codalab_scaler.config.settings import Settings
from codalab_scaler.core.decision import Policy
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.worker_command import WorkerOptions
from codalab_scaler.sources.retry import RetryPolicy

POOL = "p"
DEFAULTS = Settings.model_validate({"username": "u", "password": "p", "pools": {POOL: {}}})


def worker_options(**overrides: Any) -> WorkerOptions:
    return replace(DEFAULTS.pools[POOL].worker_options(DEFAULTS.server), **overrides)


def worker_shape(**overrides: Any) -> WorkerShape:
    return replace(DEFAULTS.pools[POOL].shape(), **overrides)


def policy(**overrides: Any) -> Policy:
    return replace(DEFAULTS.policy(POOL), **overrides)


def retry_policy(**overrides: Any) -> RetryPolicy:
    return replace(DEFAULTS.retry_policy(), **overrides)
