"""What ``codalab-scaler top`` draws: a pure function of the ``/status`` JSON and its history.

Nothing here reads a clock, a socket or the package's other modules: the
status document (``service/status.py``) is the whole input, so a stored
document renders to the same text every time (``render_text`` is what the
snapshot test compares). The document comes from another process, maybe
another version: every field is read defensively, a missing or malformed
one shows as ``?`` and an unreadable pool entry is skipped and counted.
"""

from __future__ import annotations

import io
import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

SPARK_WIDTH = 60  # marks per sparkline; older samples are grouped, a group shows its largest
HISTORY_SAMPLES = 300  # five minutes at the default one refresh a second
UNROUTABLE_ROWS = 10  # bundles listed one per line; the rest are counted by reason
_BARS = "▁▂▃▄▅▆▇█"
_UNKNOWN = "?"


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def _int(value: object) -> int | None:
    """A count from JSON; ``None`` when absent or not a finite number (``bool`` is not a count).

    Python's ``json`` reads ``Infinity``, ``NaN`` and ``1e400`` (infinite) as
    floats, which ``int`` refuses: those are unknown too.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value)


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _show(value: object) -> str:
    return _UNKNOWN if value is None else str(value)


def _row(table: Table, *cells: str | Text) -> None:
    """Add a row whose ``str`` cells are plain text: Rich would read them as markup.

    Pool names, uuids, reasons and worker ids come from another process: one
    such as ``[/x]`` would raise ``MarkupError`` (or ``[red]`` restyle a cell).
    """
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def _worker_count(planner: Mapping[str, Any], state: str) -> int:
    """A pool's workers in ``state``: the exact count, or (older scalers) its cut list's length."""
    exact = _int(_dict(planner.get("worker_counts")).get(state))
    return exact if exact is not None else len(_list(_dict(planner.get("workers")).get(state)))


@dataclass(frozen=True, slots=True)
class Sample:
    """One refresh's numbers: per pool (bundles routed, workers serving); all pools' unroutable."""

    at: float
    pools: Mapping[str, tuple[int, int]]
    unroutable: int


@dataclass
class History:
    """The last ``HISTORY_SAMPLES`` refreshes that got an answer, oldest first."""

    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))

    def add(self, status: Mapping[str, Any], at: float) -> None:
        """Record ``status`` as seen at ``at`` (seconds on any clock that only goes forward)."""
        pools: dict[str, tuple[int, int]] = {}
        for name, pool in _dict(status.get("pools")).items():
            planner = _dict(_dict(pool).get("planner"))
            routed = _int(planner.get("counted_bundles")) or 0
            serving = _worker_count(planner, "serving")
            pools[str(name)] = (routed, serving)
        unroutable = _int(_dict(status.get("bundles")).get("unroutable_count")) or 0
        self.samples.append(Sample(at, pools, unroutable))

    def series(self, pool: str, index: int) -> list[int | None]:
        return [s.pools[pool][index] if pool in s.pools else None for s in self.samples]

    def span_seconds(self) -> float:
        return self.samples[-1].at - self.samples[0].at if len(self.samples) > 1 else 0.0


def sparkline(values: Sequence[int | None], width: int = SPARK_WIDTH) -> str:
    """``values`` as at most ``width`` bars scaled to their maximum; ``None`` (no sample) is blank.

    With more values than ``width`` each bar stands for a group of consecutive
    values and shows the group's largest, so a short peak is never lost.
    """
    if not values:
        return ""
    group = math.ceil(len(values) / width)
    bars: list[int | None] = []
    for start in range(0, len(values), group):
        known = [v for v in values[start : start + group] if v is not None]
        bars.append(max(known) if known else None)
    top = max((v for v in bars if v is not None), default=0)
    out = []
    for v in bars:
        if v is None:
            out.append(" ")
        elif v <= 0 or top <= 0:
            out.append(_BARS[0])
        else:
            out.append(_BARS[max(1, math.ceil(v / top * (len(_BARS) - 1)))])
    return "".join(out)


def _memory(mb: object) -> str:
    value = _int(mb)
    if value is None:
        return f"{_UNKNOWN} mem"
    return f"{value // 1024} GiB" if value % 1024 == 0 else f"{value} MiB"


def _shape(shape: Mapping[str, Any]) -> str:
    parts = [f"{_show(_int(shape.get('cpus')))} cpu"]
    gpus = _int(shape.get("gpus"))
    if gpus:
        parts.append(f"{gpus} gpu")
    parts.append(_memory(shape.get("memory_mb")))
    return " ".join(parts)


def _optional(value: object) -> str:
    """A count that a policy may not have (``null``: compat has no needs or tokens)."""
    return "-" if value is None else _show(_int(value))


def _seconds(value: object) -> str:
    number = _num(value)
    return _UNKNOWN if number is None else f"{number:.1f} s"


def _decision(decision: Mapping[str, Any]) -> Text:
    if not decision:
        return Text("-")
    launch, reason = _int(decision.get("launch")), _show(decision.get("reason"))
    text = Text(f"launch {_show(launch)}: " if launch else "", style="bold green")
    text.append(reason)
    blocked = [str(b) for b in _list(decision.get("blocked_by")) if str(b) != reason]
    if blocked:
        text.append(f" (also {', '.join(blocked)})", style="dim")
    stale = [str(s) for s in _list(decision.get("stale"))]
    if stale:
        text.append(f" stale: {', '.join(stale)}", style="yellow")
    return text


def _placements(status: Mapping[str, Any]) -> dict[str, Counter[str]]:
    """Per pool, its routed bundles by where they are placed.

    From the pool's exact ``planner.placed_counts`` where given; else
    (older scalers) counted from the staged rows, which stop at 100.
    """
    placed: dict[str, Counter[str]] = {}
    for row in _list(_dict(status.get("bundles")).get("staged")):
        pool, where = _dict(row).get("pool"), _dict(_dict(row).get("placed")).get("where")
        if isinstance(pool, str):
            placed.setdefault(pool, Counter())[str(where) if where else "unplaced"] += 1
    for name, pool in _dict(status.get("pools")).items():
        exact = _dict(_dict(_dict(pool).get("planner")).get("placed_counts"))
        for where, value in exact.items():
            count = _int(value)
            if count is not None:
                placed.setdefault(str(name), Counter())[str(where)] = count
    return placed


def _pools_table(status: Mapping[str, Any], skipped: list[str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column, justify in (
        ("pool", "left"), ("policy", "left"), ("shape", "left"), ("routed", "right"),
        ("placed s/b/n", "right"), ("boot", "right"), ("serve", "right"), ("idle", "right"),
        ("stuck", "right"), ("max", "right"), ("needs", "right"), ("tokens", "right"),
        ("backoff", "right"), ("last decision", "left"),
    ):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    placed = _placements(status)
    for name, raw in _dict(status.get("pools")).items():
        if not isinstance(raw, Mapping):
            skipped.append(str(name))
            continue
        planner = _dict(raw.get("planner"))
        counts = placed.get(str(name), Counter())
        backoff = _num(planner.get("backoff_seconds"))
        failures = _int(planner.get("backoff_failures")) or 0
        backoff_text = (
            Text(f"{backoff:.1f} s x{failures}", style="bold red") if backoff else Text("-")
        )
        stuck = _worker_count(planner, "stuck")
        _row(
            table,
            str(name),
            _show(planner.get("policy")),
            _shape(_dict(raw.get("worker_shape"))),
            _show(_int(planner.get("counted_bundles"))),
            f"{counts['serving']}/{counts['booting']}/{counts['new']}",
            str(_worker_count(planner, "booting")),
            str(_worker_count(planner, "serving")),
            str(_worker_count(planner, "idle")),
            Text(str(stuck), style="bold red" if stuck else ""),
            _show(_int(_dict(raw.get("policy")).get("max_workers"))),
            _optional(planner.get("needed_workers")),
            _optional(planner.get("tokens")),
            backoff_text,
            _decision(_dict(raw.get("decision"))),
        )
    return table


def _history(history: History, pools: Sequence[str]) -> Table:
    span = history.span_seconds()
    minutes = span / 60
    title = f"history, last {minutes:.1f} min" if minutes >= 1 else f"history, last {span:.0f} s"
    table = Table(box=None, show_header=False, pad_edge=False, title=title, title_justify="left")
    table.add_column("pool", no_wrap=True)
    table.add_column("series", no_wrap=True)
    table.add_column("sparkline", no_wrap=True, min_width=SPARK_WIDTH)
    table.add_column("peak", no_wrap=True)
    for name in pools:
        for index, series in enumerate(("routed bundles", "serving workers")):
            values = history.series(name, index)
            peak = max((v for v in values if v is not None), default=0)
            _row(table, name if index == 0 else "", series, sparkline(values), f"max {peak}")
    unroutable = [s.unroutable for s in history.samples]
    if any(unroutable):
        most = f"max {max(unroutable)}"
        _row(table, Text("all", style="yellow"), "unroutable", sparkline(unroutable), most)
    return table


def _unroutable_detail(info: Mapping[str, Any]) -> str:
    parts = []
    if info.get("resource") is not None:
        parts.append(
            f"{info['resource']}: {_show(info.get('requested'))} requested, "
            f"largest offered {_show(info.get('largest'))}"
        )
    if info.get("held_by") is not None:
        parts.append(f"held by {info['held_by']}")
    return "; ".join(parts)


def _unroutable(status: Mapping[str, Any]) -> RenderableType | None:
    bundles = _dict(status.get("bundles"))
    rows = [_dict(r) for r in _list(bundles.get("staged")) if _dict(_dict(r).get("unroutable"))]
    total = _int(bundles.get("unroutable_count"))
    if not rows and not total:
        return None
    by_reason = Counter(str(_dict(r["unroutable"]).get("reason")) for r in rows)
    summary = ", ".join(f"{reason} {n}" for reason, n in sorted(by_reason.items()))
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        # A Text title, not markup (it holds reasons); Rich gives it no title_style: its own.
        title=Text(f"unroutable bundles: {_show(total)} ({summary})", style="bold yellow"),
        title_justify="left",
    )
    for column in ("bundle", "reason", "detail", "waiting"):
        table.add_column(column, justify="right" if column == "waiting" else "left")
    rows.sort(key=lambda r: (-(_num(r.get("waiting_seconds")) or 0.0), str(r.get("uuid"))))
    for row in rows[:UNROUTABLE_ROWS]:
        info = _dict(row["unroutable"])
        _row(
            table,
            str(row.get("uuid", _UNKNOWN)),
            str(info.get("reason", _UNKNOWN)),
            _unroutable_detail(info),
            _seconds(row.get("waiting_seconds")),
        )
    if len(rows) > UNROUTABLE_ROWS:
        _row(table, f"... {len(rows) - UNROUTABLE_ROWS} more", "", "", "")
    return table


def _header(status: Mapping[str, Any], url: str) -> Text:
    text = Text("codalab-scaler top ", style="bold")
    text.append(url)
    healthy = status.get("healthy")
    text.append("  ")
    text.append(*(("healthy", "green") if healthy is True else ("UNHEALTHY", "bold red")))
    lead = _dict(status.get("leadership"))
    if lead:
        text.append(f"  {_show(lead.get('role'))} (leader: {_show(lead.get('leader'))})")
    if status.get("dry_run") is True:
        text.append("  dry run", style="yellow")
    version = _show(_int(status.get("snapshot_version")))
    text.append(f"  snapshot {version}, {_seconds(status.get('snapshot_age_seconds'))} old")
    return text


def _problems(status: Mapping[str, Any]) -> list[str]:
    problems = [str(p) for p in _list(status.get("problems"))]
    views = {"workers/info": _dict(status.get("workers_info"))}
    for name, pool in _dict(status.get("pools")).items():
        views[f"{name} bundles"] = _dict(_dict(pool).get("bundles"))
        views[f"{name} jobs"] = _dict(_dict(pool).get("jobs"))
    problems += [f"{what}: {view['error']}" for what, view in views.items() if view.get("error")]
    return problems


def render(
    status: Mapping[str, Any] | None,
    history: History,
    *,
    url: str,
    unreachable: str | None = None,
) -> RenderableType:
    """The whole view: header, pools, history, unroutable bundles, problems.

    ``status`` is the last document that was read (``None`` before the
    first); ``unreachable`` says since when and why the scaler does not
    answer (the caller formats it: this function reads no clock).
    """
    parts: list[RenderableType] = []
    if status is None:
        parts.append(Text(f"codalab-scaler top {url}  waiting for the first status", style="bold"))
        status = {}
    else:
        parts.append(_header(status, url))
    if unreachable is not None:
        note = f"unreachable since {unreachable}"
        parts.append(Text(note + ("; the last status read:" if status else ""), style="bold red"))
    skipped: list[str] = []
    parts.append(_pools_table(status, skipped))
    pools = [str(n) for n, p in _dict(status.get("pools")).items() if isinstance(p, Mapping)]
    parts.append(Text("placed s/b/n: routed bundles placed on serving / booting / new workers",
                      style="dim"))  # fmt: skip
    if history.samples:
        parts.append(_history(history, pools))
    table = _unroutable(status)
    if table is not None:
        parts.append(table)
    problems = _problems(status)
    if skipped:
        problems.append(f"unreadable pool entries skipped: {', '.join(skipped)}")
    parts.extend(Text(f"! {problem}", style="red") for problem in problems)
    parts.append(Text("q: quit", style="dim"))
    return Group(*parts)


def render_text(renderable: RenderableType, width: int = 140) -> str:
    """``renderable`` as plain text, ``width`` columns wide, no colour: what a snapshot compares."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False, record=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"
