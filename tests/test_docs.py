"""The README's references match the code: every metric and setting documented, none invented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from codalab_scaler.config.settings import PoolSettings, Settings
from codalab_scaler.sources.backends.registry import BACKEND_KINDS
from tests.harness import exported

README = (Path(__file__).parent.parent / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n#", start + len(title))
    return README[start : end if end != -1 else None]


def first_column(text: str) -> set[str]:
    """Names in backticks in the first column of a markdown table."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return names


def exported_metric_names() -> set[str]:
    names = set()
    for family in exported("p").collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    return names


def test_metrics_reference_lists_exactly_the_exported_metrics() -> None:
    documented = first_column(section("### Metrics reference"))
    assert documented == exported_metric_names()


def test_settings_reference_lists_every_setting() -> None:
    service = first_column(section("### Settings reference: service"))
    pool = first_column(section("### Settings reference: per pool"))
    assert service == set(Settings.model_fields)
    assert pool == set(PoolSettings.model_fields)


@pytest.mark.parametrize(("kind", "model"), [(k.name, k.settings) for k in BACKEND_KINDS])
def test_each_backend_section_lists_its_settings(kind: str, model: type[BaseModel]) -> None:
    assert first_column(section(f"### Backend `{kind}`")) == set(model.model_fields)


def test_settings_reference_is_up_to_date() -> None:
    from docs.generate import REFERENCE, settings_markdown

    written = (REFERENCE / "settings.md").read_text()
    assert written == settings_markdown(), (
        "docs/reference/settings.md is out of date: run `python docs/generate.py`"
    )


def test_every_setting_has_a_description() -> None:
    models: list[type[BaseModel]] = [Settings, PoolSettings]
    models += [kind.settings for kind in BACKEND_KINDS]
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
