"""azure-batch settings (flags, environment, key file) and its requests as plain data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials_async import AsyncTokenCredential
from pydantic import ValidationError

from codalab_scaler.config.loader import load_settings
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.entry.cli import main
from codalab_scaler.sources.backends.azure_batch import spec
from codalab_scaler.sources.backends.azure_batch.backend import AzureBatchBackend
from codalab_scaler.sources.backends.azure_batch.client import (
    entra_id_credential,
    read_account_key,
)
from codalab_scaler.sources.backends.azure_batch.settings import AzureBatchBackendSettings
from codalab_scaler.sources.backends.base import WorkerCredentials
from tests.defaults import worker_options

KEY = "a2V5LWJ5dGVz"  # base64 of "key-bytes"
ENV = {"CODALAB_USERNAME": "alice", "CODALAB_PASSWORD": "pw-123"}
BACKEND: dict[str, Any] = {
    "kind": "azure-batch",
    "account_name": "acct",
    "service_url": "https://acct.westeurope.batch.azure.com",
    "log_container_url": "https://acct.blob.core.windows.net/logs",
    "job_id": "workers",
    "worker_password_file": "/mnt/codalab/pw",
}


def backend_of(environ: dict[str, str], **backend: Any) -> AzureBatchBackendSettings:
    toml = {"pools": {"default": {"backend": {**BACKEND, **backend}}}}
    settings = load_settings({}, {**ENV, **environ}, toml).pools["default"].backend
    assert isinstance(settings, AzureBatchBackendSettings)
    return settings


def test_the_key_account_and_endpoint_come_from_the_azure_cli_variables() -> None:
    env = {
        "AZURE_BATCH_ACCESS_KEY": KEY,
        "AZURE_BATCH_ACCOUNT": "fromenv",
        "AZURE_BATCH_ENDPOINT": "https://fromenv.batch.azure.com",
        "CODALAB_VERSION": "1.7",
    }
    given = {k: v for k, v in BACKEND.items() if k not in ("account_name", "service_url")}
    toml = {"pools": {"default": {"backend": given}}}
    settings = load_settings({}, {**ENV, **env}, toml).pools["default"].backend
    assert isinstance(settings, AzureBatchBackendSettings)
    assert settings.account_key is not None
    assert settings.account_key.get_secret_value() == KEY
    assert (settings.account_name, settings.service_url) == (
        "fromenv",
        "https://fromenv.batch.azure.com",
    )
    assert settings.image == "codalab/worker:1.7"
    assert KEY not in repr(settings)


def test_a_flag_or_file_wins_over_the_environment(tmp_path: Path) -> None:
    assert backend_of({"AZURE_BATCH_ACCOUNT": "env"}, account_key=KEY).account_name == "acct"
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY + "\n")
    keyfile.chmod(0o600)
    settings = backend_of({}, account_key_file=str(keyfile))
    assert settings.account_key is None
    assert read_account_key(keyfile) == KEY


@pytest.mark.parametrize(
    ("backend", "field"),
    [
        ({}, "account_key"),  # neither key nor file
        ({"account_key": "not base64!"}, "account_key"),
        ({"account_key": KEY, "worker_password_file": None}, "worker_password_file"),
        ({"account_key": KEY, "worker_password_file": "relative/pw"}, "worker_password_file"),
        ({"account_key": KEY, "service_url": "acct.batch.azure.com"}, "service_url"),
        ({"account_key": KEY, "job_id": "bad job"}, "job_id"),
        ({"account_key": KEY, "task_id_prefix": "x" * 21}, "task_id_prefix"),
        ({"account_key": KEY, "auth": "entra-id"}, "account_key"),
        ({"auth": "entra-id", "service_url": "http://127.0.0.1:1"}, "service_url"),
    ],
)
def test_config_errors_name_the_field(backend: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        backend_of({}, **backend)
    text = "\n".join(caught.value.lines)
    assert field in text
    assert "not base64!" not in text


def test_a_missing_setting_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["azure-batch", "--account-name", "a", "--account-key", KEY], environ=ENV)
    assert code == 2
    err = capsys.readouterr().err
    assert "service_url" in err
    assert "job_id" in err
    assert KEY not in err


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY)
    keyfile.chmod(0o644)
    with pytest.raises(ConfigError, match=r"account_key_file: .* mode 0644"):
        read_account_key(keyfile)
    keyfile.chmod(0o600)
    keyfile.write_text("not a key")
    with pytest.raises(ConfigError, match=r"account_key_file: .*base64"):
        read_account_key(keyfile)


def test_a_task_id_that_would_pass_64_characters_is_a_config_error() -> None:
    settings = AzureBatchBackendSettings.model_validate(
        {**BACKEND, "account_key": KEY, "task_id_prefix": "p" * 20}
    )
    with pytest.raises(ConfigError, match="task_id_prefix"):
        AzureBatchBackend("x" * 20, worker_options(), settings, WorkerCredentials("u", "pw"))


def test_the_settings_reject_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        AzureBatchBackendSettings.model_validate({**BACKEND, "account_key": KEY, "queue": "q"})


# -- spec: pure requests -----------------------------------------------------------------

IDS = spec.TaskIds("codalab-scaler", "gpu")
INPUTS = spec.TaskInputs(
    image="codalab/worker:1.7", cpus=4, gpus=2, memory_mb=8192, user="root",
    log_container_url="https://acct.blob.core.windows.net/logs?sv=1&sig=SAS",
    log_container_identity=None, worker_password_file="/mnt/codalab/pw",
)  # fmt: skip


def test_task_ids_belong_to_one_pool_only() -> None:
    assert IDS.task_id("abc") == "codalab-scaler-gpu-abc"
    assert IDS.worker_id("codalab-scaler-gpu-abc") == "abc"
    assert spec.TaskIds("codalab-scaler", "gpu-big").task_id("abc").startswith(IDS.stem)
    assert IDS.worker_id("codalab-scaler-gpu-big-abc") is None  # pool gpu-big, not gpu
    assert IDS.worker_id("other-gpu-abc") is None


def test_the_create_request_is_the_originals_task_with_the_password_as_a_file() -> None:
    request = spec.create_task_request(
        IDS, worker_options(), INPUTS, "w1", username="alice", plaintext_password=None
    )
    assert request["containerSettings"] == {
        "imageName": "codalab/worker:1.7",
        "containerRunOptions": "--cpus 4 --memory 8192M "
        "--volume /var/run/docker.sock:/var/run/docker.sock "
        "--volume /tmp/cl_worker_w1_work_dir:/tmp/cl_worker_w1_work_dir --user root "
        "--gpus 2 --volume /mnt/codalab/pw:/mnt/codalab/pw:ro",
    }
    assert request["commandLine"].endswith(" --password-file /mnt/codalab/pw'")
    assert "environmentSettings" not in request
    assert request["constraints"] == {"maxTaskRetryCount": 0}


def test_a_managed_identity_uploads_the_logs() -> None:
    inputs = replace(
        INPUTS,
        log_container_url="https://acct.blob.core.windows.net/logs",
        log_container_identity="/subscriptions/s/id",
    )
    request = spec.create_task_request(
        IDS, worker_options(), inputs, "w1", username="alice", plaintext_password=None
    )
    (output,) = request["outputFiles"]
    assert output["destination"]["container"]["identityReference"] == {
        "resourceId": "/subscriptions/s/id"
    }


def test_a_plan_shows_neither_password_nor_sas() -> None:
    request = spec.create_task_request(
        IDS, worker_options(), INPUTS, "w1", username="alice", plaintext_password="pw-SECRET"
    )
    assert {"name": "CODALAB_PASSWORD", "value": "pw-SECRET"} in request["environmentSettings"]
    shown = json.dumps(spec.redacted(request))
    assert "pw-SECRET" not in shown
    assert "SAS" not in shown
    assert "logs?[redacted]" in shown


@pytest.mark.parametrize(
    ("execution_info", "reason"),
    [
        ({"exitCode": 0, "result": "success"}, None),
        ({"exitCode": 2, "result": "failure"}, "exit code 2"),
        (
            {"failureInfo": {"category": "usererror", "code": "ContainerPullError"}},
            "ContainerPullError",
        ),
        (
            {"exitCode": 137, "failureInfo": {"category": "servererror", "message": "oom"}},
            "servererror: oom (exit code 137)",
        ),
        ({}, None),
    ],
)
def test_why_a_completed_task_failed(execution_info: dict[str, Any], reason: str | None) -> None:
    assert spec.failure_reason({"executionInfo": execution_info}) == reason


async def test_entra_id_takes_azure_identitys_default_chain() -> None:
    settings = backend_of({}, auth="entra-id")
    assert settings.account_key is None
    credential = entra_id_credential()
    assert isinstance(credential, AsyncTokenCredential)
    await credential.close()
