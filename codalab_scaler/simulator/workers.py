"""Worker check-ins and the bundle manager that dispatches staged runs to listed workers.

A check-in registers the worker (again, if another user held its id),
copies its announced capacity and records the runs it reports finished or
failed.  A terminating worker, or one silent for the server's
``worker_timeout`` (60 s, as CodaLab 1.7.5), is forgotten and its runs are
staged again; until then it stays listed, even when its process has exited
(a ``cl-worker`` does not check out).

The bundle manager runs on every request.  For each staged bundle (highest
``request_priority`` first, then the oldest) it picks one listed worker
that may run it: the worker serves its tag (an untagged bundle never goes to
a ``tag_exclusive`` worker), its user may run it (the root user runs
anyone's, within each user's parallel-run quota) and it has the free cpus,
gpus, memory and disk; among those, as CodaLab's manager sorts them, a
worker without GPUs for a bundle that needs none, then the fewest cpus,
then the fewest runs, then at random.  The run becomes ``starting`` on that
worker, which receives it in its next check-in answer (one run per answer).

The manager cannot tell an exited worker from a live one: both are listed.
The real one pushes the run to the worker's open check-in and, when no one
answers, loses about 1.2 s and puts the run back to staged.  The stand-in
workers poll instead of holding a check-in open, so here a worker is taken
to be listening while it has been silent for at most twice its usual gap
between check-ins; a run dispatched to a worker that is not (or that stops
checking in before picking it up) is a failed dispatch: it goes back to
staged, ``failed_dispatches`` counts it, and the manager dispatches nothing
for ``dispatch_loss`` seconds.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable, Mapping

from codalab_scaler.core.sizes import parse_size
from codalab_scaler.simulator.model import ROOT_USER, SimBundle, SimWorker, int_or_zero
from codalab_scaler.simulator.wire import Answer, text_response

FINISHED_RETENTION = 5000  # finished bundles kept for searches; older ones are dropped
WORKER_RECORDS = 10_000  # workers remembered in ``runs_by_worker``; the oldest are dropped
DISPATCH_LOSS = 1.2  # seconds the real manager loses on a worker that does not answer
FIRST_PERIOD = 2.0  # the gap assumed between check-ins until a worker's second one
RECENT_GAPS = 4  # check-in gaps a worker's period is the longest of


class WorkerRegistry:
    """The listed workers of one server, the runs they hold and the bundle manager.

    ``bundles`` is the server's own table, shared: dispatches and check-ins
    move bundles between ``staged``, ``starting``, ``running``, ``ready`` and
    ``failed``, and drop the oldest finished ones past ``FINISHED_RETENTION``.
    ``runs_by_worker`` remembers every worker that ever registered and how
    many runs it picked up, after it is forgotten too.
    """

    def __init__(
        self,
        bundles: dict[str, SimBundle],
        clock: Callable[[], float],
        *,
        run_quotas: Mapping[str, int] | None = None,
        dispatch_loss: float = DISPATCH_LOSS,
        seed: int = 0,
    ) -> None:
        self.workers: dict[str, SimWorker] = {}
        self.runs_by_worker: dict[str, int] = {}
        self.failed_dispatches = 0
        # Worker ids checked out by ``POST /rest/workers/<id>/checkout``, in order.
        self.checkouts: list[str] = []
        self.run_quotas = dict(run_quotas or {})
        self.dispatch_loss = dispatch_loss
        self._bundles = bundles
        self._clock = clock
        self._finished: collections.deque[str] = collections.deque()
        self._gaps: dict[str, collections.deque[float]] = {}
        self._busy_until = float("-inf")
        self._random = random.Random(seed)  # noqa: S311 - a tie-break, as CodaLab's, not a secret

    def expire_silent(self, timeout: float) -> None:
        """Forget workers silent for more than ``timeout`` and restage their runs."""
        now = self._clock()
        for worker in list(self.workers.values()):
            if now - worker.checkin_time > timeout:
                self._forget(worker)

    def checkout(self, worker_id: str, caller: str) -> None:
        """``POST /rest/workers/<id>/checkout``: forget the caller's worker and restage its runs.

        As CodaLab's ``worker_cleanup``: a worker not listed, or another user's, is left alone.
        """
        worker = self.workers.get(worker_id)
        self.checkouts.append(worker_id)
        if worker is not None and worker.user == caller:
            self._forget(worker)

    def info(self, caller: str) -> list[dict[str, object]]:
        """The ``data`` of ``GET /rest/workers/info``: the root user sees every worker."""
        return [
            self._view(worker)
            for worker in self.workers.values()
            if caller in {ROOT_USER, worker.user}
        ]

    def checkin(
        self, worker_id: str, caller: str, body: Mapping[str, object]
    ) -> dict[str, object] | None:
        """Apply one check-in by ``caller``; returns the run to start, or None for no work.

        Raises ``Answer`` (400) for a field of the wrong type.
        """
        now = self._clock()
        worker = self.workers.get(worker_id)
        if worker is not None and worker.user != caller:
            self._forget(worker)
            worker = None
        if worker is None:
            worker = SimWorker(worker_id=worker_id, user=caller, checkin_time=now)
            self.workers[worker_id] = worker
            self._gaps[worker_id] = collections.deque(maxlen=RECENT_GAPS)
            self._remember(worker_id)
        else:
            gaps = self._gaps[worker_id]
            gaps.append(now - worker.checkin_time)
            worker.period = max(gaps)
        _update_worker(worker, body)
        worker.checkin_time, worker.checkin_epoch = now, time.time()
        self._record_runs(worker, body.get("runs"))
        if worker.is_terminating:
            self._forget(worker)
            return None
        self.dispatch()
        if not worker.starting:
            return None
        bundle = self._bundles[worker.starting.pop(0)]
        bundle.state, bundle.started_at = "running", now
        worker.run_uuids.append(bundle.uuid)
        self.runs_by_worker[worker_id] = self.runs_by_worker.get(worker_id, 0) + 1
        return {
            "type": "run",
            "bundle": {
                "uuid": bundle.uuid,
                "command": bundle.command,
                "metadata": dict(bundle.metadata),
            },
            "resources": {
                "cpus": bundle.cpus,
                "gpus": bundle.gpus,
                "memory": bundle.memory_bytes,
            },
        }

    def dispatch(self) -> None:
        """One round of the bundle manager (see the module docstring)."""
        now = self._clock()
        for worker in self.workers.values():
            if worker.starting and not self._listening(worker, now):
                for uuid in worker.starting:
                    self._restage(self._bundles[uuid])
                    self.failed_dispatches += 1
                    self._busy_until = now + self.dispatch_loss
                worker.starting.clear()
        if now < self._busy_until:
            return
        free = {w.worker_id: self._free(w) for w in self.workers.values()
                if w.exit_after_num_runs > 0}  # fmt: skip
        if not any(cpus > 0 for cpus, _, _ in free.values()):
            return
        active = collections.Counter(
            b.owner for b in self._bundles.values() if b.state in {"starting", "running"}
        )
        staged = [b for b in self._bundles.values() if b.state == "staged"]
        staged.sort(key=lambda b: -int_or_zero(b.metadata.get("request_priority")))
        for bundle in staged:
            need = (bundle.cpus, bundle.gpus, bundle.memory_bytes)
            candidates = [
                self.workers[worker_id]
                for worker_id, room in free.items()
                if all(n <= r for n, r in zip(need, room, strict=True))
                and self._may_run(self.workers[worker_id], bundle, active)
            ]
            if not candidates:
                continue
            worker = min(candidates, key=lambda w: self._preference(w, bundle))
            if not self._listening(worker, now):
                self.failed_dispatches += 1
                self._busy_until = now + self.dispatch_loss
                return
            bundle.state, bundle.worker_id, bundle.dispatched_at = "starting", worker.worker_id, now
            worker.starting.append(bundle.uuid)
            cpus, gpus, memory = free[worker.worker_id]
            free[worker.worker_id] = (cpus - need[0], gpus - need[1], memory - need[2])
            active[bundle.owner] += 1

    def _listening(self, worker: SimWorker, now: float) -> bool:
        period = FIRST_PERIOD if worker.period is None else worker.period
        return now - worker.checkin_time <= 2 * period

    def _preference(self, worker: SimWorker, bundle: SimBundle) -> tuple[bool, int, int, float]:
        runs = len(worker.run_uuids) + len(worker.starting)
        return (bundle.gpus == 0 and worker.gpus > 0, worker.cpus, runs, self._random.random())

    def _free(self, worker: SimWorker) -> tuple[int, int, int]:
        held = [self._bundles[u] for u in (*worker.run_uuids, *worker.starting)
                if u in self._bundles]  # fmt: skip
        return (
            worker.cpus - sum(b.cpus for b in held),
            worker.gpus - sum(b.gpus for b in held),
            worker.memory_bytes - sum(b.memory_bytes for b in held),
        )

    def _may_run(self, worker: SimWorker, bundle: SimBundle, active: Mapping[str, int]) -> bool:
        if bundle.tag:
            if bundle.tag != worker.tag:
                return False
        elif worker.tag_exclusive:
            return False
        if worker.user == ROOT_USER:
            quota = self.run_quotas.get(bundle.owner)
            if quota is not None and active.get(bundle.owner, 0) >= quota:
                return False
        elif worker.user != bundle.owner:
            return False
        return _disk(bundle) <= worker.free_disk_bytes

    def _view(self, worker: SimWorker) -> dict[str, object]:
        running = [self._bundles[u] for u in worker.run_uuids if u in self._bundles]
        return {
            "worker_id": worker.worker_id,
            "tag": worker.tag,
            "cpus": worker.cpus,
            "gpus": worker.gpus,
            "memory_bytes": worker.memory_bytes,
            "free_disk_bytes": worker.free_disk_bytes,
            "checkin_time": int(worker.checkin_epoch),
            "run_uuids": list(worker.run_uuids),
            "tag_exclusive": worker.tag_exclusive,
            "exit_after_num_runs": worker.exit_after_num_runs,
            "is_terminating": worker.is_terminating,
            "preemptible": worker.preemptible,
            "cpus_in_use": sum(b.cpus for b in running),
            "gpus_in_use": sum(b.gpus for b in running),
        }

    def _record_runs(self, worker: SimWorker, runs: object) -> None:
        outcomes = {"finished": "ready", "failed": "failed"}
        for run in runs if isinstance(runs, list) else []:
            if not isinstance(run, dict):
                continue
            bundle = self._bundles.get(str(run.get("bundle_uuid")))
            final = outcomes.get(str(run.get("state")))
            if bundle is None or final is None or bundle.worker_id != worker.worker_id:
                continue
            if bundle.state != "running":
                continue
            bundle.state, bundle.worker_id = final, None
            if bundle.uuid in worker.run_uuids:
                worker.run_uuids.remove(bundle.uuid)
            self._finished.append(bundle.uuid)
        while len(self._finished) > FINISHED_RETENTION:
            self._bundles.pop(self._finished.popleft(), None)

    def _remember(self, worker_id: str) -> None:
        self.runs_by_worker.setdefault(worker_id, 0)
        while len(self.runs_by_worker) > WORKER_RECORDS:
            del self.runs_by_worker[next(iter(self.runs_by_worker))]

    def _restage(self, bundle: SimBundle) -> None:
        if bundle.state in {"starting", "running"}:
            bundle.state, bundle.worker_id = "staged", None

    def _forget(self, worker: SimWorker) -> None:
        for uuid in (*worker.run_uuids, *worker.starting):
            bundle = self._bundles.get(uuid)
            if bundle is not None:
                self._restage(bundle)
        worker.run_uuids.clear()
        worker.starting.clear()
        self._gaps.pop(worker.worker_id, None)
        self.workers.pop(worker.worker_id, None)


def _disk(bundle: SimBundle) -> int:
    try:
        return parse_size(str(bundle.metadata.get("request_disk") or "0"))
    except ValueError:
        return 0


def _update_worker(worker: SimWorker, body: Mapping[str, object]) -> None:
    """Copy the check-in fields; a field of the wrong type is a 400, like a schema error."""
    for name, kind in (
        ("tag", str),
        ("hostname", str),
        ("cpus", int),
        ("gpus", int),
        ("memory_bytes", int),
        ("free_disk_bytes", int),
        ("exit_after_num_runs", int),
        ("tag_exclusive", bool),
        ("is_terminating", bool),
        ("preemptible", bool),
    ):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise Answer(text_response(400, f"Check-in field {name} has the wrong type."))
        setattr(worker, name, value)
