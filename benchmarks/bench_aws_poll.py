"""Cost of one aws-batch poll: list N jobs of the queue through real aiobotocore.

Run on demand (never in CI)::

    .venv/bin/python -m benchmarks.bench_aws_poll [--jobs 5000] [--page-sizes 100 1000]

The peer is a stub AWS Batch on loopback (aiohttp) answering ``ListJobs``
with AWS-shaped JSON pages of at most ``page size`` summaries and a
``nextToken``, because moto returns everything in one page whatever
``maxResults`` says.  So the numbers are the client's cost (botocore request
signing, JSON parsing, paging, name matching) plus a cheap server; they
compare versions of this code, not AWS.  Jobs are spread over the five
listed statuses; one in ten belongs to another pool.  Writes a JSON results
file (default ``benchmarks/results/aws_poll.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiobotocore
from aiohttp import web

from benchmarks.report import write_report
from codalab_scaler.config.settings import PoolSettings
from codalab_scaler.sources.backends.aws_batch.backend import AwsBatchBackend
from codalab_scaler.sources.backends.aws_batch.settings import AwsBatchBackendSettings
from codalab_scaler.sources.backends.base import WorkerCredentials

STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
SHARE = {"SUBMITTED": 0.1, "PENDING": 0.1, "RUNNABLE": 0.5, "STARTING": 0.1, "RUNNING": 0.2}


def queue(jobs: int) -> dict[str, list[dict[str, Any]]]:
    by_status: dict[str, list[dict[str, Any]]] = {s: [] for s in STATUSES}
    for i in range(jobs):
        status = STATUSES[0]
        position = (i % 100) / 100
        cumulative = 0.0
        for candidate in STATUSES:
            cumulative += SHARE[candidate]
            if position < cumulative:
                status = candidate
                break
        pool = "bench" if i % 10 else "other"
        by_status[status].append(
            {
                "jobArn": f"arn:aws:batch:us-east-1:123456789012:job/{i:08d}",
                "jobId": f"{i:08d}-0000-0000-0000-000000000000",
                "jobName": f"codalab-scaler-{pool}-{i:032x}",
                "createdAt": 1_700_000_000_000 + i,
                "status": status,
                "jobDefinition": "arn:aws:batch:us-east-1:123456789012:job-definition/cw:1",
            }
        )
    return by_status


async def stub_batch(jobs: dict[str, list[dict[str, Any]]], page_size: int) -> web.AppRunner:
    async def list_jobs(request: web.Request) -> web.Response:
        body = await request.json()
        listed = jobs.get(body.get("jobStatus", "RUNNING"), [])
        start = int(body.get("nextToken") or 0)
        end = start + min(page_size, int(body.get("maxResults") or 100))
        page: dict[str, Any] = {"jobSummaryList": listed[start:end]}
        if end < len(listed):
            page["nextToken"] = str(end)
        return web.json_response(page)

    app = web.Application()
    app.router.add_post("/v1/listjobs", list_jobs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def bench(jobs: int, page_size: int, rounds: int) -> dict[str, Any]:
    by_status = queue(jobs)
    runner = await stub_batch(by_status, page_size)
    port = runner.addresses[0][1]
    settings = AwsBatchBackendSettings(
        endpoint_url=f"http://127.0.0.1:{port}",
        password_secret_arn="arn:bench",
        execution_role_arn="arn:bench-role",
    )
    options = PoolSettings().worker_options("https://worksheets.codalab.org")
    backend = AwsBatchBackend("bench", options, settings, WorkerCredentials("u", "p"))
    try:
        listed = await backend.list_jobs()  # warm up: client creation, credentials, connections
        timings = []
        for _ in range(rounds):
            started = time.perf_counter()
            listed = await backend.list_jobs()
            timings.append(time.perf_counter() - started)
        tracemalloc.start()  # a separate round: tracing slows the timed ones down
        await backend.list_jobs()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        await backend.aclose()
        await runner.cleanup()
    best = min(timings)
    median = sorted(timings)[len(timings) // 2]
    return {
        "jobs_in_queue": jobs,
        "jobs_of_this_pool": len(listed),
        "page_size": page_size,
        "list_calls_per_poll": sum(-(-len(v) // page_size) or 1 for v in by_status.values()),
        "poll_seconds_median": round(median, 4),
        "poll_seconds_best": round(best, 4),
        "jobs_listed_per_second": round(jobs / median),
        "peak_traced_memory_mib": round(peak / 2**20, 2),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/aws_poll.json"))
    args = parser.parse_args()
    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(key, value)
    results = [asyncio.run(bench(args.jobs, size, args.rounds)) for size in args.page_sizes]
    write_report(
        "aws_poll",
        results,
        args.out,
        aiobotocore=aiobotocore.__version__,
        peer="stub AWS Batch (aiohttp on loopback), real aiobotocore client",
    )


if __name__ == "__main__":
    main()
