"""The backend registry: one list of kinds, from which the rest is derived."""

from __future__ import annotations

import inspect
from pathlib import Path

from codalab_scaler.config.settings import PoolSettings
from codalab_scaler.entry.flags import SUBCOMMANDS, TOOLS
from codalab_scaler.sources.backends import Backend, WorkerCredentials, open_backend
from codalab_scaler.sources.backends.local.backend import LocalBackend
from codalab_scaler.sources.backends.local.settings import LocalBackendSettings
from codalab_scaler.sources.backends.registry import BACKEND_KINDS, DEFAULT_KIND, kind_names


def test_kinds_are_named_once_and_each_is_a_subcommand() -> None:
    names = [kind.name for kind in BACKEND_KINDS]
    assert len(set(names)) == len(names)
    assert set(names) == set(kind_names()) == SUBCOMMANDS - set(TOOLS)
    for kind in BACKEND_KINDS:
        assert kind.settings.model_fields["kind"].default == kind.name


def test_every_kind_opens_through_its_package() -> None:
    for kind in BACKEND_KINDS:
        assert callable(kind.opener())
        assert callable(kind.factory())


def test_the_protocol_is_what_a_pool_calls() -> None:
    members = {name for name in vars(Backend) if not name.startswith("_")}
    assert members == {"list_jobs", "launch", "describe_launch", "cancel"}


def test_every_kind_keeps_the_whole_protocol() -> None:
    # The registry hands backends on untyped: mypy alone would not see a missing member.
    members = {name for name in vars(Backend) if not name.startswith("_")}
    for kind in BACKEND_KINDS:
        made = inspect.signature(kind.factory(), eval_str=True).return_annotation
        missing = {m for m in members if not inspect.iscoroutinefunction(getattr(made, m, None))}
        assert missing == set(), kind.name


async def test_open_backend_dispatches_by_kind(tmp_path: Path) -> None:
    settings = LocalBackendSettings(state_dir=tmp_path)
    options = PoolSettings().worker_options("https://cl.example")
    async with open_backend("p", settings, options, WorkerCredentials("u", "pw")) as backend:
        assert isinstance(backend, LocalBackend)
        assert await backend.list_jobs() == []


def test_a_pool_without_backend_is_the_default_kind() -> None:
    assert PoolSettings().backend.kind == DEFAULT_KIND == "local"
