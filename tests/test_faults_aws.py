"""Every fault of the proxy between the whole app and moto's AWS Batch server.

CodaLab (the simulator) answers directly; the faults hit ``ListJobs``, the
jobs view (connection refused closes the whole endpoint).  Jobs stay
pending in moto, so the rule "pending covers staged" holds the count: any
launch on a blind view would show as one job too many in moto's queue.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import structlog
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from codalab_scaler.config.settings import Settings
from codalab_scaler.service.app import make_app
from codalab_scaler.simulator import CodaLabSimulator
from codalab_scaler.sources.backends.aws_batch.backend import AwsBatchBackend
from codalab_scaler.sources.backends.aws_batch.settings import AwsBatchBackendSettings
from codalab_scaler.sources.backends.base import WorkerCredentials
from codalab_scaler.sources.retry import RetryPolicy, call_with_retry
from tests.defaults import worker_options
from tests.fault_proxy import (
    FAILING,
    RETRY_AFTER_SECONDS,
    Fault,
    ProxyFactory,
    fault_proxy,
    halve,
)
from tests.fault_rig import Rig
from tests.harness import started
from tests.moto_server import QUEUE, SECRET_ARN, MotoBatch, aws_env, moto, moto_server
from tests.waiting import eventually

__all__ = ["aws_env", "fault_proxy", "moto", "moto_server"]  # fixtures

PASSWORD = "pw-for-aws-fault-tests"
SLEEP = 0.2


def aws_settings(server: str, endpoint: str, **top: Any) -> Settings:
    return Settings.model_validate(
        {
            "server": server,
            "username": "codalab",
            "password": PASSWORD,
            "sleep_time": SLEEP,
            "retry_attempts": 2,
            "retry_max_seconds": 1.5,  # room for the proxy's 1 s Retry-After, once
            "retry_backoff_seconds": 0.01,
            "retry_max_backoff_seconds": 0.02,
            **top,
            "pools": {
                "p": {
                    "min_workers": 0,
                    "max_workers": 6,
                    "min_seconds_between_workers": 0,
                    "backend": {
                        "kind": "aws-batch",
                        "endpoint_url": endpoint,
                        "job_queue": QUEUE,
                        "password_secret_arn": SECRET_ARN,
                        "connect_timeout_seconds": 0.5,
                        "read_timeout_seconds": 0.5,
                    },
                }
            },
        }
    )


class AwsRig(Rig):
    moto: MotoBatch

    async def ours(self) -> int:
        """This pool's jobs in moto's queue, whatever their state."""
        names = await asyncio.to_thread(self.moto.statuses)
        return len([name for name in names if name.startswith("codalab-scaler-p-")])


@pytest_asyncio.fixture
async def rig(moto: MotoBatch, fault_proxy: ProxyFactory) -> AsyncIterator[AwsRig]:
    sim = CodaLabSimulator(users={"codalab": PASSWORD})
    await sim.start()
    try:
        proxy = await fault_proxy(
            moto.url,
            applies=lambda request: request.path == "/v1/listjobs",
            trim=halve("jobSummaryList"),
        )
        registry = CollectorRegistry()
        app = make_app(aws_settings(sim.url, proxy.url), registry=registry)
        with capture_logs() as logs:
            async with started(app) as ctx:
                rig = AwsRig(ctx, registry, proxy, sim, logs)
                rig.moto = moto
                await eventually(
                    lambda: bool(rig.events("scaler.decided")), "a first decision", within=10
                )
                yield rig
                assert not ctx.fatal.is_set(), ctx.fatal.reason
    finally:
        await sim.stop()


@pytest.mark.parametrize("fault", sorted(FAILING))
async def test_a_failed_jobs_view_launches_nothing_and_recovers(rig: AwsRig, fault: Fault) -> None:
    await rig.proxy.set(fault)
    # Work arrives once the jobs view is known to have failed (a fresh view may launch).
    await eventually(lambda: rig.errors("jobs") >= 1, "a failed poll", within=20)
    for _ in range(2):
        rig.sim.add_bundle(duration=600)
    await eventually(lambda: rig.errors("jobs") >= 3, "three failed polls", within=20)
    assert rig.launched == 0
    assert await rig.ours() == 0
    warned = rig.warned_once_each(len(rig.logs))
    assert warned.count("poll.failed:jobs") == 1
    assert len(warned) == len(set(warned)), warned

    end = len(rig.logs)
    await rig.proxy.clear()
    structlog.get_logger().info("test.fault_ended")
    await eventually(lambda: rig.launched == 2, "launches after the fault", within=10)
    assert rig.launch_followed_recovery(end)
    await asyncio.sleep(3 * SLEEP)  # more passes: pending now covers staged
    assert await rig.ours() == 2


async def test_a_slow_listing_is_no_failure(rig: AwsRig) -> None:
    await rig.proxy.set(Fault.SLOW)
    for _ in range(2):
        rig.sim.add_bundle(duration=600)
    await eventually(lambda: rig.launched == 2, "launches on slow answers", within=10)
    assert rig.errors("jobs") == 0
    assert rig.proxy.faulted > 0


async def test_a_partial_listing_never_launches_a_worker_twice(rig: AwsRig) -> None:
    for _ in range(4):
        rig.sim.add_bundle(duration=600)
    await eventually(lambda: rig.launched == 4, "pending covers staged", within=10)
    await eventually(lambda: not rig.ctx.state.snapshot.pools["p"].in_flight, "all listed")
    await rig.proxy.set(Fault.PARTIAL_PAGE)  # half of the pending jobs missing from each page
    await eventually(lambda: rig.proxy.faulted >= 10, "several partial listings", within=10)
    assert await rig.ours() == 4
    assert rig.launched == 4


async def test_the_backend_waits_as_long_as_aws_asks(
    moto: MotoBatch, fault_proxy: ProxyFactory
) -> None:
    proxy = await fault_proxy(moto.url, applies=lambda request: request.path == "/v1/listjobs")
    settings = AwsBatchBackendSettings(
        endpoint_url=proxy.url, job_queue=QUEUE, password_secret_arn=SECRET_ARN
    )
    backend = AwsBatchBackend("p", worker_options(), settings, WorkerCredentials("u", "pw"))
    try:
        await proxy.set(Fault.THROTTLED, times=1)
        policy = RetryPolicy(max_attempts=3, max_seconds=10, initial_backoff=0.01, max_backoff=0.02)
        assert await call_with_retry("backend", backend.list_jobs, policy) == []
    finally:
        await backend.aclose()
    times = [at for at, _method, path in proxy.seen if path == "/v1/listjobs"]
    assert len(times) == 10  # one call per status, twice
    assert max(b - a for a, b in itertools.pairwise(sorted(times))) >= RETRY_AFTER_SECONDS
