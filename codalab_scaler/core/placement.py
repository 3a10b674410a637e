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
from codalab_scaler.core.supply import PoolWorker, WorkerState


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

    Bundles of the same size come one after another (they sort together),
    and the bins before the one the previous of them went to did not fit it
    and have not changed since: the search for the next one starts there.
    So each run of equal bundles walks the bins once, and a pass costs about
    (distinct sizes x bins + bundles), not (bundles x bins).  The free
    capacity of the bins is kept in three lists, the cheapest to compare.
    """
    order = [w for w in workers if w.state is WorkerState.SERVING] + [
        w for w in workers if w.state is WorkerState.BOOTING
    ]
    wheres = [Where(w.state.value) for w in order]
    names = [w.job_id for w in order]
    cpus = [w.free.cpus for w in order]
    gpus = [w.free.gpus for w in order]
    memory = [w.free.memory_bytes for w in order]
    used = [False] * len(order)
    existing = len(order)
    placements: list[Placement] = []
    ranked = sorted(bundles, key=_size)
    start = 0
    while start < len(ranked):
        c, g, m = ranked[start].cpus, ranked[start].gpus, ranked[start].memory_bytes
        end = start + 1
        while end < len(ranked) and (
            ranked[end].cpus == c and ranked[end].gpus == g and ranked[end].memory_bytes == m
        ):
            end += 1
        k = 0
        for bundle in ranked[start:end]:
            while k < len(cpus) and not (c <= cpus[k] and g <= gpus[k] and m <= memory[k]):
                k += 1
            if k == len(cpus):  # fits no worker: a new one, even when it is larger than shape
                names.append(f"new-{k - existing + 1}")
                wheres.append(Where.NEW)
                cpus.append(shape.cpus)
                gpus.append(shape.gpus)
                memory.append(shape.memory_bytes)
                used.append(True)
            cpus[k] -= c
            gpus[k] -= g
            memory[k] -= m
            used[k] = True
            placements.append(Placement(bundle.uuid, wheres[k], names[k]))
        start = end
    untouched = tuple(names[i] for i in range(existing) if not used[i])
    return Packing(tuple(placements), len(names) - existing, untouched)


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
