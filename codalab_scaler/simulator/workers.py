"""Worker check-ins: registration, reported runs and the bundle manager's assignment rules.

A check-in registers the worker (again, if another user held its id),
copies its announced capacity, records the runs it reports finished or
failed, and hands it at most one staged bundle: the highest
``request_priority`` first, then the oldest, among those whose tag the
worker serves (an untagged bundle never goes to a ``tag_exclusive`` worker),
that its user may run (the root user runs anyone's) and that fit its free
cpus, gpus, memory and disk.  A terminating worker, or one silent for the
server's ``worker_timeout``, is forgotten and its running bundles are staged
again.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping

from codalab_scaler.core.sizes import parse_size
from codalab_scaler.simulator.model import ROOT_USER, SimBundle, SimWorker, int_or_zero
from codalab_scaler.simulator.wire import Answer, text_response

FINISHED_RETENTION = 5000  # finished bundles kept for searches; older ones are dropped


class WorkerRegistry:
    """The checked-in workers of one server and the runs they hold.

    ``bundles`` is the server's own table, shared: check-ins move bundles
    between ``staged``, ``running``, ``ready`` and ``failed``, and drop the
    oldest finished ones past ``FINISHED_RETENTION``.
    """

    def __init__(self, bundles: dict[str, SimBundle], clock: Callable[[], float]) -> None:
        self.workers: dict[str, SimWorker] = {}
        self._bundles = bundles
        self._clock = clock
        self._finished: collections.deque[str] = collections.deque()

    def expire_silent(self, timeout: float) -> None:
        """Forget workers silent for more than ``timeout`` and restage their runs."""
        now = self._clock()
        for worker in list(self.workers.values()):
            if now - worker.checkin_time > timeout:
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
        worker = self.workers.get(worker_id)
        if worker is not None and worker.user != caller:
            self._forget(worker)
            worker = None
        if worker is None:
            worker = SimWorker(worker_id=worker_id, user=caller, checkin_time=self._clock())
            self.workers[worker_id] = worker
        _update_worker(worker, body)
        worker.checkin_time, worker.checkin_epoch = self._clock(), time.time()
        self._record_runs(worker, body.get("runs"))
        if worker.is_terminating:
            self._forget(worker)
            return None
        bundle = self._assignable(worker)
        if bundle is None:
            return None
        bundle.state, bundle.worker_id = "running", worker.worker_id
        worker.run_uuids.append(bundle.uuid)
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
            bundle.state, bundle.worker_id = final, None
            if bundle.uuid in worker.run_uuids:
                worker.run_uuids.remove(bundle.uuid)
            self._finished.append(bundle.uuid)
        while len(self._finished) > FINISHED_RETENTION:
            self._bundles.pop(self._finished.popleft(), None)

    def _assignable(self, worker: SimWorker) -> SimBundle | None:
        """The bundle manager's choice for ``worker``: highest priority, then oldest."""
        if worker.exit_after_num_runs <= 0:
            return None
        running = [self._bundles[u] for u in worker.run_uuids if u in self._bundles]
        free_cpus = worker.cpus - sum(b.cpus for b in running)
        free_gpus = worker.gpus - sum(b.gpus for b in running)
        free_memory = worker.memory_bytes - sum(b.memory_bytes for b in running)
        staged = [b for b in self._bundles.values() if b.state == "staged"]
        staged.sort(key=lambda b: -int_or_zero(b.metadata.get("request_priority")))
        for bundle in staged:
            if bundle.tag:
                if bundle.tag != worker.tag:
                    continue
            elif worker.tag_exclusive:
                continue
            if worker.user not in {ROOT_USER, bundle.owner}:
                continue
            if (
                bundle.cpus <= free_cpus
                and bundle.gpus <= free_gpus
                and bundle.memory_bytes <= free_memory
                and _disk(bundle) <= worker.free_disk_bytes
            ):
                return bundle
        return None

    def _forget(self, worker: SimWorker) -> None:
        for uuid in worker.run_uuids:
            bundle = self._bundles.get(uuid)
            if bundle is not None and bundle.state == "running":
                bundle.state, bundle.worker_id = "staged", None
        worker.run_uuids.clear()
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
