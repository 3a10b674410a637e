"""Workloads of ``simulate``: the seeded synthetic one, CSV and SWF traces and their errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from codalab_scaler.whatif.workload import (
    CSV_COLUMNS,
    DEFAULT_MEMORY,
    Job,
    Synthetic,
    TraceError,
    read_csv,
    read_swf,
    synthetic,
    write_csv,
    write_swf,
)

SMALL = Path(__file__).parent.parent / "examples" / "workloads" / "small.csv"
HEADER = ",".join(CSV_COLUMNS)


def test_synthetic_same_seed_same_jobs_other_seed_other_jobs() -> None:
    one = synthetic(Synthetic(days=2), 5)
    assert one == synthetic(Synthetic(days=2), 5)
    assert one != synthetic(Synthetic(days=2), 6)


def test_synthetic_has_sweeps_gpu_bundles_several_owners_and_a_daily_cycle() -> None:
    jobs = synthetic(Synthetic(days=7), 1)
    by_submit = Counter(j.submit for j in jobs)
    assert max(by_submit.values()) >= 4  # a sweep: k bundles submitted together
    assert any(j.gpus for j in jobs)
    assert any(not j.gpus for j in jobs)
    assert len({j.owner for j in jobs}) > 5
    assert all(0 <= j.submit < 7 * 86400 for j in jobs)
    hours = Counter(int(j.submit // 3600) % 24 for j in jobs)
    # peak at 15:00, trough at 03:00 (amplitude 0.8): the afternoon sees more bundles
    assert sum(hours[h] for h in range(13, 18)) > 2 * sum(hours[h] for h in range(1, 6))
    runs = sorted(j.run_seconds for j in jobs)
    assert runs[len(runs) // 2] < runs[-1] / 10  # lognormal: a long tail


def test_csv_round_trip() -> None:
    jobs = synthetic(Synthetic(days=1), 3)
    tagged = (*jobs, Job(f"0x{len(jobs):08x}", 99_999.5, 3, 2, 12345, 7.25, "gpuq", "alice"))
    assert read_csv(write_csv(tagged)) == tagged


def test_the_shipped_trace_reads_and_writes_back_to_the_same_text() -> None:
    text = SMALL.read_text()
    jobs = read_csv(text, str(SMALL))
    assert len(jobs) > 100
    assert write_csv(jobs) == text
    assert any(j.gpus for j in jobs)
    assert any(j.tag for j in jobs)


def test_swf_round_trip() -> None:
    jobs = tuple(
        Job(f"0x{i:08x}", float(i * 37), 1 + i % 4, 0, (1 + i % 4) * (512 + i) * 1024 * 1024,
            float(10 + i), "", f"u{1 + i % 5}")
        for i in range(50)
    )  # fmt: skip
    text = write_swf(jobs)
    assert read_swf(text) == jobs
    assert text.startswith(";")  # the header is comments


def test_swf_maps_the_standard_fields_and_skips_comments_and_cancelled_jobs() -> None:
    text = """; Version: 2.2
; a comment
1 0 5 100 4 -1 -1 8 200 1024 1 3 1 -1 1 -1 -1 -1
2 10 5 -1 4 -1 -1 4 200 -1 5 3 1 -1 1 -1 -1 -1
3 20 5 50 2 -1 2048 -1 200 -1 1 -1 1 -1 1 -1 -1 -1

4 30 5 60 1 -1 -1 1 200 -1 1 9 1 -1 1 -1 -1 -1
"""
    jobs = read_swf(text)
    assert [j.submit for j in jobs] == [0, 20, 30]  # job 2 has no run time: left out
    first, third, fourth = jobs
    assert (first.cpus, first.memory_bytes, first.run_seconds, first.owner) == (
        8, 1024 * 1024 * 8, 100, "u3",
    )  # fmt: skip
    assert (third.cpus, third.memory_bytes, third.owner) == (2, 2048 * 1024 * 2, "user")
    assert fourth.memory_bytes == DEFAULT_MEMORY


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        (f"{HEADER}\n0,1,0,2g,10,,a\n5,x,0,2g,10,,a\n", 3, "cpus"),
        (f"{HEADER}\n0,1,0,2g,10,,a\n\n5,1,0,lots,10,,a\n", 4, "memory"),
        (f"{HEADER}\n0,1,0,2g,-3,,a\n", 2, "run_seconds"),
        (f"{HEADER}\n0,1,0,2g,10,a\n", 2, "expected 7 fields"),
        (f"{HEADER}\nnan,1,0,2g,10,,a\n", 2, "submit_seconds"),
        ("submit,cpus\n0,1\n", 1, "header"),
    ],
)
def test_a_malformed_csv_line_is_named(text: str, line: int, says: str) -> None:
    with pytest.raises(TraceError, match=f"^t.csv: line {line}: .*{says}"):
        read_csv(text, "t.csv")


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("; c\n1 0 5 100 4 -1 -1 8 200 1024 1 3 1 -1 1 -1 -1\n", 2, "expected 18 fields, found 17"),
        ("1 0 5 100 4 -1 -1 8 200 1024 1 3 1 -1 1 -1 -1 -1\n2 x 5 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1\n",
         2, "not a number: 'x'"),
    ],
)  # fmt: skip
def test_a_malformed_swf_line_is_named(text: str, line: int, says: str) -> None:
    with pytest.raises(TraceError, match=f"^t.swf: line {line}: {says}"):
        read_swf(text, "t.swf")
