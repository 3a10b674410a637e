"""The records the simulator keeps: staged or running bundles and checked-in workers.

A bundle's resource requests are read from its metadata the way the real
bundle manager reads them: ``request_cpus`` (default 1), ``request_gpus``
(default 0), ``request_memory`` (a size, default ``2g``) and
``request_queue`` (``tag=<name>`` or ``<name>``, the tag a worker must have).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codalab_scaler.core.sizes import parse_size

ROOT_USER = "codalab"


@dataclass(slots=True)
class SimBundle:
    uuid: str
    owner: str
    state: str
    command: str
    metadata: dict[str, object]
    public: bool = False
    worker_id: str | None = None
    # Readings of the server's clock: when the bundle was staged, when a worker
    # picked it up (None until then), and when its current dispatch began.
    staged_at: float = 0.0
    started_at: float | None = None
    dispatched_at: float = 0.0

    @property
    def cpus(self) -> int:
        return int_or_zero(self.metadata.get("request_cpus")) or 1

    @property
    def gpus(self) -> int:
        return int_or_zero(self.metadata.get("request_gpus"))

    @property
    def memory_bytes(self) -> int:
        return parse_size(str(self.metadata.get("request_memory") or "2g"))

    @property
    def tag(self) -> str:
        return str(self.metadata.get("request_queue") or "").removeprefix("tag=")


@dataclass(slots=True)
class SimWorker:
    worker_id: str
    user: str
    checkin_time: float
    tag: str = ""
    cpus: int = 1
    gpus: int = 0
    memory_bytes: int = 2 * 1024**3
    free_disk_bytes: int = 100 * 1024**3
    hostname: str = ""
    tag_exclusive: bool = False
    exit_after_num_runs: int = 999999999
    is_terminating: bool = False
    preemptible: bool = False
    run_uuids: list[str] = field(default_factory=list)
    checkin_epoch: float = 0.0
    # Runs the bundle manager dispatched that the worker has not picked up yet.
    starting: list[str] = field(default_factory=list)
    # The longest recent gap between two of its check-ins (None after the first).
    period: float | None = None


def int_or_zero(value: object) -> int:
    """``value`` if it is a real ``int`` (not a ``bool``), else 0: how metadata counts are read."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
