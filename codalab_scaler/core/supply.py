"""Supply: each backend job of a pool joined to its CodaLab check-in, and its state.

A worker launched by the scaler registers with CodaLab as ``<host>-<worker_id>``
(the ``--id`` its command line carries), so a registered worker whose id ends
with ``-<worker_id>`` (or equals it) is that job.  Only the backend's live jobs
are capacity: a registered worker whose job has ended is not (a ``cl-worker``
does not check out, and the server lists it for 60 s more).

- **booting**: pending in the backend, accepted and not listed yet, or running
  and not registered yet;
- **serving**: registered; its free cpus, gpus and memory come from the check-in;
- **stuck**: booting for longer than the pool's provision timeout.  It is no
  capacity, but it still occupies a slot towards ``max_workers``.

A worker whose job has ended but that CodaLab still lists is **exited**: no
capacity, and worse, CodaLab's bundle manager keeps dispatching runs to it
(each failing) until 60 s after its last check-in.  ``exited`` names them so
the service can check them out on their behalf.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from codalab_scaler.core.model import InFlightLaunch, JobState, RegisteredWorker, WorkerJob
from codalab_scaler.core.prefilter import WorkerShape

__all__ = [
    "Capacity",
    "PoolWorker",
    "RegisteredWorker",
    "WorkerState",
    "booting_since",
    "classify",
    "exited",
    "live_worker_ids",
    "registrations",
    "settle",
]


class WorkerState(enum.StrEnum):
    BOOTING = "booting"
    SERVING = "serving"
    STUCK = "stuck"


@dataclass(frozen=True, slots=True)
class Capacity:
    cpus: int
    gpus: int
    memory_bytes: int

    def fits(self, cpus: int, gpus: int, memory_bytes: int) -> bool:
        return cpus <= self.cpus and gpus <= self.gpus and memory_bytes <= self.memory_bytes

    def minus(self, cpus: int, gpus: int, memory_bytes: int) -> Capacity:
        return Capacity(self.cpus - cpus, self.gpus - gpus, self.memory_bytes - memory_bytes)

    @staticmethod
    def of(shape: WorkerShape) -> Capacity:
        return Capacity(shape.cpus, shape.gpus, shape.memory_bytes)


@dataclass(frozen=True, slots=True)
class PoolWorker:
    """One of a pool's workers as the planner sees it.

    ``free`` is what it can still take: a serving worker's unused share (from
    its check-in), a booting worker's whole shape, nothing for a stuck one.
    ``since`` is when it was first seen booting (None once serving).
    """

    job_id: str
    worker_id: str
    state: WorkerState
    free: Capacity
    idle: bool = False
    registered_as: str | None = None
    since: float | None = None
    # What a serving worker told CodaLab it has in all (None until it registers).
    total: Capacity | None = None


def _free_of(worker: RegisteredWorker) -> Capacity:
    """Free capacity from a check-in.

    workers/info gives cpus and gpus in use but not memory in use: memory is
    taken as in use in proportion to the cpus in use (all free when idle).
    """
    cpus = max(worker.cpus - worker.cpus_in_use, 0)
    gpus = max(worker.gpus - worker.gpus_in_use, 0)
    if worker.idle:
        memory = worker.memory_bytes
    elif worker.cpus > 0:
        memory = worker.memory_bytes * cpus // worker.cpus
    else:
        memory = 0
    return Capacity(cpus, gpus, memory)


def registrations(workers: Iterable[RegisteredWorker]) -> Mapping[str, RegisteredWorker]:
    """Index check-ins by every worker id they can stand for: the whole id and its tail."""
    index: dict[str, RegisteredWorker] = {}
    for worker in workers:
        index[worker.worker_id] = worker
        _host, sep, tail = worker.worker_id.rpartition("-")
        if sep and tail:
            index.setdefault(tail, worker)
    return index


def booting_since(
    previous: Mapping[str, float],
    jobs: Iterable[WorkerJob],
    in_flight: Iterable[InFlightLaunch],
    registered: Mapping[str, RegisteredWorker],
    now: float,
) -> dict[str, float]:
    """When each booting job was first seen booting; jobs no longer booting are forgotten."""
    since: dict[str, float] = {}
    listed = set()
    for job in jobs:
        listed.add(job.job_id)
        if job.state is JobState.FAILED or job.worker_id in registered:
            continue
        since[job.job_id] = previous.get(job.job_id, now)
    for launch in in_flight:
        if launch.job_id not in listed:
            since[launch.job_id] = previous.get(launch.job_id, launch.launched_at)
    return since


def classify(
    jobs: Iterable[WorkerJob],
    in_flight: Iterable[InFlightLaunch],
    registered: Mapping[str, RegisteredWorker],
    since: Mapping[str, float],
    shape: WorkerShape,
    *,
    provision_timeout: float,
    now: float,
) -> tuple[PoolWorker, ...]:
    """Each live job (and accepted launch not listed yet) of one pool, with its state."""
    workers: list[PoolWorker] = []
    listed = set()
    for job in jobs:
        if job.state is JobState.FAILED:
            continue
        listed.add(job.job_id)
        workers.append(_one(job.job_id, job.worker_id, registered, since, shape,
                            provision_timeout, now))  # fmt: skip
    workers.extend(
        _one(f.job_id, f.worker_id, registered, since, shape, provision_timeout, now)
        for f in in_flight
        if f.job_id not in listed
    )
    return tuple(sorted(workers, key=lambda w: w.job_id))


def _one(
    job_id: str,
    worker_id: str,
    registered: Mapping[str, RegisteredWorker],
    since: Mapping[str, float],
    shape: WorkerShape,
    provision_timeout: float,
    now: float,
) -> PoolWorker:
    check_in = registered.get(worker_id) if worker_id else None
    if check_in is not None:
        total = Capacity(check_in.cpus, check_in.gpus, check_in.memory_bytes)
        return PoolWorker(job_id, worker_id, WorkerState.SERVING, _free_of(check_in),
                          idle=check_in.idle, registered_as=check_in.worker_id,
                          total=total)  # fmt: skip
    first = since.get(job_id, now)
    if now - first > provision_timeout:
        return PoolWorker(job_id, worker_id, WorkerState.STUCK, Capacity(0, 0, 0), since=first)
    return PoolWorker(job_id, worker_id, WorkerState.BOOTING, Capacity.of(shape), since=first)


def live_worker_ids(
    jobs: Iterable[WorkerJob], in_flight: Iterable[InFlightLaunch]
) -> frozenset[str]:
    """The worker ids of a pool's live jobs: listed and not failed, or accepted and not listed."""
    live = {job.worker_id for job in jobs if job.state is not JobState.FAILED and job.worker_id}
    live.update(f.worker_id for f in in_flight if f.worker_id)
    return frozenset(live)


def exited(
    previous_live: frozenset[str],
    previous_exited: Iterable[str],
    live: frozenset[str],
    registered: Mapping[str, RegisteredWorker],
) -> frozenset[str]:
    """The pool's workers whose job has ended and that CodaLab still lists (worker ids).

    A worker is this pool's when one of its jobs carried the id: it was live at
    the previous pass (or already exited).  Call only with a good job view: a
    job missing from a failed listing has not ended.  A job a listing merely
    missed looks the same, so ``settle`` waits for proof before a checkout.
    """
    ended = (previous_live - live) | set(previous_exited)
    return frozenset(w for w in ended if w not in live and w in registered)


def settle(
    candidates: Iterable[str],
    previous: Mapping[str, tuple[float | None, float]],
    registered: Mapping[str, RegisteredWorker],
    *,
    grace: float,
    now: float,
) -> tuple[dict[str, tuple[float | None, float]], frozenset[str]]:
    """Which exited workers are dead for sure: their check-in time has not moved for ``grace``.

    A live worker checks in every few seconds, whatever a job listing says; one
    whose check-in time (the server's clock, only compared with itself) stays
    the same for longer than ``grace`` of this clock has stopped.  Returns the
    memory (worker -> (check-in time, first seen at)) and the workers to check
    out.  A registration without a check-in time proves nothing: never ready.
    """
    memory: dict[str, tuple[float | None, float]] = {}
    for worker in candidates:
        checkin = registered[worker].checkin_time
        seen = previous.get(worker)
        memory[worker] = seen if seen is not None and seen[0] == checkin else (checkin, now)
    ready = frozenset(
        w for w, (checkin, since) in memory.items() if checkin is not None and now - since >= grace
    )
    return memory, ready
