"""The kubernetes backend through the real kubernetes_asyncio client against ``tests.kube_fake``."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from codalab_scaler.core.errors import ConfigError, LaunchRefused, RefusedError, TransientError
from codalab_scaler.core.model import JobState
from codalab_scaler.sources.backends.base import WorkerCredentials
from codalab_scaler.sources.backends.kubernetes import backend as k8s_backend
from codalab_scaler.sources.backends.kubernetes.backend import KubernetesBackend
from codalab_scaler.sources.backends.kubernetes.settings import KubernetesBackendSettings
from codalab_scaler.sources.retry import call_with_retry
from tests.defaults import retry_policy, worker_options
from tests.kube_fake import KubeFake

PASSWORD = "s3cret-codalab-pw"
CREDS = WorkerCredentials("codalab", PASSWORD)
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

Make = Callable[..., Awaitable[KubernetesBackend]]


def wid(n: int) -> str:
    return f"{n:032x}"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[KubeFake]:
    server = KubeFake()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def make(fake: KubeFake, tmp_path: Path) -> AsyncIterator[Make]:
    opened: list[KubernetesBackend] = []
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")

    async def build(pool: str = "default", wall: datetime = NOW, **kw: Any) -> KubernetesBackend:
        settings = KubernetesBackendSettings(kubeconfig=kubeconfig, **kw)
        backend = KubernetesBackend(pool, worker_options(), settings, CREDS, wall=lambda: wall)
        await backend.open()
        opened.append(backend)
        return backend

    try:
        yield build
    finally:
        for backend in opened:
            await backend.aclose()


async def test_launch_creates_a_labelled_pod_listed_pending(make: Make, fake: KubeFake) -> None:
    backend = await make()
    job_id = await backend.launch(wid(1))
    assert job_id == f"cl-worker-{wid(1)}"
    [pod] = fake.pods()
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "codalab-scaler"
    assert labels["codalab-scaler/pool"] == "default"
    assert labels["codalab-scaler/worker-id"] == wid(1)
    [job] = await backend.list_jobs()
    assert (job.job_id, job.state, job.worker_id) == (job_id, JobState.PENDING, wid(1))
    listing = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/pods")]
    assert listing[-1].query["labelSelector"] == (
        "app.kubernetes.io/managed-by=codalab-scaler,codalab-scaler/pool=default"
    )
    assert "fieldSelector" not in listing[-1].query


async def test_transitions_pending_running_succeeded_failed(make: Make, fake: KubeFake) -> None:
    backend = await make()
    a, b = await backend.launch(wid(1)), await backend.launch(wid(2))
    fake.set_phase(a, "Running")
    states = {j.job_id: j.state for j in await backend.list_jobs()}
    assert states == {a: JobState.ACTIVE, b: JobState.PENDING}
    recent = (NOW - timedelta(seconds=10)).isoformat()
    fake.terminated(a, "Succeeded", 0, recent)
    fake.terminated(b, "Failed", 3, recent)
    jobs = await backend.list_jobs()
    assert [(j.job_id, j.state, j.reason) for j in jobs] == [
        (b, JobState.FAILED, "Error (exit code 3)")
    ]
    assert await backend.list_jobs() == []  # reported once; both kept for the TTL
    assert len(fake.pods()) == 2


async def test_finished_pods_are_deleted_after_the_ttl(make: Make, fake: KubeFake) -> None:
    backend = await make(finished_pod_ttl_seconds=60)
    old, fresh, running = [await backend.launch(wid(n)) for n in (1, 2, 3)]
    fake.terminated(old, "Succeeded", 0, (NOW - timedelta(seconds=61)).isoformat())
    fake.terminated(fresh, "Failed", 1, (NOW - timedelta(seconds=59)).isoformat())
    fake.set_phase(running, "Running")
    with capture_logs() as logs:
        await backend.list_jobs()
    assert sorted(p["metadata"]["name"] for p in fake.pods()) == sorted([fresh, running])
    assert [e["pod"] for e in logs if e["event"] == "kubernetes.pod_deleted"] == [old]


@pytest.mark.parametrize(
    "reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"]
)
async def test_a_pod_that_cannot_start_is_a_failed_start_and_deleted(
    make: Make, fake: KubeFake, reason: str
) -> None:
    backend = await make()
    name = await backend.launch(wid(1))
    fake.waiting(name, reason, "image codalab/worker:nope not found")
    [job] = await backend.list_jobs()
    assert job.state is JobState.FAILED
    assert job.reason == f"{reason}: image codalab/worker:nope not found"
    assert fake.pods() == []


async def test_a_pod_merely_creating_its_container_is_pending(make: Make, fake: KubeFake) -> None:
    backend = await make()
    name = await backend.launch(wid(1))
    fake.waiting(name, "ContainerCreating")
    [job] = await backend.list_jobs()
    assert job.state is JobState.PENDING


async def test_listing_follows_continue_across_pages(
    make: Make, fake: KubeFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(k8s_backend, "PAGE_SIZE", 2)
    backend = await make()
    other = await make(pool="other")
    names = {await backend.launch(wid(n)) for n in range(5)}
    await other.launch(wid(99))
    jobs = await backend.list_jobs()
    assert {j.job_id for j in jobs} == names
    pages = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/pods")]
    assert [r.query.get("continue") for r in pages] == [None, "2", "4"]
    assert all(r.query["limit"] == "2" for r in pages)


async def test_a_failed_list_raises_transient_and_honours_retry_after(
    make: Make, fake: KubeFake
) -> None:
    backend = await make()
    fake.fail("GET", "pods", 503, retry_after="2")
    with pytest.raises(TransientError) as caught:
        await backend.list_jobs()
    assert caught.value.retry_after == 2.0
    fake.fail("GET", "pods", 429, times=1, retry_after="0")
    assert await call_with_retry("jobs", backend.list_jobs, retry_policy()) == []


@pytest.mark.parametrize("status", [401, 403, 422])
async def test_refusals(make: Make, fake: KubeFake, status: int) -> None:
    backend = await make()
    fake.fail("POST", "pods", status)
    with pytest.raises(LaunchRefused, match=f"HTTP {status}"):
        await backend.launch(wid(1))
    fake.fail("GET", "pods", status)
    with pytest.raises(RefusedError):
        await backend.list_jobs()


async def test_a_missing_namespace_is_refused(make: Make) -> None:
    backend = await make(namespace="nowhere")
    with pytest.raises(LaunchRefused, match="not found"):
        await backend.launch(wid(1))


async def test_a_wrong_token_is_refused(fake: KubeFake, tmp_path: Path) -> None:
    settings = KubernetesBackendSettings(
        cluster_host=fake.url,
        auth_token="wrong",
    )
    backend = KubernetesBackend("default", worker_options(), settings, CREDS)
    try:
        with pytest.raises(RefusedError, match="HTTP 401"):
            await backend.list_jobs()
    finally:
        await backend.aclose()


async def test_original_flags_reach_the_cluster(fake: KubeFake) -> None:
    settings = KubernetesBackendSettings(
        cluster_host=fake.url,
        auth_token="fake-cluster-token",
    )
    backend = KubernetesBackend("default", worker_options(), settings, CREDS)
    try:
        assert await backend.list_jobs() == []
    finally:
        await backend.aclose()


async def test_a_conflict_on_create_is_the_same_worker(make: Make, fake: KubeFake) -> None:
    backend = await make()
    first = await backend.launch(wid(1))
    assert await backend.launch(wid(1)) == first
    assert len(fake.pods()) == 1


async def test_a_timeout_is_transient(make: Make, fake: KubeFake) -> None:
    backend = await make(api_timeout_seconds=0.2)
    await fake.stop()
    with pytest.raises(TransientError):
        await backend.list_jobs()


async def test_password_only_in_the_scalers_secret(make: Make, fake: KubeFake) -> None:
    backend = await make()
    await backend.launch(wid(1))
    await backend.launch(wid(2))
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    [secret] = fake.list("secrets", "default")
    assert secret["metadata"]["name"] == "codalab-scaler-default-password"
    assert secret["data"] == {"password": encoded}
    for pod in fake.pods():
        text = json.dumps(pod)
        assert PASSWORD not in text
        assert encoded not in text
        [env] = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "CODALAB_PASSWORD"]
        assert env == {
            "name": "CODALAB_PASSWORD",
            "valueFrom": {
                "secretKeyRef": {"name": "codalab-scaler-default-password", "key": "password"}
            },
        }
    everything = fake.dump().replace(json.dumps(secret), "")
    assert PASSWORD not in everything
    assert encoded not in everything
    assert "fake-cluster-token" not in everything
    secret_writes = [r for r in fake.requests if r.path.endswith("/secrets")]
    assert len(secret_writes) == 1  # once per process


async def test_a_changed_password_replaces_the_secret(
    make: Make, fake: KubeFake, tmp_path: Path
) -> None:
    await (await make()).launch(wid(1))
    [before] = fake.list("secrets", "default")
    other = KubernetesBackend(
        "default",
        worker_options(),
        KubernetesBackendSettings(kubeconfig=fake.write_kubeconfig(tmp_path / "kc")),
        WorkerCredentials("codalab", "new-password"),
    )
    try:
        await other.launch(wid(2))
    finally:
        await other.aclose()
    [after] = fake.list("secrets", "default")
    assert after["data"]["password"] == base64.b64encode(b"new-password").decode()
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]


async def test_an_operator_secret_is_referenced_never_written(make: Make, fake: KubeFake) -> None:
    backend = await make(password_secret="codalab-pw", password_secret_key="pw")
    await backend.launch(wid(1))
    assert fake.list("secrets", "default") == []
    env = fake.pods()[0]["spec"]["containers"][0]["env"]
    assert env[1]["valueFrom"]["secretKeyRef"] == {"name": "codalab-pw", "key": "pw"}


async def test_cancel_deletes_the_pod_and_a_gone_pod_is_no_error(
    make: Make, fake: KubeFake
) -> None:
    backend = await make()
    name = await backend.launch(wid(1))
    await backend.cancel(name)
    assert fake.pods() == []
    await backend.cancel(name)


async def test_dry_run_plan_has_no_password(make: Make, fake: KubeFake) -> None:
    backend = await make()
    plan = await backend.describe_launch(wid(1))
    assert PASSWORD not in json.dumps(plan)
    assert plan["secret"]["data"] == {"password": "<redacted>"}
    assert fake.objects == {}


async def test_a_bad_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    settings = KubernetesBackendSettings(kubeconfig=tmp_path / "missing")
    backend = KubernetesBackend("default", worker_options(), settings, CREDS)
    with pytest.raises(ConfigError, match=r"pools\.default\.backend\.kubeconfig"):
        await backend.open()
    await backend.aclose()


def test_a_pool_name_that_is_no_label_value_is_a_config_error(tmp_path: Path) -> None:
    settings = KubernetesBackendSettings(kubeconfig=tmp_path / "k")
    with pytest.raises(ConfigError, match=r"pools\.gpu_"):
        KubernetesBackend("gpu_", worker_options(), settings, CREDS)
