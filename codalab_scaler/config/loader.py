"""The one loader: flags over environment over TOML over defaults, in one pass.

``load_settings(flags, environ, toml)`` takes every source as a plain value;
nothing else in the package reads the environment.  The environment gives:

- ``CODALAB_SCALER_<FIELD>``, nested with ``__``
  (``CODALAB_SCALER_POOLS__GPU__MAX_WORKERS=6``); names are case-blind and a
  list or table value is JSON;
- ``CODALAB_USERNAME`` / ``CODALAB_PASSWORD``, as strong as flags (unless a
  password file is given, which wins);
- the defaults that depend on it, per backend kind (``CODALAB_VERSION`` for
  the AWS image, ``XDG_STATE_HOME``/``HOME`` for the local state dir...).
"""

from __future__ import annotations

import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from codalab_scaler.config.settings import (
    PASSWORD_FILE_PROBLEM,
    Settings,
    format_errors,
)
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.sources.backends.registry import DEFAULT_KIND, backend_kind, kind_names

__all__ = ["ENV_PREFIX", "environment_values", "load_settings", "read_config_file"]

ENV_PREFIX = "CODALAB_SCALER_"
ENV_NESTING = "__"
USERNAME_VARIABLE = "CODALAB_USERNAME"
PASSWORD_VARIABLE = "CODALAB_PASSWORD"  # noqa: S105 - the variable's name, not a password
PASSWORD_FILE_LINES = 2  # the username, then the password


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file ``--config`` names, parsed; ``ConfigError`` if unreadable or invalid."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path} ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config: {path} is not valid TOML ({exc})"]) from None


def load_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    toml: Mapping[str, Any] | None = None,
) -> Settings:
    """Validate the settings: ``flags`` over ``environ`` over ``toml`` over the defaults.

    ``flags`` and ``toml`` are nested like the TOML file (``pools.<name>...``).
    """
    given = dict(flags)
    if "password_file" not in given:
        for key, variable in (("username", USERNAME_VARIABLE), ("password", PASSWORD_VARIABLE)):
            if variable in environ and key not in given:
                given[key] = environ[variable]
    values = _merge(_merge(dict(toml or {}), environment_values(environ)), given)
    problem = None
    if values.get("password_file") is not None:
        try:
            values["username"], values["password"] = _read_password_file(
                Path(values["password_file"])
            )
        except ValueError as exc:
            problem = str(exc)
    values = _with_environ_defaults(values, environ)
    try:
        return Settings.model_validate(values, context={PASSWORD_FILE_PROBLEM: problem})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def _read_password_file(path: Path) -> tuple[str, SecretStr]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read ({exc.strerror})") from None
    if len(lines) < PASSWORD_FILE_LINES or not lines[0].strip() or not lines[1]:
        raise ValueError("needs the username on line 1, the password on 2")
    return lines[0].strip(), SecretStr(lines[1])


def _with_environ_defaults(values: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Each pool's backend table with the defaults its kind takes from ``environ``."""
    pools = values.get("pools")
    if not isinstance(pools, Mapping):
        return values
    filled: dict[str, Any] = {}
    for name, pool in pools.items():
        filled[name] = pool
        if isinstance(pool, Mapping):
            backend = pool.get("backend", {})
            if isinstance(backend, Mapping):
                kind = backend.get("kind", DEFAULT_KIND)
                if kind in kind_names():
                    defaults = backend_kind(kind).environ_defaults(environ)
                    filled[name] = {**pool, "backend": {**defaults, **backend, "kind": kind}}
    return {**values, "pools": filled}


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; tables are merged key by key, anything else replaced.

    A backend table of another kind replaces the one below instead: ``local``
    after a TOML pool of kind ``aws-batch`` means a local backend, not an
    aws-batch table with a local kind.
    """
    merged = dict(base)
    for key, value in over.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = value if _other_kind(key, old, value) else _merge(dict(old), value)
        else:
            merged[key] = value
    return merged


def _other_kind(key: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """``new`` is a backend table naming a different kind than ``old`` (unnamed: the default)."""
    return key == "backend" and "kind" in new and new["kind"] != old.get("kind", DEFAULT_KIND)


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``CODALAB_SCALER_*`` variables as a nested settings table."""
    found: list[tuple[list[str], Any]] = []
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split(ENV_NESTING)
        if path[0] not in Settings.model_fields or not all(path):
            continue
        value: Any = raw
        if _is_table_or_list(_annotation(path)):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                raise ConfigError([f"{name}: not valid JSON"]) from None
        found.append((path, value))
    values: dict[str, Any] = {}
    for path, value in sorted(found, key=lambda item: len(item[0])):  # a whole table, then keys
        nested = value
        for part in reversed(path):
            nested = {part: nested}
        values = _merge(values, nested)
    return values


def _annotation(path: list[str]) -> Any:
    """The type the setting at ``path`` holds, as far as the models say (``None`` if unknown)."""
    annotation: Any = Settings
    for part in path:
        options = [_strip(a) for a in _members(_strip(annotation))]
        models = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if fields:
            annotation = fields[0].annotation
        elif len(options) == 1 and typing.get_origin(options[0]) is dict:
            annotation = typing.get_args(options[0])[1]
        else:
            return None
    return annotation


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _strip(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> ``X``."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _strip(typing.get_args(annotation)[0])
    args = [a for a in _members(annotation) if a is not type(None)]
    if len(args) == 1 and args[0] is not annotation:
        return _strip(args[0])
    return annotation


def _is_table_or_list(annotation: Any) -> bool:
    for raw in _members(_strip(annotation)):
        member = _strip(raw)
        if typing.get_origin(member) in (list, dict, set, tuple):
            return True
        if isinstance(member, type) and issubclass(member, BaseModel):
            return True
    return False
