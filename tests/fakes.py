"""In-memory peers for the scaler's own scenarios (the real ones are tested elsewhere)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from codalab_scaler.core.errors import LaunchRefused, TransientError
from codalab_scaler.core.model import JobState, StagedBundle, WorkerJob


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Parsed:
    bundles: tuple[StagedBundle, ...]
    malformed: tuple[object, ...] = ()


@dataclass
class FakeBundles:
    """A bundle source: a list of staged bundles, or an error to raise."""

    staged: list[StagedBundle] = field(default_factory=list)
    error: Exception | None = None
    delay: float = 0.0
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def stage(self, n: int, *, cpus: int = 1) -> None:
        start = len(self.staged)
        self.staged += [
            StagedBundle(f"0x{i:032x}", cpus, 0, 2 << 30, "") for i in range(start, start + n)
        ]

    async def login(self) -> None:
        """A test double has no credentials to check."""

    async def fetch_staged(self, keywords: Sequence[str]) -> Parsed:
        self.calls.append(tuple(keywords))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return Parsed(tuple(self.staged))


@dataclass
class FakeBackend:
    """Accepts launches; lists them only once ``visible`` (to model eventual consistency)."""

    jobs: dict[str, JobState] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)
    list_error: Exception | None = None
    launch_error: Exception | None = None
    list_visible_after_launch: bool = True
    launch_delay: float = 0.0
    launched: list[str] = field(default_factory=list)
    closed: bool = False
    reasons: dict[str, str] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    cancel_error: Exception | None = None

    async def list_jobs(self) -> Sequence[WorkerJob]:
        if self.list_error is not None:
            raise self.list_error
        listed = [
            WorkerJob(job_id, state, job_id.removeprefix("job-"), self.reasons.get(job_id, ""))
            for job_id, state in self.jobs.items()
            if job_id not in self.hidden
        ]
        for job in listed:
            if job.state is JobState.FAILED:
                del self.jobs[job.job_id]
        return listed

    async def launch(self, worker_id: str) -> str:
        if self.launch_delay:
            await asyncio.sleep(self.launch_delay)
        if self.launch_error is not None:
            raise self.launch_error
        job_id = f"job-{worker_id}"
        self.jobs[job_id] = JobState.PENDING
        if not self.list_visible_after_launch:
            self.hidden.add(job_id)
        self.launched.append(worker_id)
        return job_id

    async def describe_launch(self, worker_id: str) -> Mapping[str, Any]:
        return {"job_id": f"job-{worker_id}"}

    async def cancel(self, job_id: str) -> None:
        """Record the call and forget the job (gone already is fine, as the contract says)."""
        if self.cancel_error is not None:
            raise self.cancel_error
        self.cancelled.append(job_id)
        self.jobs.pop(job_id, None)

    async def aclose(self) -> None:
        self.closed = True

    def fail(self, job_id: str, reason: str) -> None:
        """List ``job_id`` once as a failed start, then forget it (as a backend reports it)."""
        self.jobs[job_id] = JobState.FAILED
        self.reasons[job_id] = reason

    def activate_all(self) -> None:
        for job_id in self.jobs:
            self.jobs[job_id] = JobState.ACTIVE


__all__ = ["FakeBackend", "FakeBundles", "FakeClock", "LaunchRefused", "TransientError"]
