"""The docs follow the code: references generated and up to date, a page per backend, live links."""

from __future__ import annotations

import re
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from codalab_scaler.config.settings import PoolSettings, Settings
from codalab_scaler.sources.backends.registry import BACKEND_KINDS, kind_names
from tests.harness import exported

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
README_MAX_LINES = 260
# [text](target): the target up to a space, a closing parenthesis or a fragment.
LINK = re.compile(r"\]\(([^)\s#]*)(?:#[^)\s]*)?\)")


# docs/generate.py run as a script's namespace (``docs`` is not a package).
GENERATE: dict[str, Any] = runpy.run_path(str(DOCS / "generate.py"))


def metrics_markdown() -> str:
    render: Callable[[], str] = GENERATE["metrics_markdown"]
    return render()


def generated_names() -> set[str]:
    """The files ``docs/generate.py`` writes into ``docs/reference/``."""
    generated: dict[str, Callable[[], str]] = GENERATE["GENERATED"]
    return set(generated)


def test_metrics_reference_is_up_to_date() -> None:
    written = (DOCS / "reference" / "metrics.md").read_text()
    assert written == metrics_markdown(), (
        "docs/reference/metrics.md is out of date: run `python docs/generate.py`"
    )


def exported_metric_names() -> set[str]:
    """Names as a real service's registry exports them (counters ``_total``, info ``_info``)."""
    names = set()
    for family in exported("p").collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    return names


def test_metrics_reference_lists_exactly_the_exported_metrics() -> None:
    documented = set(re.findall(r"^\| `(\w+)` \|", metrics_markdown(), flags=re.MULTILINE))
    assert documented == exported_metric_names()


@pytest.mark.parametrize("kind", sorted(kind_names()))
def test_every_backend_has_its_page(kind: str) -> None:
    page = DOCS / "backends" / f"{kind}.md"
    assert page.is_file(), f"backend {kind!r} has no page {page.relative_to(ROOT)}"
    assert page.read_text().startswith(f"# Backend `{kind}`\n")


def test_no_page_for_a_backend_that_does_not_exist() -> None:
    assert {page.stem for page in (DOCS / "backends").glob("*.md")} == set(kind_names())


def test_readme_is_a_front_page_that_links_every_docs_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    linked = {(ROOT / target).resolve() for target in LINK.findall(text) if target}
    pages = set(PAGES) | {DOCS / "reference" / name for name in generated_names()}
    missing = sorted(str(page.relative_to(ROOT)) for page in pages if page.resolve() not in linked)
    assert not missing, f"README.md links none of {missing}"


def _is_relative(target: str) -> bool:
    return bool(target) and not re.match(r"^[a-z][a-z0-9+.-]*:", target)


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_that_exist(page: Path) -> None:
    # A generated reference counts as present: generate.py writes it and its own
    # is-up-to-date test fails while it is missing.
    generated = {(DOCS / "reference" / name).resolve() for name in generated_names()}
    broken = [
        target
        for target in LINK.findall(page.read_text())
        if _is_relative(target)
        and not (page.parent / target).exists()
        and (page.parent / target).resolve() not in generated
    ]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def settings_markdown() -> str:
    render: Callable[[], str] = GENERATE["settings_markdown"]
    return render()


def test_settings_reference_is_up_to_date() -> None:
    written = (DOCS / "reference" / "settings.md").read_text()
    assert written == settings_markdown(), (
        "docs/reference/settings.md is out of date: run `python docs/generate.py`"
    )


def test_every_setting_has_a_description() -> None:
    models: list[type[BaseModel]] = [Settings, PoolSettings]
    models += [kind.settings for kind in BACKEND_KINDS]
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
