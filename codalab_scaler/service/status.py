"""The ``/status`` document: the current snapshot and each pool's last decision, as JSON.

Built from values only; it holds no settings object, so no credential can
reach it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from codalab_scaler.core.decision import Decision
from codalab_scaler.core.model import Observation
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


def build_status(ctx: Context, health: HealthReport) -> dict[str, Any]:
    now = ctx.clock()
    snap = ctx.state.snapshot
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
    }
