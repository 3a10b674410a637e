"""The keyword language of ``GET /rest/bundles``, the parts a worker manager uses.

Each ``keywords`` query value is one keyword:

* ``.mine``, ``.count``, ``.limit=N`` and ``.offset=N`` (``.limit`` defaults
  to ``SEARCH_RESULTS_LIMIT``); any other ``.``-keyword is a 400;
* ``key=.sort`` / ``key=.sort-`` sorts ascending / descending on ``key``;
* ``key=a,b`` keeps bundles whose field or metadata ``key`` matches one of
  the patterns, where ``.*`` is a wildcard (SQL ``LIKE``) and anything else
  is compared exactly;
* a bare word keeps bundles whose uuid starts with it or whose name holds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from codalab_scaler.simulator.model import SimBundle
from codalab_scaler.simulator.wire import Answer, text_response

SEARCH_RESULTS_LIMIT = 10


@dataclass(slots=True)
class Search:
    """The ``keywords`` of one ``GET /rest/bundles`` request, parsed."""

    mine: bool = False
    count: bool = False
    limit: int = SEARCH_RESULTS_LIMIT
    offset: int = 0
    sort: tuple[str, bool] | None = None
    filters: list[tuple[str, list[str]]] = field(default_factory=list)
    words: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, keywords: list[str]) -> Search:
        """Read the ``keywords`` values of one request; raises ``Answer`` (400) on a bad one."""
        search = cls()
        for keyword in keywords:
            key, has_value, value = keyword.partition("=")
            if key == ".mine" and not has_value:
                search.mine = True
            elif key == ".count" and not has_value:
                search.count = True
            elif key in (".limit", ".offset") and has_value:
                if not value.isdigit():
                    raise Answer(text_response(400, f"Invalid value for {key}: {value}"))
                setattr(search, key[1:], int(value))
            elif key.startswith("."):
                raise Answer(text_response(400, f"Unknown keyword: {keyword}"))
            elif has_value and value in (".sort", ".sort-"):
                search.sort = (key, value == ".sort-")
            elif has_value:
                search.filters.append((key, value.split(",")))
            elif keyword:
                search.words.append(keyword)
        return search

    def matches(self, bundle: SimBundle, caller: str | None) -> bool:
        """Whether ``bundle`` passes ``.mine``, the filters and the words (not visibility)."""
        if self.mine and bundle.owner != caller:
            return False
        for key, patterns in self.filters:
            value = _field(bundle, key)
            if value is None or not any(_like(value, pattern) for pattern in patterns):
                return False
        name = str(bundle.metadata.get("name", ""))
        return all(bundle.uuid.startswith(word) or word in name for word in self.words)


def sort_value(row: tuple[SimBundle | None, dict[str, object]], key: str) -> str:
    """The ``key=.sort`` key of a search row: a bundle, or a raw resource (sorted by id only)."""
    bundle, resource = row
    if bundle is not None:
        return _field(bundle, key) or ""
    raw_id = resource.get("id")
    return raw_id if key in ("id", "uuid") and isinstance(raw_id, str) else ""


def _field(bundle: SimBundle, key: str) -> str | None:
    """A bundle field or metadata value as the text the database compares."""
    top = {"uuid": bundle.uuid, "id": bundle.uuid, "state": bundle.state, "owner": bundle.owner}
    top |= {"command": bundle.command, "bundle_type": "run"}
    if key in top:
        return top[key]
    if key not in bundle.metadata:
        return None
    value = bundle.metadata[key]
    return "" if value is None else str(value)


def _like(value: str, pattern: str) -> bool:
    if ".*" not in pattern:
        return value == pattern
    regex = ".*".join(re.escape(part) for part in pattern.split(".*"))
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None
