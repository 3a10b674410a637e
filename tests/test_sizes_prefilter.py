from __future__ import annotations

import pytest

from codalab_scaler.core.model import FilteredBundle, StagedBundle
from codalab_scaler.core.prefilter import WorkerShape, prefilter
from codalab_scaler.core.sizes import parse_size
from tests.defaults import worker_shape

GiB = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("0", 0),
        ("1k", 1024),
        ("512m", 512 * 1024**2),
        ("2g", 2 * GiB),
        ("2G", 2 * GiB),
        ("2gb", 2 * GiB),
        ("2GiB", 2 * GiB),
        ("1t", 1024**4),
        ("1.5g", int(1.5 * GiB)),
        (" 4g ", 4 * GiB),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "g", "abc", "-1g", "2x", "nan", "inf", "1.2.3m"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def bundle(uuid: str, cpus: int = 1, gpus: int = 0, memory: int = 2 * GiB) -> StagedBundle:
    return StagedBundle(uuid, cpus, gpus, memory, "")


def test_prefilter_keeps_equal_and_drops_larger_with_reason() -> None:
    shape = WorkerShape(cpus=2, gpus=1, memory_mb=4096)
    view = prefilter(
        [
            bundle("fits", 2, 1, 4 * GiB),
            bundle("cpu", 3),
            bundle("gpu", 1, 2),
            bundle("mem", 1, 0, 4 * GiB + 1),
        ],
        shape,
    )
    assert [b.uuid for b in view.staged] == ["fits"]
    assert view.filtered == (
        FilteredBundle("cpu", "cpus", 3, 2),
        FilteredBundle("gpu", "gpus", 2, 1),
        FilteredBundle("mem", "memory", 4 * GiB + 1, 4 * GiB),
    )


def test_no_prefilter_keeps_everything() -> None:
    view = prefilter([bundle("big", 64, 8, 1024 * GiB)], worker_shape(), enabled=False)
    assert [b.uuid for b in view.staged] == ["big"]
    assert view.filtered == ()
