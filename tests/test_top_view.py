"""The top view's rendering: a pure function of ``/status`` documents, snapshot-tested.

The stored fixture was captured from a live scaler (``tests/top_snapshot.py``
says how to capture it again and how to update the expected text); the live
test renders what a running app answers now.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from codalab_scaler.entry.top_view import (
    HISTORY_SAMPLES,
    SPARK_WIDTH,
    History,
    render,
    render_text,
    sparkline,
)
from tests.top_snapshot import (
    BIG_BUNDLE_CPUS,
    STATUS_JSON,
    STATUS_TXT,
    live_scaler,
    render_fixture,
    wait_settled,
)


def _row(text: str, first: str) -> list[str]:
    """The cells of the table line whose first cell is ``first``."""
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no line starting with {first!r} in:\n{text}")


def test_the_stored_status_renders_to_the_stored_text() -> None:
    documents = json.loads(STATUS_JSON.read_text())
    expected = STATUS_TXT.read_text()
    assert render_fixture(documents) == expected, (
        "the top view changed; if on purpose: .venv/bin/python -m tests.top_snapshot update"
    )


def test_the_stored_text_shows_what_the_stored_status_says() -> None:
    """The snapshot is not just stable: its numbers are the document's."""
    last: dict[str, Any] = json.loads(STATUS_JSON.read_text())[-1]
    text = STATUS_TXT.read_text()
    for name, pool in last["pools"].items():
        planner = pool["planner"]
        cells = _row(text, name)
        assert cells[1] == planner["policy"]
        # pool, policy, "4 cpu 8 GiB" (4 cells), routed, placed, booting, serving, idle
        assert int(cells[6]) == planner["counted_bundles"]
        assert int(cells[8]) == len(planner["workers"]["booting"])
        assert int(cells[9]) == len(planner["workers"]["serving"])
        assert int(cells[10]) == len(planner["workers"]["idle"])
    assert f"unroutable bundles: {last['bundles']['unroutable_count']}" in text


async def test_a_live_scaler_status_renders_every_part(tmp_path: Path) -> None:
    async with live_scaler(tmp_path) as base:
        status = await wait_settled(base)
    history = History()
    history.add(status, 0.0)
    text = render_text(render(status, history, url=f"{base}/status"))
    assert f"codalab-scaler top {base}/status  healthy" in text
    small, big, broken = _row(text, "small"), _row(text, "big"), _row(text, "broken")
    assert small[1] == big[1] == broken[1] == "fast"
    assert small[2:6] == ["1", "cpu", "2", "GiB"]
    assert big[2:6] == ["4", "cpu", "8", "GiB"]
    assert int(small[9]) == 2
    assert int(big[9]) == 1
    for pool in status["pools"].values():  # the exact counts agree with lists this short
        planner = pool["planner"]
        assert planner["worker_counts"] == {k: len(v) for k, v in planner["workers"].items()}
    assert "backing_off" in broken
    assert "x1" in broken
    rows = status["bundles"]["staged"]
    uuid = next(r["uuid"] for r in rows if (r["unroutable"] or {}).get("reason") == "too_large")
    too_large = _row(text, uuid)
    assert " ".join(too_large[1:]).startswith(
        f"too_large cpus: {BIG_BUNDLE_CPUS} requested, largest offered 4"
    )
    assert "pools_at_max" in text


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], ""),
        ([0, 0], "▁▁"),
        ([1, 2, 4, 8], "▂▃▅█"),
        ([None, 3, 0], " █▁"),
        ([None, None], "  "),
        ([5], "█"),
    ],
)
def test_sparkline(values: list[int | None], expected: str) -> None:
    assert sparkline(values) == expected


def test_a_long_sparkline_groups_samples_and_keeps_a_short_peak() -> None:
    line = sparkline([0] * 200 + [7] + [0] * 99)
    assert len(line) == SPARK_WIDTH
    assert line.count("█") == 1
    assert set(line) == {"▁", "█"}


def test_history_keeps_the_last_samples_per_pool() -> None:
    history = History()
    doc = {"pools": {"a": {"planner": {"counted_bundles": 3, "workers": {"serving": ["j1"]}}}},
           "bundles": {"unroutable_count": 2}}  # fmt: skip
    for second in range(HISTORY_SAMPLES + 10):
        history.add(doc, float(second))
    assert len(history.samples) == HISTORY_SAMPLES
    assert history.series("a", 0) == [3] * HISTORY_SAMPLES
    assert history.series("b", 1) == [None] * HISTORY_SAMPLES
    assert history.span_seconds() == HISTORY_SAMPLES - 1


def test_malformed_parts_are_shown_as_unknown_or_skipped_never_a_crash() -> None:
    status: dict[str, Any] = {
        "healthy": "yes",
        "pools": {
            "junk": "not a pool",
            "odd": {
                "planner": {"counted_bundles": "many", "workers": None, "tokens": True},
                "worker_shape": {"cpus": None, "memory_mb": 1000},
                "decision": {"launch": 1, "reason": "staged_work", "blocked_by": "x"},
            },
        },
        "bundles": {
            "staged": [
                1,
                None,
                {"uuid": "u1", "unroutable": {"reason": "too_large", "resource": "gpus"}},
            ]
        },
        "workers_info": {"error": "ClientConnectorError"},
    }
    history = History()
    history.add(status, 0.0)
    text = render_text(render(status, history, url="http://x/status"))
    assert "UNHEALTHY" in text
    odd = _row(text, "odd")
    assert odd[1:6] == ["?", "?", "cpu", "1000", "MiB"]  # no policy, no cpus
    assert "launch 1: staged_work" in text
    assert "too_large gpus: ? requested, largest offered ?" in " ".join(_row(text, "u1")[1:])
    assert "! workers/info: ClientConnectorError" in text
    assert "! unreadable pool entries skipped: junk" in text


def test_before_the_first_answer_and_while_unreachable() -> None:
    waiting = render_text(render(None, History(), url="http://x/status"))
    assert "waiting for the first status" in waiting
    status = json.loads(STATUS_JSON.read_text())[-1]
    down = render_text(
        render(status, History(), url="http://x/status", unreachable="12:00:00 UTC (refused)")
    )
    assert "unreachable since 12:00:00 UTC (refused); the last status read:" in down
    assert _row(down, "small")[1] == "fast"  # the last status stays on screen


def test_numbers_json_reads_as_infinite_or_nan_are_unknown_never_a_crash() -> None:
    """``json`` reads ``Infinity``, ``NaN`` and ``1e400``; ``int`` of them raises."""
    status = json.loads(
        '{"healthy": true, "snapshot_version": NaN,'
        ' "pools": {"p": {"planner": {"policy": "fast", "counted_bundles": Infinity,'
        ' "needed_workers": -Infinity, "tokens": 1e400, "backoff_failures": NaN},'
        ' "worker_shape": {"cpus": NaN, "gpus": Infinity, "memory_mb": 1e400},'
        ' "policy": {"max_workers": 1e400}, "decision": {"launch": Infinity, "reason": "r"}}},'
        ' "bundles": {"unroutable_count": Infinity, "staged": []}}'
    )
    history = History()
    history.add(status, 0.0)
    text = render_text(render(status, history, url="http://x/status"))
    assert "snapshot ?," in text
    p = _row(text, "p")
    # pool, policy, "? cpu ? mem" (4 cells), routed, placed, boot, serve, idle, stuck, max, needs,
    # tokens, backoff, decision
    assert p[:7] == ["p", "fast", "?", "cpu", "?", "mem", "?"]
    assert p[12:16] == ["?", "?", "?", "-"]
    assert history.samples[-1].pools["p"] == (0, 0)
    assert history.samples[-1].unroutable == 0


def test_strings_from_the_status_are_shown_as_they_are_not_read_as_markup() -> None:
    """A pool, policy, uuid, reason or holder like ``[/x]`` would make Rich raise MarkupError."""
    status: dict[str, Any] = {
        "healthy": True,
        "pools": {
            "[/pool]": {
                "planner": {"policy": "[/policy]", "counted_bundles": 1},
                "decision": {"reason": "[/why]"},
            },
        },
        "bundles": {
            "unroutable_count": 1,
            "staged": [
                {"uuid": "[/uuid]", "unroutable": {"reason": "[/reason]", "held_by": "[/held]"}},
            ],
        },
        "problems": ["[/problem]"],
    }
    history = History()
    history.add(status, 0.0)
    text = render_text(render(status, history, url="http://x/status"))
    assert _row(text, "[/pool]")[1:2] == ["[/policy]"]
    assert "[/why]" in " ".join(_row(text, "[/pool]"))
    assert "unroutable bundles: 1 ([/reason] 1)" in text
    assert _row(text, "[/uuid]")[1:5] == ["[/reason]", "held", "by", "[/held]"]
    assert "! [/problem]" in text


def test_exact_counts_are_shown_rather_than_the_cut_lists_lengths() -> None:
    """A scaler cuts its worker lists and staged rows at 100; top shows its exact counts."""
    ids = [f"job-{i}" for i in range(100)]
    planner = {
        "policy": "fast",
        "counted_bundles": 250,
        "workers": {"booting": ids, "serving": ids, "idle": ids, "stuck": ids},
        "worker_counts": {"booting": 101, "serving": 150, "idle": 120, "stuck": 102},
        "placed_counts": {"serving": 130, "booting": 101, "new": 19},
    }
    rows = [{"uuid": f"u{i:03}", "pool": "p", "placed": {"where": "serving"}} for i in range(100)]
    status: dict[str, Any] = {"pools": {"p": {"planner": planner}}, "bundles": {"staged": rows}}
    history = History()
    history.add(status, 0.0)
    p = _row(render_text(render(status, history, url="http://x/status")), "p")
    # pool, policy, "? cpu ? mem" (4 cells), routed, placed, booting, serving, idle, stuck
    assert p[6:12] == ["250", "130/101/19", "101", "150", "120", "102"]
    assert history.samples[-1].pools["p"] == (250, 150)
