"""Prometheus metrics on an injected registry.

Counters and histograms record what happened; gauges that mirror the state
(staged bundles, worker jobs, observation age...) are computed from the
current snapshot at scrape time by ``SnapshotCollector``, so they can never
disagree with ``/status``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from codalab_scaler import __version__
from codalab_scaler.core.decision import Policy, Reason, count, decide
from codalab_scaler.core.model import BundleView, Observation, PoolState, Snapshot
from codalab_scaler.core.planner import Plan, PolicyKind, PoolInput, PoolSpec, plan
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.routing import RouteSpec, Unroutable
from codalab_scaler.core.supply import WorkerState

PREFIX = "codalab_scaler"
LAUNCH_OUTCOMES = ("launched", "refused", "failed", "dry_run")


class Metrics:
    """Every event metric of the service, registered on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # No *_created series: Prometheus stores each as one more gauge per label set,
        # and nothing here reads them (process-wide switch; this process is the scaler).
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = registry
        self.launches = Counter(
            f"{PREFIX}_launches",
            "Worker launches by pool and outcome (launched, refused, failed, dry_run).",
            ["pool", "outcome"],
            registry=registry,
        )
        self.decisions = Counter(
            f"{PREFIX}_decisions",
            "Scaling decisions by pool and the reason that settled them.",
            ["pool", "reason"],
            registry=registry,
        )
        self.poll_duration = Histogram(
            f"{PREFIX}_poll_duration_seconds",
            "Time taken by one poll of a source (bundles or jobs), retries included.",
            ["pool", "source"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.poll_errors = Counter(
            f"{PREFIX}_poll_errors",
            "Polls that failed after retries, by pool, source and kind (transient, refused).",
            ["pool", "source", "kind"],
            registry=registry,
        )
        self.retries = Counter(
            f"{PREFIX}_retries",
            "Retried calls by peer (codalab, backend); pool is empty for the CodaLab client.",
            ["peer", "pool"],
            registry=registry,
        )
        self.malformed = Counter(
            f"{PREFIX}_malformed_bundles",
            "Bundles skipped because CodaLab returned them malformed (counted per poll).",
            ["pool"],
            registry=registry,
        )
        self.in_flight_expired = Counter(
            f"{PREFIX}_in_flight_expired",
            "Accepted launches that the backend never listed within the in-flight timeout.",
            ["pool"],
            registry=registry,
        )
        self.failed_starts = Counter(
            f"{PREFIX}_failed_starts",
            "Worker jobs that ended failed (non-zero exit, failed by the backend) or never ran.",
            ["pool"],
            registry=registry,
        )
        self.stuck_workers = Counter(
            f"{PREFIX}_stuck_workers",
            "Workers found stuck (booting longer than provision_timeout_seconds), each once.",
            ["pool"],
            registry=registry,
        )
        self.cancelled_workers = Counter(
            f"{PREFIX}_cancelled_workers",
            "Stuck workers cancelled (cancel_stuck_workers), by outcome (cancelled, failed).",
            ["pool", "outcome"],
            registry=registry,
        )
        self.checked_out_workers = Counter(
            f"{PREFIX}_checked_out_workers",
            "Workers whose backend job had ended checked out of CodaLab on their behalf, by "
            "outcome (checked_out, failed).",
            ["pool", "outcome"],
            registry=registry,
        )
        self.backoffs = Counter(
            f"{PREFIX}_backoffs",
            "Times a pool entered (or extended) its backoff after a failure.",
            ["pool"],
            registry=registry,
        )
        waits = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
        self.bundle_launch_wait_seconds = Histogram(
            f"{PREFIX}_bundle_launch_wait_seconds",
            "Seconds from a bundle first seen staged to the launch of a worker for it.",
            ["pool"],
            buckets=waits,
            registry=registry,
        )
        self.bundle_staged_seconds = Histogram(
            f"{PREFIX}_bundle_staged_seconds",
            "Seconds from a bundle first seen staged to it leaving staged (by its last pool; "
            "empty when no pool took it).",
            ["pool"],
            buckets=waits,
            registry=registry,
        )
        self.malformed_workers = Counter(
            f"{PREFIX}_malformed_workers",
            "workers/info entries skipped because they were malformed (counted per poll).",
            registry=registry,
        )
        self.workers_poll_errors = Counter(
            f"{PREFIX}_workers_poll_errors",
            "Polls of CodaLab's workers/info that failed after retries, by kind.",
            ["kind"],
            registry=registry,
        )
        for kind in ("transient", "refused"):
            self.workers_poll_errors.labels(kind=kind)
        # Memory, CPU, open files and start time of the scaler itself (restarts show
        # as changes of process_start_time_seconds).
        ProcessCollector(registry=registry)
        self.retries.labels(peer="codalab", pool="")  # one CodaLab client serves every pool
        self.build = Info(f"{PREFIX}_build", "Version of codalab-scaler.", registry=registry)
        self.build.info({"version": __version__, "python": platform.python_version()})

    def init_pool(self, pool: str) -> None:
        """Export every labelled counter of ``pool`` at 0 from the start.

        A series that appears only on its first increment makes ``rate()`` and
        ``increase()`` miss that increment and alerts read "no data" as "fine".
        """
        for outcome in LAUNCH_OUTCOMES:
            self.launches.labels(pool=pool, outcome=outcome)
        for reason in Reason:
            self.decisions.labels(pool=pool, reason=reason.value)
        for source in ("bundles", "jobs"):
            self.poll_duration.labels(pool=pool, source=source)
            for kind in ("transient", "refused"):
                self.poll_errors.labels(pool=pool, source=source, kind=kind)
        self.retries.labels(peer="backend", pool=pool)
        self.malformed.labels(pool=pool)
        self.in_flight_expired.labels(pool=pool)
        self.failed_starts.labels(pool=pool)
        self.stuck_workers.labels(pool=pool)
        self.backoffs.labels(pool=pool)
        self.bundle_launch_wait_seconds.labels(pool=pool)
        self.bundle_staged_seconds.labels(pool=pool)
        for outcome in ("cancelled", "failed"):
            self.cancelled_workers.labels(pool=pool, outcome=outcome)
        for outcome in ("checked_out", "failed"):
            self.checked_out_workers.labels(pool=pool, outcome=outcome)

    def retry_hook(self, peer: str, pool: str = "") -> Callable[[str, BaseException], None]:
        counter = self.retries.labels(peer=peer, pool=pool)

        def hook(_source: str, _exc: BaseException) -> None:
            counter.inc()

        return hook


@dataclass(frozen=True, slots=True)
class ScrapeView:
    """What the collector reads at scrape time."""

    snapshot: Snapshot
    policies: Mapping[str, Policy]
    now: float
    plan: Plan | None = None


class SnapshotCollector(Collector):
    """Gauges computed from the current snapshot on every scrape."""

    def __init__(self, view: Callable[[], ScrapeView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        v = self._view()
        staged = GaugeMetricFamily(
            f"{PREFIX}_staged_bundles",
            "Staged bundles this pool's workers can serve (after the prefilter).",
            labels=["pool"],
        )
        filtered = GaugeMetricFamily(
            f"{PREFIX}_filtered_bundles",
            "Staged bundles this pool's workers cannot serve, by the resource that is too large.",
            labels=["pool", "reason"],
        )
        jobs = GaugeMetricFamily(
            f"{PREFIX}_worker_jobs",
            "Worker jobs by state; pending includes accepted launches not listed yet.",
            labels=["pool", "state"],
        )
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_in_flight_launches",
            "Launches the backend accepted but does not list yet.",
            labels=["pool"],
        )
        age = GaugeMetricFamily(
            f"{PREFIX}_observation_age_seconds",
            "Seconds since the last successful poll of a source.",
            labels=["pool", "source"],
        )
        ok = GaugeMetricFamily(
            f"{PREFIX}_observation_ok",
            "1 when the last poll of a source succeeded, 0 when it failed or never succeeded.",
            labels=["pool", "source"],
        )
        limits = GaugeMetricFamily(
            f"{PREFIX}_pool_workers_limit",
            "The pool's configured worker limits (bound = min or max).",
            labels=["pool", "bound"],
        )
        last = GaugeMetricFamily(
            f"{PREFIX}_last_decision",
            "1 for the reason of the pool's latest decision, 0 for the others.",
            labels=["pool", "reason"],
        )
        for pool, state in sorted(v.snapshot.pools.items()):
            counts = count(state)
            staged.add_metric([pool], counts.staged)
            by_reason = {"cpus": 0, "gpus": 0, "memory": 0}
            if state.bundles.value is not None:
                for item in state.bundles.value.filtered:
                    by_reason[item.reason] = by_reason.get(item.reason, 0) + 1
            for reason, n in sorted(by_reason.items()):
                filtered.add_metric([pool, reason], n)
            jobs.add_metric([pool, "pending"], counts.pending)
            jobs.add_metric([pool, "active"], counts.active)
            in_flight.add_metric([pool], len(state.in_flight))
            for source, obs in (("bundles", state.bundles), ("jobs", state.jobs)):
                a = obs.age(v.now)
                if a is not None:
                    age.add_metric([pool, source], a)
                ok.add_metric([pool, source], 1.0 if obs.ok else 0.0)
            policy = v.policies.get(pool)
            if policy is not None:
                limits.add_metric([pool, "min"], policy.min_workers)
                limits.add_metric([pool, "max"], policy.max_workers)
            decision = state.last_decision
            if decision is not None:
                for reason in Reason:
                    last.add_metric([pool, reason.value], 1.0 if decision.reason is reason else 0.0)
        yield from (staged, filtered, jobs, in_flight, age, ok, limits, last)
        yield from _planner_families(v)


def _planner_families(v: ScrapeView) -> Iterator[Metric]:
    """The planner's latest pass: workers by state, routing, backoff and tokens per pool."""
    workers = GaugeMetricFamily(
        f"{PREFIX}_workers",
        "Workers by pool and state: booting, serving, idle (serving with nothing running) "
        "and stuck, from the backend's jobs joined to CodaLab's workers/info.",
        labels=["pool", "state"],
    )
    routed = GaugeMetricFamily(
        f"{PREFIX}_routed_bundles",
        "Staged bundles routed to this pool by the planner's latest pass.",
        labels=["pool"],
    )
    unroutable = GaugeMetricFamily(
        f"{PREFIX}_unroutable_bundles",
        "Staged bundles no pool can take now, by reason.",
        labels=["reason"],
    )
    backoff = GaugeMetricFamily(
        f"{PREFIX}_backoff_remaining_seconds",
        "Seconds before a pool in backoff takes bundles and launches again (0: not backing off).",
        labels=["pool"],
    )
    tokens = GaugeMetricFamily(
        f"{PREFIX}_launch_tokens",
        "Launch tokens a fast pool has left (launch_rate_per_minute, launch_burst).",
        labels=["pool"],
    )
    latest = v.plan
    if latest is not None:
        for name, p in sorted(latest.pools.items()):
            for state in WorkerState:
                workers.add_metric([name, state.value], len(p.by_state(state)))
            idle = sum(1 for w in p.by_state(WorkerState.SERVING) if w.idle)
            workers.add_metric([name, "idle"], idle)
            routed.add_metric([name], len(latest.routing.routed.get(name, ())))
            pool_state = v.snapshot.pools.get(name)
            memory = pool_state.memory if pool_state is not None else p.memory
            backoff.add_metric([name], memory.backoff.remaining(v.now))
            if p.kind is PolicyKind.FAST:
                tokens.add_metric([name], p.tokens)
        by_reason = dict.fromkeys(Unroutable, 0)
        for stranded in latest.routing.unroutable:
            by_reason[stranded.reason] += 1
        for reason, n in by_reason.items():
            unroutable.add_metric([reason.value], n)
    yield from (workers, routed, unroutable, backoff, tokens)


class LeaderCollector(Collector):
    """``codalab_scaler_leader``: 1 while this replica may launch (always, without election)."""

    def __init__(self, leading: Callable[[], bool]) -> None:
        self._leading = leading

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            f"{PREFIX}_leader",
            "1 on the replica that launches (the Lease holder, or a scaler without "
            "--leader-election), 0 on a standby.",
        )
        gauge.add_metric([], 1.0 if self._leading() else 0.0)
        yield gauge


def reference_registry(pool: str = "<pool>") -> CollectorRegistry:
    """Every metric family the service exports, on a fresh registry, with no service.

    The event metrics of one pool ``pool`` (at 0), the build info, the process
    metrics, and the snapshot gauges over a one-pool snapshot whose sources were
    both observed empty, so that every family has samples and shows its labels.
    The generated metrics reference (``docs/generate.py``) is written from it.
    """
    registry = CollectorRegistry()
    Metrics(registry).init_pool(pool)
    state = PoolState(
        bundles=Observation(value=BundleView(), observed_at=0.0),
        jobs=Observation(value=(), observed_at=0.0),
    )
    policy = Policy(
        min_workers=0,
        max_workers=0,
        min_seconds_between_workers=0,
        staleness_seconds=1.0,
        max_launches_per_pass=1,
    )
    state = replace(state, last_decision=decide(state, policy, 0.0))
    spec = PoolSpec(
        route=RouteSpec(pool, WorkerShape(1, 0, 1024), None, False, 0, True),  # noqa: FBT003 - positional fields of a value
        kind=PolicyKind.FAST,
        limits=policy,
        launch_rate_per_minute=60,
        launch_burst=1,
        min_idle_workers=0,
        provision_timeout=1,
        backoff_initial=1,
        backoff_max=1,
    )
    view = ScrapeView(
        snapshot=Snapshot(taken_at=0.0, pools={pool: state}),
        policies={pool: policy},
        now=0.0,
        plan=plan([PoolInput(spec, state)], Observation(value=(), observed_at=0.0), 0.0),
    )
    registry.register(SnapshotCollector(lambda: view))
    registry.register(LeaderCollector(lambda: True))
    return registry
