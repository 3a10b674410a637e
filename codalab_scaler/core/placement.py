"""Where a pool's routed bundles will run: first-fit decreasing over its workers, then new ones.

Bundles are taken largest first (gpus, then cpus, then memory; uuid breaks
ties, so the result is deterministic) and each goes to the first worker
with room: serving workers' free capacity first, then booting workers (each
brings its whole shape).  What is left is bin-packed the same way into new
workers of the pool's shape; their number is what the pool needs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from codalab_scaler.core.model import StagedBundle
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.supply import Capacity, PoolWorker, WorkerState


class Where(enum.StrEnum):
    SERVING = "serving"
    BOOTING = "booting"
    NEW = "new"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one bundle goes: an existing worker (its job id) or the n-th new worker."""

    uuid: str
    where: Where
    worker: str


@dataclass(frozen=True, slots=True)
class Packing:
    placements: tuple[Placement, ...]
    new_workers: int
    # Job ids of existing workers that got no bundle (the spares).
    untouched: tuple[str, ...]


def _size(bundle: StagedBundle) -> tuple[int, int, int, str]:
    return (-bundle.gpus, -bundle.cpus, -bundle.memory_bytes, bundle.uuid)


def pack(
    bundles: Iterable[StagedBundle], workers: Sequence[PoolWorker], shape: WorkerShape
) -> Packing:
    """First-fit decreasing of ``bundles`` onto ``workers``, then onto new ``shape`` workers.

    A bundle larger than ``shape`` that fits no existing worker still gets a
    new worker of its own (the router only sends such a bundle when the
    prefilter is off, as the original counts it).
    """
    order = [w for w in workers if w.state is WorkerState.SERVING] + [
        w for w in workers if w.state is WorkerState.BOOTING
    ]
    bins: list[tuple[Where, str, Capacity]] = [
        (Where(w.state.value), w.job_id, w.free) for w in order
    ]
    used = [False] * len(bins)
    existing = len(bins)
    placements: list[Placement] = []
    for bundle in sorted(bundles, key=_size):
        need = (bundle.cpus, bundle.gpus, bundle.memory_bytes)
        for i, (where, worker, free) in enumerate(bins):
            if free.fits(*need):
                bins[i] = (where, worker, free.minus(*need))
                used[i] = True
                placements.append(Placement(bundle.uuid, where, worker))
                break
        else:
            label = f"new-{len(bins) - existing + 1}"
            bins.append((Where.NEW, label, Capacity.of(shape).minus(*need)))
            used.append(True)
            placements.append(Placement(bundle.uuid, Where.NEW, label))
    untouched = tuple(bins[i][1] for i in range(existing) if not used[i])
    return Packing(tuple(placements), len(bins) - existing, untouched)


def lower_bound(bundles: Iterable[StagedBundle], shape: WorkerShape) -> int:
    """Fewest ``shape`` workers that could hold ``bundles`` by any packing (per resource)."""
    items = list(bundles)
    if not items:
        return 0
    bounds = [1]
    for total, size in (
        (sum(b.cpus for b in items), shape.cpus),
        (sum(b.gpus for b in items), shape.gpus),
        (sum(b.memory_bytes for b in items), shape.memory_bytes),
    ):
        if size > 0:
            bounds.append(-(-total // size))
    return max(bounds)
