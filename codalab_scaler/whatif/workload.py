"""Workloads to replay: a seeded synthetic one, a CSV trace, or an SWF file (Parallel Workloads).

A workload is a tuple of ``Job``: when a run bundle is submitted (staged),
what it asks for, how long it runs once started, its ``request_queue`` tag
and its owner.  Readers take the text (the caller reads the file) and raise
``TraceError`` naming the line of the first malformed record.

CSV columns (a header line, then one bundle a line)::

    submit_seconds,cpus,gpus,memory,run_seconds,tag,owner

``submit_seconds`` from the start of the trace; ``memory`` a CodaLab size
(``2g``, ``512m``, bytes; empty means 2g as the server reads it); ``tag``
empty for none.

SWF (https://www.cs.huji.ac.il/labs/parallel/workload/swf.html): 18
whitespace-separated fields a line, ``;`` starts a comment; ``-1`` means
unknown.  Used: 2 submit time, 4 run time, 8 requested processors (else 5
allocated), 10 requested memory in KB per processor (else 7 used memory,
else 2g), 12 user id (owner ``u<id>``).  Jobs with an unknown or negative
run time or no processors (cancelled before they ran) are left out.
"""

from __future__ import annotations

import csv
import io
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from codalab_scaler.core.sizes import parse_size

DEFAULT_MEMORY = 2 * 1024**3  # the server reads an empty request_memory as 2g
CSV_COLUMNS = ("submit_seconds", "cpus", "gpus", "memory", "run_seconds", "tag", "owner")
SWF_FIELDS = 18
DAY = 86400.0


class TraceError(ValueError):
    """A malformed trace record; the message names the line."""


@dataclass(frozen=True, slots=True)
class Job:
    """One run bundle of the workload."""

    uuid: str
    submit: float
    cpus: int
    gpus: int
    memory_bytes: int
    run_seconds: float
    tag: str = ""
    owner: str = "user"


# -- synthetic ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """One kind of bundle in the synthetic mix: its request, share and median run time."""

    cpus: int
    gpus: int
    memory_mb: int
    weight: float
    median_run_seconds: float


DEFAULT_SHAPES = (
    Shape(1, 0, 2048, 0.45, 300),
    Shape(2, 0, 8192, 0.25, 600),
    Shape(4, 0, 16384, 0.15, 1200),
    Shape(4, 1, 16384, 0.15, 1800),
)


@dataclass(frozen=True, slots=True)
class Synthetic:
    """The synthetic workload's parameters (the defaults are ``--workload synthetic``).

    Submissions (each a sweep of bundles submitted together) arrive as a
    Poisson process whose rate is ``submissions_per_hour`` times a daily
    cycle (``1 + daily_amplitude * sin``, peak at ``peak_hour``) times a
    two-state Markov-modulated factor: calm (1) or bursty
    (``burst_factor``), with exponential sojourns of mean ``calm_hours`` and
    ``burst_hours``.  A submission is one bundle, or a sweep of k (uniform
    in ``sweep_sizes``) with probability ``sweep_probability``, all of one
    shape (``shapes`` by weight) and owner (``owners`` users, Zipf
    weights); each run time is lognormal around the shape's median
    (``run_sigma``), capped at ``max_run_seconds``.
    """

    days: float = 7.0
    submissions_per_hour: float = 4.0
    daily_amplitude: float = 0.8
    peak_hour: float = 15.0
    calm_hours: float = 5.0
    burst_hours: float = 0.5
    burst_factor: float = 5.0
    sweep_probability: float = 0.3
    sweep_sizes: tuple[int, ...] = (4, 8, 16)
    owners: int = 25
    run_sigma: float = 1.0
    max_run_seconds: float = 12 * 3600
    shapes: tuple[Shape, ...] = DEFAULT_SHAPES


def synthetic(params: Synthetic, seed: int) -> tuple[Job, ...]:
    """The synthetic workload of ``params``; the same seed gives the same jobs."""
    rng = random.Random(seed)  # noqa: S311 - a synthetic workload, not cryptography
    horizon = params.days * DAY
    peak_rate = params.submissions_per_hour / 3600 * (1 + params.daily_amplitude)
    peak_rate *= max(params.burst_factor, 1.0)
    owners = [f"u{i + 1:02d}" for i in range(params.owners)]
    owner_weights = [1 / (i + 1) for i in range(params.owners)]
    shape_weights = [s.weight for s in params.shapes]
    bursty, switch_at = False, rng.expovariate(1 / (params.calm_hours * 3600))
    jobs: list[Job] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak_rate)
        while t >= switch_at:  # the modulating chain's state at t
            bursty = not bursty
            mean = params.burst_hours if bursty else params.calm_hours
            switch_at += rng.expovariate(1 / (mean * 3600))
        if t >= horizon:
            break
        hour = (t / 3600) % 24
        daily = 1 + params.daily_amplitude * math.sin(
            2 * math.pi * (hour - params.peak_hour + 6) / 24
        )
        rate = params.submissions_per_hour / 3600 * daily * (params.burst_factor if bursty else 1)
        if rng.random() * peak_rate >= rate:  # thinning
            continue
        k = rng.choice(params.sweep_sizes) if rng.random() < params.sweep_probability else 1
        shape = rng.choices(params.shapes, shape_weights)[0]
        owner = rng.choices(owners, owner_weights)[0]
        mu = math.log(shape.median_run_seconds)
        for _ in range(k):
            run = min(rng.lognormvariate(mu, params.run_sigma), params.max_run_seconds)
            jobs.append(Job(
                uuid=f"0x{len(jobs):08x}", submit=round(t, 3), cpus=shape.cpus, gpus=shape.gpus,
                memory_bytes=shape.memory_mb * 1024 * 1024, run_seconds=round(max(run, 1.0), 3),
                owner=owner,
            ))  # fmt: skip
    return tuple(jobs)


# -- CSV ---------------------------------------------------------------------------------


def _memory_text(memory_bytes: int) -> str:
    mib = 1024 * 1024
    if memory_bytes % (1024 * mib) == 0:
        return f"{memory_bytes // (1024 * mib)}g"
    if memory_bytes % mib == 0:
        return f"{memory_bytes // mib}m"
    return str(memory_bytes)


def write_csv(jobs: Iterable[Job]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for job in jobs:
        writer.writerow([
            repr(job.submit), job.cpus, job.gpus, _memory_text(job.memory_bytes),
            repr(job.run_seconds), job.tag, job.owner,
        ])  # fmt: skip
    return out.getvalue()


def read_csv(text: str, source: str = "trace") -> tuple[Job, ...]:
    """Jobs of a CSV trace, sorted by submit time (stable); ``TraceError`` names a bad line."""
    lines = text.splitlines()
    if not lines or tuple(c.strip() for c in lines[0].split(",")) != CSV_COLUMNS:
        raise TraceError(f"{source}: line 1: the header must be {','.join(CSV_COLUMNS)}")
    jobs: list[Job] = []
    for number, row in enumerate(csv.reader(lines[1:]), start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            jobs.append(_csv_job(row, len(jobs)))
        except ValueError as exc:
            raise TraceError(f"{source}: line {number}: {exc}") from None
    return tuple(sorted(jobs, key=lambda j: j.submit))


def _csv_job(row: list[str], index: int) -> Job:
    if len(row) != len(CSV_COLUMNS):
        raise ValueError(f"expected {len(CSV_COLUMNS)} fields, found {len(row)}")
    submit, cpus, gpus, memory, run, tag, owner = (cell.strip() for cell in row)
    return Job(
        uuid=f"0x{index:08x}",
        submit=_seconds("submit_seconds", submit),
        cpus=_count("cpus", cpus or "1") or 1,
        gpus=_count("gpus", gpus or "0"),
        memory_bytes=_size(memory),
        run_seconds=_seconds("run_seconds", run),
        tag=tag.removeprefix("tag="),
        owner=owner or "user",
    )


def _count(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}: not a whole number: {text!r}") from None
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, not {text}")
    return value


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: not a number: {text!r}") from None
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number >= 0, not {text}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text) if text else DEFAULT_MEMORY
    except ValueError:
        raise ValueError(f"memory: not a size: {text!r}") from None


# -- SWF ---------------------------------------------------------------------------------


def read_swf(text: str, source: str = "trace") -> tuple[Job, ...]:
    """Jobs of a Standard Workload Format file; ``TraceError`` names a bad line."""
    jobs: list[Job] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        fields = stripped.split()
        if len(fields) != SWF_FIELDS:
            raise TraceError(
                f"{source}: line {number}: expected {SWF_FIELDS} fields, found {len(fields)}"
            )
        try:
            values = [float(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_float(f))
            raise TraceError(f"{source}: line {number}: not a number: {bad!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise TraceError(f"{source}: line {number}: not a finite number")
        job = _swf_job(values, len(jobs))
        if job is not None:
            jobs.append(job)
    return tuple(sorted(jobs, key=lambda j: j.submit))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _swf_job(v: list[float], index: int) -> Job | None:
    submit, run = v[1], v[3]
    cpus = int(v[7]) if v[7] > 0 else int(v[4])
    if submit < 0 or run < 0 or cpus <= 0:
        return None
    kb_per_cpu = v[9] if v[9] > 0 else v[6]
    memory = int(kb_per_cpu) * 1024 * cpus if kb_per_cpu > 0 else DEFAULT_MEMORY
    owner = f"u{int(v[11])}" if v[11] >= 0 else "user"
    return Job(f"0x{index:08x}", submit, cpus, 0, memory, run, "", owner)


def write_swf(jobs: Iterable[Job]) -> str:
    """An SWF file of ``jobs`` (gpus and tags have no SWF field and are not written).

    Owners ``u<n>`` keep their number; others are numbered in order of appearance.
    """
    lines = ["; Version: 2.2", "; Note: written by codalab-scaler simulate"]
    ids: dict[str, int] = {}
    for n, job in enumerate(jobs, start=1):
        number = job.owner[1:]
        if job.owner.startswith("u") and number.isdigit():
            ids.setdefault(job.owner, int(number))
        else:
            ids.setdefault(job.owner, 10_000 + len(ids))
        kb = job.memory_bytes // 1024 // job.cpus
        fields = [n, _g(job.submit), -1, _g(job.run_seconds), job.cpus, -1, -1, job.cpus, -1,
                  kb, 1, ids[job.owner], -1, -1, -1, -1, -1, -1]  # fmt: skip
        lines.append(" ".join(str(f) for f in fields))
    return "\n".join(lines) + "\n"


def _g(value: float) -> str:
    return repr(value) if value != int(value) else str(int(value))
