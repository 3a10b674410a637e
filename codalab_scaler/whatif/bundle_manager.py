"""A model of CodaLab's bundle manager: which staged bundle starts on which registered worker.

The rules of the contract (``shared/reference``, section 4) and of the
server's scheduling pass, applied to the staged bundles in the order they
were created:

- a user with no parallel-run quota left gets nothing started (the workers
  are the scaler's, run as the root user, so the quota applies);
- the worker must allow the bundle's tag (``core.routing.tag_allows``: a
  bundle with a ``request_queue`` only on a worker with that tag; an
  untagged bundle never on a tag-exclusive worker), have the free cpus, gpus
  and memory it asks for, and still take runs (``exit_after_num_runs``);
- among those, a bundle asking no GPU prefers a worker without GPUs, then
  the worker with the most free cpus (the server breaks ties at random;
  here by worker id, so a replay is reproducible).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from codalab_scaler.core.model import StagedBundle
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.routing import RouteSpec, tag_allows
from codalab_scaler.core.supply import Capacity

NO_SHAPE = WorkerShape(0, 0, 0)


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """A registered worker as the bundle manager sees it."""

    worker_id: str
    free: Capacity
    has_gpus: bool
    tag: str | None = None
    tag_exclusive: bool = False
    accepting: bool = True  # False once it started exit_after_num_runs runs


@dataclass(frozen=True, slots=True)
class Start:
    uuid: str
    worker_id: str


def allows(worker: WorkerSlot, bundle: StagedBundle) -> bool:
    """CodaLab's tag rule, the same function the router uses."""
    spec = RouteSpec(
        worker.worker_id, NO_SHAPE, worker.tag, worker.tag_exclusive, 0, prefilter=False
    )
    return tag_allows(spec, bundle)


def dispatch(
    staged: Sequence[StagedBundle],
    workers: Sequence[WorkerSlot],
    running: Mapping[str, int],
    quota: int | None,
) -> list[Start]:
    """The runs one scheduling pass starts; ``running`` counts each owner's runs now.

    ``quota`` None: no parallel-run quota.  Each start takes its worker's
    free capacity and its owner's quota for the rest of the pass.
    """
    free = {w.worker_id: w.free for w in workers}
    open_ = [w for w in workers if w.accepting and w.free.cpus > 0]
    used = dict(running)
    starts: list[Start] = []
    for bundle in staged:
        if not open_:  # every bundle asks for a cpu at least (the server's "cpus or 1")
            break
        owner = bundle.owner or ""
        if quota is not None and used.get(owner, 0) >= quota:
            continue
        need = (bundle.cpus, bundle.gpus, bundle.memory_bytes)
        fitting = [w for w in open_ if free[w.worker_id].fits(*need) and allows(w, bundle)]
        if not fitting:
            continue
        best = max(
            fitting,
            key=lambda w: (
                bool(bundle.gpus) or not w.has_gpus,
                free[w.worker_id].cpus,
                w.worker_id,
            ),
        )
        free[best.worker_id] = free[best.worker_id].minus(*need)
        if free[best.worker_id].cpus <= 0:
            open_.remove(best)
        used[owner] = used.get(owner, 0) + 1
        starts.append(Start(bundle.uuid, best.worker_id))
    return starts
