"""HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/status`` (JSON)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from codalab_scaler.service.context import Context
from codalab_scaler.service.status import build_status

# The service's wiring, set by the app's lifecycle once everything is open (before any
# request can arrive: the site starts after the lifecycle's start-up).
CONTEXT = web.AppKey("context", Context)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[CONTEXT].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    report = request.app[CONTEXT].liveness.check()
    return web.json_response(
        {"ok": report.ok, "problems": list(report.problems), "loops": report.loops},
        status=200 if report.ok else 503,
    )


async def status(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    return web.json_response(build_status(ctx, ctx.liveness.check()))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
