"""The ``/status`` document: the current snapshot and each pool's last decision, as JSON.

Built from values only; it holds no settings object, so no credential can
reach it.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from codalab_scaler.core.decision import Decision
from codalab_scaler.core.model import Observation, PoolState
from codalab_scaler.core.placement import Where
from codalab_scaler.core.planner import Plan, PolicyKind, PoolPlan
from codalab_scaler.core.supply import WorkerState
from codalab_scaler.service.context import Context
from codalab_scaler.service.health import HealthReport

LIST_LIMIT = 100


def _obs(obs: Observation[Any], now: float) -> dict[str, Any]:
    age = obs.age(now)
    return {
        "ok": obs.ok,
        "age_seconds": None if age is None else round(age, 3),
        "error": obs.error,
    }


def _decision(d: Decision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "launch": d.launch,
        "reason": d.reason.value,
        "blocked_by": [r.value for r in d.blocked_by],
        "stale": list(d.stale),
        "staged": d.counts.staged,
        "pending": d.counts.pending,
        "active": d.counts.active,
    }


def _leadership(ctx: Context) -> dict[str, Any] | None:
    lead = ctx.leadership
    if lead is None:
        return None
    return {
        "role": "leader" if lead.is_leader() else "standby",
        "identity": lead.identity,
        "leader": lead.holder(),
        "lease": lead.options.name,
    }


def _planner(p: PoolPlan | None, state: PoolState, now: float) -> dict[str, Any] | None:
    """A pool in the planner's latest pass: its workers by state, what it needs, pacing.

    ``worker_counts`` and ``placed_counts`` (its routed bundles by where they
    are placed) are exact; the lists of job ids are cut at ``LIST_LIMIT``.
    """
    if p is None:
        return None
    workers: dict[str, list[str]] = {s.value: [] for s in WorkerState}
    workers["idle"] = []
    for w in p.workers:
        workers[w.state.value].append(w.job_id)
        if w.state is WorkerState.SERVING and w.idle:
            workers["idle"].append(w.job_id)
    placed = {w.value: 0 for w in Where}
    for x in p.placements:
        placed[x.where.value] += 1
    backoff = state.memory.backoff
    return {
        "policy": p.kind.value,
        "workers": {k: v[:LIST_LIMIT] for k, v in workers.items()},
        # Exact, where the lists above are cut at LIST_LIMIT (top counts these).
        "worker_counts": {k: len(v) for k, v in workers.items()},
        "placed_counts": placed,
        "counted_bundles": p.counted,
        "needed_workers": p.needed,
        "tokens": p.tokens if p.kind is PolicyKind.FAST else None,
        "backoff_seconds": round(backoff.remaining(now), 3),
        "backoff_failures": backoff.failures,
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _waiting_on(plan: Plan, wanted: set[str]) -> dict[str, str]:
    """Bundles of ``wanted`` placed on a serving worker's free capacity: a label naming that worker.

    Such a bundle is not demand (the pool launches nothing for it); if it
    stays staged, CodaLab is holding it back (a user at their parallel-run
    quota, for instance), and this says which worker it waits on.
    """
    names = {
        w.job_id: w.job_id if w.registered_as in (None, w.job_id) else
        f"{w.job_id} / {w.registered_as}"
        for p in plan.pools.values()
        for w in p.workers
    }  # fmt: skip
    return {
        x.uuid: f"worker {names.get(x.worker, x.worker)}"
        for p in plan.pools.values()
        for x in p.placements
        if x.where is Where.SERVING and x.uuid in wanted
    }


def _bundles(
    plan: Plan | None, first_seen: Mapping[str, float], now: float, wall: float
) -> dict[str, Any]:
    """Each staged bundle: its pool and where it is placed, or why no pool takes it.

    ``now`` is the service clock (``first_seen`` is on it); ``wall`` is the
    epoch time at ``now``, to give ``first_seen`` as an ISO-8601 UTC time.
    Only the first ``LIST_LIMIT`` by uuid are described (a pass may hold 10,000).
    """
    if plan is None:
        return {"staged": [], "count": 0, "unroutable_count": 0}
    pool_of = {b.uuid: pool for pool, bundles in plan.routing.routed.items() for b in bundles}
    stranded_of = {s.uuid: s for s in plan.routing.unroutable}
    staged = pool_of.keys() | stranded_of.keys()
    shown = heapq.nsmallest(LIST_LIMIT, staged)
    wanted = set(shown)
    placed = {
        x.uuid: {"where": x.where.value, "worker": x.worker}
        for p in plan.pools.values()
        for x in p.placements
        if x.uuid in wanted
    }
    waiting_on = _waiting_on(plan, wanted)
    rows = []
    for uuid in shown:
        stranded = stranded_of.get(uuid)
        row: dict[str, Any] = {"uuid": uuid, "pool": None, "placed": None, "waiting_on": None,
                               "unroutable": None}  # fmt: skip
        if stranded is None:
            row["pool"], row["placed"] = pool_of[uuid], placed.get(uuid)
            row["waiting_on"] = waiting_on.get(uuid)
        else:
            row["unroutable"] = {
                "reason": stranded.reason.value,
                "resource": stranded.resource,
                "requested": stranded.requested,
                "largest": stranded.largest,
                "held_by": stranded.held_by,
            }
        since = first_seen.get(uuid)
        row["first_seen"] = None if since is None else _iso(wall - (now - since))
        row["waiting_seconds"] = None if since is None else round(now - since, 3)
        rows.append(row)
    return {
        "staged": rows,
        "count": len(staged),
        "unroutable_count": len(plan.routing.unroutable),
    }


def build_status(ctx: Context, health: HealthReport) -> dict[str, Any]:
    now, wall = ctx.clock(), time.time()
    snap = ctx.state.snapshot
    latest = ctx.state.plan
    pools: dict[str, Any] = {}
    for name, state in sorted(snap.pools.items()):
        runtime = ctx.pools[name]
        view = state.bundles.value
        jobs = state.jobs.value or ()
        pools[name] = {
            "policy": dataclasses.asdict(runtime.policy),
            "worker_shape": {
                "cpus": runtime.shape.cpus,
                "gpus": runtime.shape.gpus,
                "memory_mb": runtime.shape.memory_mb,
                "prefilter": runtime.prefilter,
            },
            "keywords": list(runtime.keywords),
            "bundles": {
                **_obs(state.bundles, now),
                "staged": [b.uuid for b in view.staged[:LIST_LIMIT]] if view else [],
                "staged_count": len(view.staged) if view else 0,
                "filtered": [
                    {
                        "uuid": f.uuid,
                        "reason": f.reason,
                        "requested": f.requested,
                        "available": f.available,
                    }
                    for f in (view.filtered[:LIST_LIMIT] if view else ())
                ],
                "malformed": view.malformed if view else 0,
            },
            "jobs": {
                **_obs(state.jobs, now),
                "jobs": [
                    {"job_id": j.job_id, "state": j.state.value, "worker_id": j.worker_id}
                    for j in jobs[:LIST_LIMIT]
                ],
                "count": len(jobs),
            },
            "in_flight": [
                {
                    "job_id": f.job_id,
                    "worker_id": f.worker_id,
                    "age_seconds": round(now - f.launched_at, 3),
                }
                for f in state.in_flight
            ],
            "last_launch_age_seconds": (
                None if state.last_launch_at is None else round(now - state.last_launch_at, 3)
            ),
            "decision": _decision(state.last_decision),
            "planner": _planner(latest.pools.get(name) if latest else None, state, now),
            "failed_starts": state.failed_starts,
            "exit_after_num_failed": runtime.exit_after_num_failed,
        }
    return {
        "healthy": health.ok,
        "problems": list(health.problems),
        "loops": health.loops,
        "dry_run": ctx.dry_run,
        "leadership": _leadership(ctx),
        "snapshot_version": snap.version,
        "snapshot_age_seconds": round(now - snap.taken_at, 3),
        "pools": pools,
        "workers_info": _obs(snap.workers, now),
        "bundles": _bundles(latest, ctx.state.waits.first_seen, now, wall),
    }
