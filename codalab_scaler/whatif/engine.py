"""The replay: a workload through the real planner, on a virtual clock, event by event.

Events (a bundle submitted, a worker registered, a run finished, a worker
idle long enough to exit, a start that failed) are taken in time order; a
planner pass runs every ``sleep_time`` as the service's does: it builds the
pools' views from the simulated world, calls ``core.planner.plan`` once for
every pool, and acts as ``service.planning`` does (compat pools launch one at
a time and stop at the first refusal; fast pools launch all at once and
spend tokens; the planner's memory is kept, backoff applied after a refused
launch, a failed start or a cancelled stuck worker).  After the events of
one instant the bundle manager model starts what it can.

The models (all seeded, so a replay is reproducible):

- a worker job is pending in its backend while the backend is at its
  ``capacity`` (queued, not billed), then provisions for a lognormal delay
  and registers; from then on it is active, runs several bundles at once
  within its shape, and exits after ``worker_idle_seconds`` idle or after
  ``exit_after_num_runs`` runs; CodaLab lists it 60 s more;
- a launch is refused with ``refuse_rate``; a start fails (the job ends
  after the delay, never registering) with ``fail_rate``; a worker is
  stuck (pending, never registering, until ``stuck_seconds``) with
  ``stuck_rate``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from codalab_scaler.core.model import (
    BundleView,
    JobState,
    Observation,
    PlannerMemory,
    PoolState,
    Reason,
    RegisteredWorker,
    StagedBundle,
    WorkerJob,
)
from codalab_scaler.core.planner import (
    Plan,
    PolicyKind,
    PoolInput,
    after_failure,
    after_launches,
    plan,
)
from codalab_scaler.core.prefilter import prefilter
from codalab_scaler.core.routing import Unroutable
from codalab_scaler.core.supply import Capacity, WorkerState
from codalab_scaler.whatif.bundle_manager import WorkerSlot, dispatch
from codalab_scaler.whatif.scenario import Result, Sample, Scenario, SimPool
from codalab_scaler.whatif.workload import Job

LISTED_AFTER_EXIT = 60.0  # CodaLab 1.7.5 lists an exited worker this long (no check-out)
PERMANENT = frozenset({Unroutable.NO_POOL_FOR_TAG, Unroutable.TOO_LARGE})
# Reasons under which a pass that saw no change launches nothing again (see ``_quiet``).
STEADY = frozenset({Reason.NO_STAGED, Reason.COVERED_BY_WORKERS, Reason.AT_MAX})

# Event kinds, in the order they are handled at one instant (the pass last).
ARRIVE, READY, DONE, IDLE, ENDED, PASS = range(6)


@dataclass(slots=True)
class _Worker:
    job_id: str
    worker_id: str  # the --id tail it registers with: ``sim-<worker_id>`` (no dash inside)
    pool: int
    launched_at: float
    fate: str = "ok"
    state: str = "queued"  # queued, booting, serving, gone
    started_at: float | None = None
    free: Capacity = field(default_factory=lambda: Capacity(0, 0, 0))
    running: int = 0
    runs: int = 0
    idle_since: float | None = None
    idle_total: float = 0.0
    gone_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Event:
    """What an event is about: a job (arrival), or a worker, with its run or idle mark."""

    job: Job | None = None
    worker: _Worker | None = None
    token: float | None = None  # IDLE: the idle_since it was scheduled for


@dataclass(slots=True)
class _Pool:
    sim: SimPool
    memory: PlannerMemory = field(default_factory=PlannerMemory)
    last_launch_at: float | None = None
    failed_starts: int = 0
    stuck_seen: set[str] = field(default_factory=set)
    workers: dict[str, _Worker] = field(default_factory=dict)
    queue: deque[_Worker] = field(default_factory=deque)


class _Replay:
    def __init__(self, scenario: Scenario, jobs: Sequence[Job], *, skip_quiet: bool = True) -> None:
        self.sc = scenario
        self.skip_quiet = skip_quiet
        self.rng = random.Random(scenario.seed)  # noqa: S311 - a simulation, not cryptography
        self.jobs = {j.uuid: j for j in jobs}
        self.pools = [_Pool(p) for p in scenario.pools]
        self.events: list[tuple[float, int, int, _Event]] = []
        self.seq = 0
        self.staged: dict[str, StagedBundle] = {}
        self.started: dict[str, float] = {}
        self.owner_running: dict[str, int] = {}
        self.gone_listed: deque[tuple[float, RegisteredWorker]] = deque()
        self.unroutable: set[str] = set()
        self.counts = {"launches": 0, "refused": 0, "stuck": 0, "cancelled": 0}
        self.samples: list[Sample] = []
        self.finished_workers: list[_Worker] = []
        self.next_id = 0
        self.changed = True
        self.last: Plan | None = None
        self.last_launched = True
        self.passes = self.planned = 0
        self.end = (max((j.submit for j in jobs), default=0.0)) + scenario.drain_seconds

    # -- events -------------------------------------------------------------------------

    def push(self, at: float, kind: int, payload: _Event) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, kind, self.seq, payload))

    def run(self) -> Result:
        for job in sorted(self.jobs.values(), key=lambda j: j.submit):
            self.push(job.submit, ARRIVE, _Event(job))
        self.push(0.0, PASS, _Event())
        next_sample = 0.0
        while self.events:
            at, kind, _seq, payload = heapq.heappop(self.events)
            if at > self.end:
                break
            if kind == PASS:
                self.planner_pass(at)
                if at >= next_sample:
                    self.sample(at)
                    next_sample = at + self.sc.sample_seconds
                self.push(at + self.sc.sleep_time, PASS, _Event())
                continue
            self.handle(at, kind, payload)
            # The bundle manager starts what it can once an instant's arrivals,
            # registrations and finished runs are in, before anyone idles out.
            if not self.events or self.events[0][0] > at or self.events[0][1] >= IDLE:
                self.start_runs(at)
        return self.result()

    def handle(self, at: float, kind: int, event: _Event) -> None:
        self.changed = True
        job, worker = event.job, event.worker
        if job is not None and kind == ARRIVE:
            self.staged[job.uuid] = StagedBundle(
                job.uuid, job.cpus, job.gpus, job.memory_bytes, job.tag, job.owner
            )
            return
        if worker is None:
            return
        if job is not None and kind == DONE:
            self.finish(at, job.uuid, worker)
        elif kind == READY and worker.state == "booting":
            shape = self.pools[worker.pool].sim.spec.route.shape
            worker.state, worker.free = "serving", Capacity.of(shape)
            self.become_idle(at, worker)
        elif kind == IDLE and worker.state == "serving" and worker.idle_since == event.token:
            self.leave(at, worker)
        elif kind == ENDED and worker.state in ("booting", "queued"):
            self.pools[worker.pool].failed_starts += 1
            self.leave(at, worker)

    def become_idle(self, at: float, worker: _Worker) -> None:
        worker.idle_since = at
        self.push(
            at + self.pools[worker.pool].sim.idle_seconds, IDLE, _Event(worker=worker, token=at)
        )

    def finish(self, at: float, uuid: str, worker: _Worker) -> None:
        job = self.jobs[uuid]
        worker.free = Capacity(worker.free.cpus + job.cpus, worker.free.gpus + job.gpus,
                               worker.free.memory_bytes + job.memory_bytes)  # fmt: skip
        worker.running -= 1
        self.owner_running[job.owner] -= 1
        limit = self.pools[worker.pool].sim.exit_after_runs
        if worker.running == 0:
            if limit is not None and limit > 0 and worker.runs >= limit:
                self.leave(at, worker)
            else:
                self.become_idle(at, worker)

    def leave(self, at: float, worker: _Worker) -> None:
        """A worker's job ends (exit, failed start, cancel); its backend slot frees."""
        pool = self.pools[worker.pool]
        if worker.idle_since is not None:
            worker.idle_total += at - worker.idle_since
            worker.idle_since = None
        if worker.state == "serving":
            self.gone_listed.append((at + LISTED_AFTER_EXIT, self.registered(worker)))
        if worker.state == "queued":
            pool.queue.remove(worker)
        worker.state, worker.gone_at = "gone", at
        del pool.workers[worker.job_id]
        self.finished_workers.append(worker)
        while pool.queue and self.has_room(pool):
            self.provision(at, pool.queue.popleft())

    def start_runs(self, at: float) -> None:
        """The bundle manager's pass: start staged bundles on registered workers."""
        if not self.staged:
            return
        slots = []
        by_id: dict[str, _Worker] = {}
        for pool in self.pools:
            route = pool.sim.spec.route
            limit = pool.sim.exit_after_runs
            for w in pool.workers.values():
                if w.state != "serving" or w.free.cpus <= 0:
                    continue
                by_id[w.job_id] = w
                slots.append(WorkerSlot(
                    w.job_id, w.free, route.shape.gpus > 0, route.tag, route.tag_exclusive,
                    accepting=limit is None or limit <= 0 or w.runs < limit,
                ))  # fmt: skip
        if not slots:
            return
        quota = self.sc.quota
        for start in dispatch(list(self.staged.values()), slots, self.owner_running, quota):
            worker = by_id[start.worker_id]
            job = self.jobs[start.uuid]
            del self.staged[start.uuid]
            self.started[start.uuid] = at
            worker.free = worker.free.minus(job.cpus, job.gpus, job.memory_bytes)
            worker.running += 1
            worker.runs += 1
            if worker.idle_since is not None:
                worker.idle_total += at - worker.idle_since
                worker.idle_since = None
            self.owner_running[job.owner] = self.owner_running.get(job.owner, 0) + 1
            self.push(at + job.run_seconds, DONE, _Event(job, worker))

    # -- backends -----------------------------------------------------------------------

    def has_room(self, pool: _Pool) -> bool:
        capacity = pool.sim.model.capacity
        if capacity is None:
            return True
        return sum(1 for w in pool.workers.values() if w.state != "queued") < capacity

    def launch(self, at: float, index: int) -> bool:
        pool = self.pools[index]
        pool.last_launch_at = at
        if self.rng.random() < pool.sim.model.refuse_rate:
            self.counts["refused"] += 1
            return False
        self.next_id += 1
        worker = _Worker(
            f"{pool.sim.spec.name}-{self.next_id:06d}", f"w{self.next_id:06d}", index, at
        )
        self.counts["launches"] += 1
        pool.workers[worker.job_id] = worker
        pool.memory = replace(
            pool.memory, booting_since={**pool.memory.booting_since, worker.job_id: at}
        )
        if self.has_room(pool):
            self.provision(at, worker)
        else:
            pool.queue.append(worker)
        return True

    def provision(self, at: float, worker: _Worker) -> None:
        model = self.pools[worker.pool].sim.model
        worker.state, worker.started_at = "booting", at
        delay = self.rng.lognormvariate(math.log(model.boot_seconds), model.boot_sigma)
        draw = self.rng.random()
        if draw < model.fail_rate:
            worker.fate = "fail"
            self.push(at + delay, ENDED, _Event(worker=worker))
        elif draw < model.fail_rate + model.stuck_rate:
            worker.fate = "stuck"
            self.push(at + model.stuck_seconds, ENDED, _Event(worker=worker))
        else:
            self.push(at + delay, READY, _Event(worker=worker))

    def registered(self, worker: _Worker) -> RegisteredWorker:
        route = self.pools[worker.pool].sim.spec.route
        shape = route.shape
        return RegisteredWorker(
            worker_id=f"sim-{worker.worker_id}", cpus=shape.cpus, gpus=shape.gpus,
            memory_bytes=shape.memory_bytes, cpus_in_use=shape.cpus - worker.free.cpus,
            gpus_in_use=shape.gpus - worker.free.gpus,
            run_uuids=("run",) * worker.running, tag=route.tag,
        )  # fmt: skip

    # -- the planner --------------------------------------------------------------------

    def _quiet(self, at: float) -> bool:
        """Nothing changed since a pass that launched nothing for a reason time cannot change.

        No worker boots (none can turn stuck), no pool backs off or waits for
        tokens or a cooldown: the planner would decide the same again.
        """
        if not self.skip_quiet or self.changed or self.last_launched or self.last is None:
            return False
        for pool in self.pools:
            if pool.memory.backoff.active(at) or pool.queue:
                return False
            if any(w.state != "serving" for w in pool.workers.values()):
                return False
        return all(p.reason in STEADY for p in self.last.pools.values())

    def planner_pass(self, at: float) -> None:
        self.passes += 1
        if self._quiet(at):
            return
        self.planned += 1
        self.changed = False
        staged = tuple(self.staged.values())
        inputs = [PoolInput(p.sim.spec, self.pool_state(p, staged, at)) for p in self.pools]
        result = plan(inputs, Observation(self.check_ins(at), at), at)
        self.last = result
        self.unroutable.update(s.uuid for s in result.routing.unroutable if s.reason in PERMANENT)
        launched = False
        for index, pool in enumerate(self.pools):
            launched |= self.act(at, index, pool, result)
        self.last_launched = launched

    def check_ins(self, at: float) -> tuple[RegisteredWorker, ...]:
        """``GET /rest/workers/info`` now: the registered workers, and those gone < 60 s ago."""
        while self.gone_listed and self.gone_listed[0][0] <= at:
            self.gone_listed.popleft()
        serving = tuple(
            self.registered(w) for p in self.pools for w in p.workers.values()
            if w.state == "serving"
        )  # fmt: skip
        return serving + tuple(r for _, r in self.gone_listed)

    def pool_state(self, pool: _Pool, staged: tuple[StagedBundle, ...], at: float) -> PoolState:
        route = pool.sim.spec.route
        view: BundleView = prefilter(staged, route.shape, enabled=route.prefilter)
        jobs = tuple(
            WorkerJob(w.job_id, JobState.ACTIVE if w.state == "serving" else JobState.PENDING,
                      worker_id=w.worker_id)
            for w in pool.workers.values()
        )  # fmt: skip
        return PoolState(
            bundles=Observation(view, at),
            jobs=Observation(jobs, at),
            last_launch_at=pool.last_launch_at,
            failed_starts=pool.failed_starts,
            memory=pool.memory,
        )

    def act(self, at: float, index: int, pool: _Pool, result: Plan) -> bool:
        """What ``service.planning`` does with a pool's plan, against the simulated backend."""
        spec = pool.sim.spec
        p = result.pools[spec.name]
        fast = spec.kind is PolicyKind.FAST
        memory = p.memory
        if fast and pool.failed_starts > memory.failed_starts_seen:
            memory = after_failure(spec, memory, at, self.rng.random())
        pool.memory = replace(memory, failed_starts_seen=pool.failed_starts)
        stuck = [w for w in p.by_state(WorkerState.STUCK) if w.job_id not in pool.stuck_seen]
        pool.stuck_seen.update(w.job_id for w in stuck)
        self.counts["stuck"] += len(stuck)
        outcomes = []
        for _ in range(p.launch):
            ok = self.launch(at, index)
            outcomes.append(ok)
            if not ok and not fast:
                break
        if fast and outcomes:
            pool.memory = after_launches(spec, pool.memory, len(outcomes), at)
        if (fast or len(self.pools) > 1) and not all(outcomes):
            pool.memory = after_failure(spec, pool.memory, at, self.rng.random())
        if stuck and pool.sim.cancel_stuck:
            for w in stuck:
                worker = pool.workers.get(w.job_id)
                if worker is not None:
                    self.counts["cancelled"] += 1
                    self.leave(at, worker)
            pool.memory = after_failure(spec, pool.memory, at, self.rng.random())
        return any(outcomes) or bool(stuck and pool.sim.cancel_stuck)

    def sample(self, at: float) -> None:
        if self.last is None:
            return
        for pool in self.pools:
            p = self.last.pools[pool.sim.spec.name]
            serving = p.by_state(WorkerState.SERVING)
            self.samples.append(Sample(
                at, p.name, p.counted, len(p.by_state(WorkerState.BOOTING)), len(serving),
                sum(1 for w in serving if w.idle), len(p.by_state(WorkerState.STUCK)),
            ))  # fmt: skip

    # -- the outcome --------------------------------------------------------------------

    def result(self) -> Result:
        end = self.end
        live = [w for p in self.pools for w in p.workers.values()]
        for w in live:
            if w.idle_since is not None:
                w.idle_total += end - w.idle_since
        everyone = self.finished_workers + live
        cost = sum((w.gone_at or end) - w.started_at for w in everyone if w.started_at is not None)
        waits = [self.started[u] - j.submit for u, j in self.jobs.items() if u in self.started]
        unstarted = [u for u in self.jobs if u not in self.started and u not in self.unroutable]
        waits += [end - self.jobs[u].submit for u in unstarted]
        return Result(
            scenario=self.sc.name,
            end=end,
            waits=tuple(waits),
            started=len(self.started),
            unstarted=len(unstarted),
            unroutable=len(self.unroutable),
            launches=self.counts["launches"],
            refused=self.counts["refused"],
            failed_starts=sum(p.failed_starts for p in self.pools),
            stuck=self.counts["stuck"],
            cancelled=self.counts["cancelled"],
            worker_seconds=cost,
            idle_worker_seconds=sum(w.idle_total for w in everyone),
            never_ran=sum(1 for w in everyone if w.runs == 0),
            workers=len(everyone),
            passes=self.passes,
            planned=self.planned,
            samples=tuple(self.samples),
        )


def replay(scenario: Scenario, jobs: Sequence[Job]) -> Result:
    """Replay ``jobs`` under ``scenario``; the same inputs give the same result."""
    return _Replay(scenario, jobs).run()
