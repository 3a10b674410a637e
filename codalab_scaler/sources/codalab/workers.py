"""Unpack ``GET /rest/workers/info`` into ``RegisteredWorker`` values (pure, no I/O).

Contract section 5: ``{"data": [{"worker_id", "tag", "cpus", "gpus",
"memory_bytes", "checkin_time", "run_uuids", "cpus_in_use", "gpus_in_use",
...}]}``.  One bad entry never spoils the document: it is set aside in
``malformed`` with a short reason (the caller warns and counts).  Only a
document whose shape is wrong as a whole raises ``MalformedResponse``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from codalab_scaler.core.model import RegisteredWorker
from codalab_scaler.sources.codalab.jsonapi import MalformedResponse


@dataclass(frozen=True, slots=True)
class MalformedWorker:
    worker_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ParsedWorkers:
    workers: tuple[RegisteredWorker, ...] = ()
    malformed: tuple[MalformedWorker, ...] = ()


class _Skip(Exception):
    """One entry is malformed; carries the reason."""


def _count(entry: Mapping[str, object], key: str, *, default: int | None = None) -> int:
    value = entry.get(key, default)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Skip(f"{key} is not a non-negative integer")
    return value


def _entry(entry: object) -> RegisteredWorker:
    if not isinstance(entry, Mapping):
        raise _Skip("entry is not an object")
    worker_id = entry.get("worker_id")
    if not isinstance(worker_id, str) or not worker_id:
        raise _Skip("worker_id is not a string")
    runs = entry.get("run_uuids") or []
    if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
        raise _Skip("run_uuids is not a list of strings")
    tag = entry.get("tag")
    checkin = entry.get("checkin_time")
    return RegisteredWorker(
        worker_id=worker_id,
        cpus=_count(entry, "cpus"),
        gpus=_count(entry, "gpus", default=0),
        memory_bytes=_count(entry, "memory_bytes"),
        cpus_in_use=_count(entry, "cpus_in_use", default=0),
        gpus_in_use=_count(entry, "gpus_in_use", default=0),
        run_uuids=tuple(runs),
        tag=tag if isinstance(tag, str) and tag else None,
        checkin_time=float(checkin) if isinstance(checkin, int | float) else None,
    )


def parse_workers(document: object) -> ParsedWorkers:
    if not isinstance(document, Mapping):
        raise MalformedResponse("workers/info: document is not a JSON object")
    data = document.get("data")
    if not isinstance(data, list):
        raise MalformedResponse("workers/info: 'data' is not a list")
    workers: list[RegisteredWorker] = []
    malformed: list[MalformedWorker] = []
    for entry in data:
        try:
            workers.append(_entry(entry))
        except _Skip as skip:
            wid = entry.get("worker_id") if isinstance(entry, Mapping) else None
            malformed.append(MalformedWorker(wid if isinstance(wid, str) else None, str(skip)))
    return ParsedWorkers(tuple(workers), tuple(malformed))
