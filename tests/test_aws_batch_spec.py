"""The aws-batch requests as values: names, the container command run by a real bash, settings."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from pathlib import Path

import pytest

from codalab_scaler.core.errors import ConfigError
from codalab_scaler.entry.cli import build_parser, settings_from_args, split_search
from codalab_scaler.sources.backends.aws_batch import spec
from codalab_scaler.sources.backends.aws_batch.settings import AwsBatchBackendSettings
from tests.defaults import worker_options

INPUTS = spec.DefinitionInputs(
    name="codalab-worker", image="codalab/worker:1", cpus=2, gpus=0, memory_mb=4096,
    user="root", username="codalab", work_dir_prefix="/scratch",
    password_secret_arn="arn:aws:ssm:us-east-1:1:parameter/pw", execution_role_arn=None,
)  # fmt: skip


@pytest.mark.parametrize(
    ("job_name", "worker_id"),
    [
        ("codalab-scaler-gpu-abc123", "abc123"),
        ("codalab-scaler-gpu-a_b", "a_b"),
        ("codalab-scaler-gpu-x-abc123", None),  # pool gpu-x
        ("codalab-scaler-gpu-", None),
        ("codalab-scaler-gp-abc", None),
        ("codalab-worker", None),
        ("other-codalab-scaler-gpu-abc", None),
    ],
)
def test_a_job_name_belongs_to_one_pool_only(job_name: str, worker_id: str | None) -> None:
    assert spec.JobNames("codalab-scaler", "gpu").worker_id(job_name) == worker_id


def test_the_container_command_runs_the_seed_command_with_the_host_name(tmp_path: Path) -> None:
    printer = tmp_path / "cl worker's"  # a space and a quote: quoting must hold
    printer.write_text('#!/bin/sh\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n')
    printer.chmod(0o755)
    options = worker_options(
        server="https://cl.example", executable=str(printer), tag="it's $(tag)",
        work_dir_prefix="/scratch/",
    )  # fmt: skip
    command = spec.container_command(options, "w1")
    assert command[:2] == ["/bin/bash", "-c"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=10).stdout
    args = out.splitlines()
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout
    assert args[args.index("--id") + 1] == f"{host.strip() or socket.gethostname()}-w1"
    assert args[args.index("--work-dir") + 1] == "/scratch/cl_worker_w1_work_dir"
    assert args[args.index("--tag") + 1] == "it's $(tag)"
    assert args[:2] == ["--server", "https://cl.example"]


def test_the_definition_mounts_the_work_dir_prefix_and_never_holds_a_password() -> None:
    request = spec.definition_request(INPUTS)
    container = request["containerProperties"]
    mounts = {m["sourceVolume"]: m["containerPath"] for m in container["mountPoints"]}
    volumes = {v["name"]: v["host"]["sourcePath"] for v in container["volumes"]}
    assert (
        mounts
        == volumes
        == {"docker_socket": "/var/run/docker.sock", "work_dir_prefix": "/scratch"}
    )
    assert container["secrets"] == [
        {"name": "CODALAB_PASSWORD", "valueFrom": INPUTS.password_secret_arn}
    ]
    assert container["environment"] == [{"name": "CODALAB_USERNAME", "value": "codalab"}]
    assert "GPU" not in str(container["resourceRequirements"])
    assert request["retryStrategy"] == {"attempts": 1}


def test_the_fingerprint_follows_the_properties() -> None:
    base = spec.definition_request(INPUTS)
    same = spec.definition_request(INPUTS)
    other = spec.definition_request(dataclasses.replace(INPUTS, gpus=1))
    assert base["tags"] == same["tags"] != other["tags"]
    assert {"type": "GPU", "value": "1"} in other["containerProperties"]["resourceRequirements"]


def test_the_newest_active_matching_revision_is_reused() -> None:
    wanted = spec.definition_request(INPUTS)
    described = {**wanted, "containerProperties": {**wanted["containerProperties"], "ulimits": []}}

    def revision(n: int, status: str = "ACTIVE", **changes: object) -> dict[str, object]:
        return {
            **described,
            "revision": n,
            "status": status,
            "jobDefinitionArn": f"arn:{n}",
            **changes,
        }

    changed = {**described["containerProperties"], "image": "other"}
    revisions = [
        revision(1),
        revision(2),
        revision(3, status="INACTIVE"),
        revision(4, tags={spec.SPEC_TAG: "0000"}),
        revision(5, containerProperties=changed),  # the tag copied onto other properties
    ]
    assert spec.matching_revision(revisions, wanted) == "arn:2"
    assert spec.matching_revision(revisions[2:], wanted) is None


def load(argv: list[str]) -> AwsBatchBackendSettings:
    args = build_parser().parse_args(split_search(argv))
    settings = settings_from_args(args, {"CODALAB_USERNAME": "u", "CODALAB_PASSWORD": "p"})
    backend = settings.pools["default"].backend
    assert isinstance(backend, AwsBatchBackendSettings)
    return backend


def test_every_flag_of_the_original_and_the_new_ones() -> None:
    backend = load(
        [
            "aws-batch", "--region", "eu-west-1", "--job-definition-name", "cl-def",
            "--cpus", "4", "--gpus", "1", "--memory-mb", "8192", "--user", "codalab",
            "--job-queue", "gpu-queue", "--job-filter", "codalab-.*",
            "--endpoint-url", "http://127.0.0.1:5000", "--image", "codalab/worker:2",
            "--password-secret-arn", "arn:x", "--job-name-prefix", "cls",
            "--execution-role-arn", "arn:role", "--connect-timeout-seconds", "3",
            "--read-timeout-seconds", "7",
        ]
    )  # fmt: skip
    assert backend.model_dump() == {
        "kind": "aws-batch", "region": "eu-west-1", "job_definition_name": "cl-def", "cpus": 4,
        "gpus": 1, "memory_mb": 8192, "user": "codalab", "job_queue": "gpu-queue",
        "job_filter": "codalab-.*", "job_name_prefix": "cls",
        "endpoint_url": "http://127.0.0.1:5000", "image": "codalab/worker:2",
        "password_secret_arn": "arn:x", "allow_plaintext_password": False,
        "execution_role_arn": "arn:role", "connect_timeout_seconds": 3,
        "read_timeout_seconds": 7,
    }  # fmt: skip


def test_the_defaults_are_the_originals() -> None:
    backend = load(["aws-batch", "--allow-plaintext-password"])
    assert (backend.region, backend.job_definition_name, backend.job_queue) == (
        "us-east-1", "codalab-worker", "codalab-batch-cpu",
    )  # fmt: skip
    assert (backend.cpus, backend.gpus, backend.memory_mb, backend.user) == (1, 0, 2048, "root")
    assert backend.job_filter is None


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["aws-batch"], "password_secret_arn"),
        (
            ["aws-batch", "--password-secret-arn", "a", "--job-name-prefix", "x" * 31],
            "job_name_prefix",
        ),
        (["aws-batch", "--password-secret-arn", "a", "--job-name-prefix=_x"], "job_name_prefix"),
        (["aws-batch", "--password-secret-arn", "a", "--job-filter", "("], "job_filter"),
        (
            ["aws-batch", "--password-secret-arn", "a", "--job-definition-name", "a b"],
            "job_definition_name",
        ),
    ],
)
def test_bad_settings_are_config_errors(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(argv)
    assert any(field in line for line in raised.value.lines)
