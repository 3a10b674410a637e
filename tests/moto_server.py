"""moto's AWS server as a real peer: started per test session on loopback, stopped even on failure.

``moto_server`` is the console script of ``moto[server]``; the scaler
reaches it with ``endpoint_url`` through aiobotocore (moto's in-process
``@mock_aws`` does not patch aiohttp).  Each test gets a clean server
(``/moto-api/reset``), its own compute environment and queues, and fake AWS
credentials in its environment only (``aws_env``).  A test module using
``moto`` imports the fixtures it needs too: ``moto_server`` and ``aws_env``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import pytest

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
REGION = "us-east-1"
QUEUE = "codalab-test-queue"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:codalab-worker-pw"
ROLE_ARN = "arn:aws:iam::123456789012:role/batch-execution"


@dataclass
class MotoServer:
    url: str

    def post(self, path: str, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body or {}).encode()
        url = self.url + path  # http://127.0.0.1:<port>/..., built here
        request = urllib.request.Request(url, data=data, method="POST")  # noqa: S310 - see url
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - see url
            response.read()

    def job_lifecycle(self, seconds: float) -> None:
        """Jobs pass SUBMITTED, PENDING, RUNNABLE, STARTING (``seconds`` each), then FAILED.

        moto "runs" jobs with Docker; there is no engine here, so a job that
        reaches the end of STARTING fails: pending the whole time, never active.
        """
        self.post("/moto-api/config", {"batch": {"use_docker": True}})
        self.post(
            "/moto-api/state-manager/set-transition",
            {"model_name": "batch::job", "transition": {"progression": "time", "seconds": seconds}},
        )


@contextlib.contextmanager
def running_moto_server(
    port: int, ready_within: float = 30.0, env: Mapping[str, str] | None = None
) -> Iterator[MotoServer]:
    """``env``: extra environment for the server (e.g. ``DOCKER_HOST``), on top of this one's."""
    proc = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        env=None if env is None else {**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = MotoServer(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + ready_within
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/moto-api/data.json", timeout=1):  # noqa: S310 - loopback
                    break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start (exit {proc.poll()})") from None
                time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class MotoBatch:
    """A reset moto server with a compute environment and ``QUEUE``; sync botocore for set-up."""

    server: MotoServer
    batch: Any  # botocore's (synchronous) batch client
    compute_environment: str

    @property
    def url(self) -> str:
        return self.server.url

    def create_queue(self, name: str) -> None:
        self.batch.create_job_queue(
            jobQueueName=name,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": self.compute_environment}],
        )

    def submit_foreign(self, name: str, queue: str = QUEUE) -> str:
        """A job someone else submitted to the queue (its own definition)."""
        definition = self.batch.register_job_definition(
            jobDefinitionName="someone-else",
            type="container",
            containerProperties={"image": "busybox", "vcpus": 1, "memory": 128},
        )["jobDefinitionArn"]
        job_id: str = self.batch.submit_job(jobName=name, jobQueue=queue, jobDefinition=definition)[
            "jobId"
        ]
        return job_id

    def statuses(self, queue: str = QUEUE) -> dict[str, str]:
        """Every job of ``queue``: name -> status."""
        found = {}
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "FAILED"):
            for job in self.batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]:
                found[job["jobName"]] = status
        return found


def prepare(server: MotoServer) -> MotoBatch:
    server.post("/moto-api/reset")
    session = botocore.session.get_session()  # sync botocore: set-up only, before any await
    clients: dict[str, Any] = {
        name: session.create_client(name, endpoint_url=server.url, region_name=REGION)
        for name in ("iam", "ec2", "batch")
    }
    profile = clients["iam"].create_instance_profile(InstanceProfileName="ecs-instance")
    role = clients["iam"].create_role(RoleName="batch-service", AssumeRolePolicyDocument="{}")
    subnets = [s["SubnetId"] for s in clients["ec2"].describe_subnets()["Subnets"]]
    groups = [g["GroupId"] for g in clients["ec2"].describe_security_groups()["SecurityGroups"]]
    environment = clients["batch"].create_compute_environment(
        computeEnvironmentName="codalab-test-ce",
        type="MANAGED",
        state="ENABLED",
        computeResources={
            "type": "EC2",
            "minvCpus": 0,
            "maxvCpus": 64,
            "instanceTypes": ["optimal"],
            "subnets": subnets,
            "securityGroupIds": groups,
            "instanceRole": profile["InstanceProfile"]["Arn"],
        },
        serviceRole=role["Role"]["Arn"],
    )
    moto = MotoBatch(server, clients["batch"], environment["computeEnvironmentArn"])
    moto.create_queue(QUEUE)
    return moto


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake AWS credentials and region in this test's environment only."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="session")
def moto_server(unused_tcp_port_factory: Callable[[], int]) -> Iterator[MotoServer]:
    with running_moto_server(unused_tcp_port_factory()) as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer, aws_env: None) -> MotoBatch:
    """A clean moto with a queue whose jobs stay SUBMITTED (pending) for a minute."""
    moto_server.job_lifecycle(60)
    return prepare(moto_server)
