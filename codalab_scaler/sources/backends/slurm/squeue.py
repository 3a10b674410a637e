"""One ``squeue`` call per poll, and what its lines mean.

Format: ``--format=%i|%T|%r|%j`` with ``--noheader``: job id, long state,
reason, job name.  The ``%`` fields have been stable across Slurm releases
for a decade (``-O``/``--Format`` changed names and default widths; ``--json``
exists from 21.08 only and is heavy); a field without a width is printed
whole, neither padded nor truncated.  Ids, states and reasons never contain
``|``; the name, which may, comes last and is split off at most three times.

``-t all`` lists finished jobs too until slurmctld forgets them (``MinJobAge``,
300 s by default), so a job that failed between two polls is still seen.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

FORMAT = "%i|%T|%r|%j"
_FIELDS = 4


class Phase(enum.Enum):
    PENDING = "pending"  # waiting for resources: booting capacity
    ACTIVE = "active"  # holds resources (running, or stopped while holding them)
    ENDED = "ended"  # finished one way or another
    FAILED = "failed"  # finished because the worker or its node failed


# Slurm's long job state names (squeue(1), "JOB STATE CODES").
PHASES: dict[str, Phase] = {
    **dict.fromkeys(
        ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD",
         "SPECIAL_EXIT"),
        Phase.PENDING,
    ),
    **dict.fromkeys(
        ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"),
        Phase.ACTIVE,
    ),
    **dict.fromkeys(
        ("COMPLETED", "CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE", "REVOKED"), Phase.ENDED
    ),
    **dict.fromkeys(("FAILED", "BOOT_FAIL", "NODE_FAIL", "OUT_OF_MEMORY"), Phase.FAILED),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Row:
    """One job as squeue lists it."""

    job_id: str
    state: str
    reason: str
    name: str

    @property
    def phase(self) -> Phase | None:
        """None for a state this code does not know (a newer Slurm's)."""
        return PHASES.get(self.state.split()[0].rstrip("+") if self.state else "")


def squeue_argv(user: str, partition: str) -> list[str]:
    return [
        "squeue", "--noheader", "--states=all", f"--user={user}",
        f"--partition={partition}", f"--format={FORMAT}",
    ]  # fmt: skip


def parse(text: str) -> tuple[list[Row], list[str]]:
    """(rows, malformed lines) of squeue's output; blank lines are neither."""
    rows: list[Row] = []
    malformed: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", _FIELDS - 1)
        if len(parts) != _FIELDS:
            malformed.append(line)
            continue
        job_id, state, reason, name = (part.strip() for part in parts)
        number = job_id.split("_")[0]
        # isdigit alone takes "²" or "١٢": Slurm prints ids in ASCII digits only.
        if not state or not name or not (number.isascii() and number.isdigit()):
            malformed.append(line)
            continue
        rows.append(Row(job_id, state, reason, name))
    return rows, malformed


def ours(rows: Sequence[Row], prefix: str) -> dict[str, tuple[Row, str]]:
    """The jobs of this scaler, by id, each with its worker id (the name after ``prefix``).

    A worker id never contains ``-``, so ``prefix`` alone decides the pool:
    ``u-job-gpu-big-<id>`` is not pool ``gpu``'s job even though its name
    starts with ``u-job-gpu-``.
    """
    found: dict[str, tuple[Row, str]] = {}
    for row in rows:
        if row.name.startswith(prefix):
            worker_id = row.name[len(prefix) :]
            if worker_id.isalnum() and worker_id.isascii():
                found[row.job_id] = (row, worker_id)
    return found
