"""The configurations to compare: settings files read by the real loader, and ``[simulate]``.

A configuration is a TOML table as ``--config`` takes it (``sleep_time``,
``[pools.X]``...), validated by ``config.loader.load_settings``, so a
simulated pool is built by the same ``Settings.pool_spec`` the service
uses.  The table may carry a ``[simulate]`` table the service does not
read: the models' assumptions (``quota``, ``drain_seconds``,
``sample_seconds``, and per pool ``[simulate.pools.X]``: ``boot_seconds``,
``boot_sigma``, ``capacity``, ``refuse_rate``, ``fail_rate``,
``stuck_rate``, ``stuck_seconds``).

Variants multiply: every file (or the default) x every ``--policy`` x every
``--sweep`` value.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)

from codalab_scaler.config.loader import load_settings
from codalab_scaler.config.settings import PoolSettings, Settings, format_errors
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.whatif.scenario import PoolModel, Scenario, SimPool

SIMULATE = "simulate"
# The loader insists on credentials; a replay talks to no CodaLab, so the file's
# own (a password file it would read) are set aside for placeholders.
PLACEHOLDER_LOGIN = {"username": "simulate", "password": "simulate"}
CREDENTIALS = frozenset({"username", "password", "password_file"})

DEFAULT_CONFIG = """
# Two pools of the embedded local backend: 4-cpu workers, and 1-GPU workers,
# scaling from zero, sized for the default workload's peaks. Everything else is
# the service's default (the original's: one launch a minute, workers exit
# after 600 s idle).
sleep_time = 5

[pools.cpu]
min_workers = 0
max_workers = 20
backend = { kind = "local", cpus = 4, gpus = 0, memory_mb = 16384 }

[pools.gpu]
min_workers = 0
max_workers = 8
backend = { kind = "local", cpus = 8, gpus = 1, memory_mb = 32768 }

[simulate.pools.cpu]
boot_seconds = 90

[simulate.pools.gpu]
boot_seconds = 180
"""

Rate = Annotated[float, Field(ge=0, le=1)]


class PoolModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    boot_seconds: PositiveFloat = 90.0
    boot_sigma: NonNegativeFloat = 0.3
    capacity: PositiveInt | None = None
    refuse_rate: Rate = 0.0
    fail_rate: Rate = 0.0
    stuck_rate: Rate = 0.0
    stuck_seconds: PositiveFloat = 3600.0


class SimulateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    quota: PositiveInt | None = None
    drain_seconds: NonNegativeFloat = 6 * 3600.0
    sample_seconds: PositiveFloat = 60.0
    pools: dict[str, PoolModelSettings] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Source:
    """One configuration file (or the default), by the label it gets in the report."""

    label: str
    table: Mapping[str, Any]


def default_source() -> Source:
    return Source("default", tomllib.loads(DEFAULT_CONFIG))


def parse_sweep(text: str) -> tuple[str, tuple[Any, ...]]:
    """``setting=v1,v2,v3`` -> the setting and its values (TOML scalars, else strings)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    values = [v.strip() for v in raw.split(",")]
    if not sep or not key or not all(values):
        raise ConfigError([f"--sweep: expected setting=v1,v2,... not {text!r}"])
    return key, tuple(_scalar(v) for v in values)


def _scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _pool_names(table: Mapping[str, Any]) -> list[str]:
    pools = table.get("pools")
    return list(pools) if isinstance(pools, Mapping) else []


def _set(table: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for part in path[:-1]:
        nested = table.get(part)
        if not isinstance(nested, dict):
            nested = table[part] = {}
        table = nested
    table[path[-1]] = value


def apply_setting(table: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``table`` with ``key`` set: a pool setting or a pool model's for every pool, else global."""
    out = copy.deepcopy(dict(table))
    pools = _pool_names(out)
    if "." in key:
        _set(out, key.split("."), value)
    elif key in PoolSettings.model_fields and key != "backend":
        for name in pools:
            _set(out, ["pools", name, key], value)
    elif key in PoolModelSettings.model_fields:
        for name in pools:
            _set(out, [SIMULATE, "pools", name, key], value)
    elif key in SimulateSettings.model_fields and key != "pools":
        _set(out, [SIMULATE, key], value)
    elif key in Settings.model_fields and key != "pools":
        out[key] = value
    else:
        raise ConfigError([f"--sweep: {key}: unknown setting"])
    return out


def scenario(name: str, table: Mapping[str, Any], seed: int) -> Scenario:
    """One configuration, validated by the real loader (``ConfigError`` names a bad field)."""
    rest = {k: v for k, v in table.items() if k != SIMULATE and k not in CREDENTIALS}
    settings = load_settings(PLACEHOLDER_LOGIN, {}, rest)
    try:
        sim = SimulateSettings.model_validate(table.get(SIMULATE, {}))
    except ValidationError as exc:
        raise ConfigError([f"{SIMULATE}.{line}" for line in format_errors(exc)]) from None
    unknown = sorted(set(sim.pools) - set(settings.pools))
    if unknown:
        raise ConfigError([f"{SIMULATE}.pools.{unknown[0]}: no such pool"])
    pools = []
    for pool_name, pool in settings.pools.items():
        model = sim.pools.get(pool_name, PoolModelSettings())
        pools.append(SimPool(
            spec=settings.pool_spec(pool_name),
            model=PoolModel(**model.model_dump()),
            idle_seconds=float(pool.worker_idle_seconds),
            exit_after_runs=pool.worker_exit_after_num_runs,
            cancel_stuck=pool.cancel_stuck_workers,
        ))  # fmt: skip
    return Scenario(
        name=name, pools=tuple(pools), sleep_time=settings.sleep_time, quota=sim.quota,
        drain_seconds=sim.drain_seconds, sample_seconds=sim.sample_seconds, seed=seed,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    scenario: Scenario
    sweep_value: Any = None


def variants(
    sources: Sequence[Source],
    policies: Sequence[str],
    sweep: tuple[str, tuple[Any, ...]] | None,
    seed: int,
) -> list[Variant]:
    """Every combination of configuration, policy and sweep value, each a named scenario."""
    out: list[Variant] = []
    values: tuple[Any, ...] = sweep[1] if sweep else (None,)
    for source in sources:
        for policy in policies or ("",):
            base = apply_setting(source.table, "policy", policy) if policy else source.table
            for value in values:
                table = apply_setting(base, sweep[0], value) if sweep else base
                parts = [source.label] if len(sources) > 1 else []
                parts += [policy] if policy else []
                parts += [f"{sweep[0]}={_text(value)}"] if sweep else []
                name = " ".join(parts) or source.label
                out.append(Variant(name, scenario(name, table, seed), value))
    return out


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
