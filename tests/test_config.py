"""Command line, TOML and environment: the original's flags, clear one-line errors, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from codalab_scaler.config.loader import load_settings, read_config_file
from codalab_scaler.config.settings import Settings
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.entry.cli import build_parser, main, settings_from_args, split_search
from codalab_scaler.entry.flags import settings_values
from codalab_scaler.sources.backends.aws_batch.settings import AwsBatchBackendSettings
from codalab_scaler.sources.backends.local.settings import LocalBackendSettings
from codalab_scaler.sources.backends.slurm.settings import SlurmBatchBackendSettings

ENV = {"CODALAB_USERNAME": "alice", "CODALAB_PASSWORD": "pw-123"}


def load(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    args = build_parser().parse_args(split_search(argv))
    return settings_from_args(args, ENV if environ is None else environ)


def test_defaults_are_the_originals() -> None:
    s = load(["local"])
    pool = s.pools["default"]
    assert s.server == "https://worksheets.codalab.org"
    assert s.sleep_time == 5
    assert (pool.min_workers, pool.max_workers) == (1, 10)
    assert pool.min_seconds_between_workers == 60
    assert pool.worker_idle_seconds == 600
    assert pool.worker_executable == "cl-worker"
    assert pool.search == []
    assert pool.worker_download_dependencies_max_retries == 3
    assert pool.worker_shared_memory_size_gb == 1
    assert (pool.backend.cpus, pool.backend.gpus, pool.backend.memory_mb) == (1, 0, 2048)
    assert not s.once
    assert not s.dry_run
    assert not pool.no_prefilter
    assert not pool.worker_tag_exclusive


def test_every_original_flag_is_accepted() -> None:
    s = load(
        [
            "--server", "https://cl.example.org/", "--min-workers", "0", "--max-workers", "3",
            "--search", "request_gpus=0", ".shared", "--verbose", "--sleep-time", "7",
            "--once", "--min-seconds-between-workers", "30", "--no-prefilter",
            "--worker-tag", "cpuq", "--worker-tag-exclusive", "--worker-group", "nlp",
            "--worker-executable", "/opt/cl-worker", "--worker-idle-seconds", "60",
            "--worker-work-dir-prefix", "/scratch", "--worker-max-work-dir-size", "10g",
            "--worker-delete-work-dir-on-exit", "--worker-exit-after-num-runs", "1",
            "--worker-exit-on-exception", "--worker-pass-down-termination",
            "--worker-checkin-frequency-seconds", "15",
            "--worker-download-dependencies-max-retries", "5",
            "--worker-shared-memory-size-gb", "4", "--worker-preemptible",
            "--temp-session", "--restart-after-seconds", "3600",
            "local", "--cpus", "4", "--gpus", "1", "--memory-mb", "8192",
        ]
    )  # fmt: skip
    pool = s.pools["default"]
    assert s.server == "https://cl.example.org"
    assert (s.verbose, s.once, s.sleep_time) == (True, True, 7)
    assert pool.search == ["request_gpus=0", ".shared"]
    assert pool.worker_options(s.server).tag == "cpuq"
    assert pool.worker_work_dir_prefix == "/scratch"
    assert (pool.backend.cpus, pool.backend.gpus, pool.backend.memory_mb) == (4, 1, 8192)
    assert pool.worker_preemptible
    assert pool.worker_tag_exclusive
    assert pool.no_prefilter


def test_toml_declares_several_pools_and_flags_override(tmp_path: Path) -> None:
    config = tmp_path / "scaler.toml"
    config.write_text(
        'sleep_time = 10\nserver = "https://toml.example"\n'
        "[pools.cpu]\nmax_workers = 4\n[pools.cpu.backend]\nkind = 'local'\ncpus = 2\n"
        "[pools.gpu]\nworker_tag = 'gpu'\nworker_tag_exclusive = true\n"
        "[pools.gpu.backend]\ngpus = 1\n"
    )
    s = load(["--config", str(config), "--sleep-time", "3"])
    assert s.sleep_time == 3
    assert s.server == "https://toml.example"
    assert sorted(s.pools) == ["cpu", "gpu"]
    assert s.pools["cpu"].backend.cpus == 2
    assert s.pools["gpu"].worker_tag == "gpu"


def test_environment_sets_any_setting_between_toml_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "scaler.toml"
    config.write_text("sleep_time = 10\n[pools.cpu]\nmax_workers = 4\n")
    env = {
        **ENV,
        "CODALAB_SCALER_SLEEP_TIME": "20",
        "CODALAB_SCALER_POOLS__CPU__MAX_WORKERS": "6",
    }
    s = load(["--config", str(config)], env)
    assert (s.sleep_time, s.pools["cpu"].max_workers) == (20, 6)
    s = load(["--config", str(config), "--sleep-time", "1"], env)
    assert s.sleep_time == 1


def test_password_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("bob\nhunter2\n")
    s = load(["--password-file", str(pw), "local"], environ={})
    assert s.username == "bob"
    assert s.password is not None
    assert s.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s)


def errors(argv: list[str], capsys: pytest.CaptureFixture[str], env: bool = True) -> list[str]:
    code = main(argv, environ=ENV if env else {})
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "Traceback" not in captured.err
    return captured.err.strip().splitlines()


def test_min_above_max_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert errors(["--min-workers", "5", "--max-workers", "2", "local"], capsys) == [
        "codalab-scaler: config error: pools.default.max_workers: must be >= min_workers (2 < 5)"
    ]


def test_unknown_and_mistyped_keys_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        "sleep_tme = 3\n[pools.a]\nmax_workers = 'many'\n[pools.a.backend]\nkind = 'local'\n"
    )
    lines = errors(["--config", str(config)], capsys)
    assert sorted(lines) == [
        (
            "codalab-scaler: config error: pools.a.max_workers: "
            "Input should be a valid integer, unable to parse string as an integer"
        ),
        "codalab-scaler: config error: sleep_tme: unknown setting",
    ]


def test_bad_toml_syntax(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[pools\n")
    (line,) = errors(["--config", str(config)], capsys)
    assert line.startswith("codalab-scaler: config error: config: ")
    assert "is not valid TOML" in line


def test_missing_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    assert errors(["local"], capsys, env=False) == [
        (
            "codalab-scaler: config error: credentials: "
            "set CODALAB_USERNAME and CODALAB_PASSWORD, or --password-file"
        )
    ]


def test_unreadable_password_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (line,) = errors(["--password-file", str(tmp_path / "nope"), "local"], capsys, env=False)
    assert line.startswith("codalab-scaler: config error: password_file: cannot read")


def test_bad_flag_value_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--min-workers", "many", "local"], environ={})
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["codalab-scaler: error: argument --min-workers: invalid int value: 'many'"]


def test_no_pool_at_all(capsys: pytest.CaptureFixture[str]) -> None:
    (line,) = errors([], capsys)
    assert "pools: no pool configured" in line


def test_pool_flags_without_backend_are_refused() -> None:
    args = build_parser().parse_args(["--max-workers", "3"])
    with pytest.raises(ConfigError, match="--max-workers: pool flags need a backend"):
        settings_values(args)


def test_invalid_pool_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[pools.'GPU Pool']\n")
    (line,) = errors(["--config", str(config)], capsys)
    assert "pools: pool name 'GPU Pool' must match" in line


def test_errors_never_echo_a_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('username = "bob"\npassword = 12345678\n[pools.a]\n')
    lines = errors(["--config", str(config)], capsys, env=False)
    assert lines == ["codalab-scaler: config error: password: Input should be a valid string"]
    assert "12345678" not in "".join(lines)


@pytest.mark.parametrize(
    ("argv", "search"),
    [
        (["--search", "a=1", "b", "local"], ["a=1", "b"]),
        (["--search", "a=1", "--max-workers", "2", "local"], ["a=1"]),
        (["--search", "local"], []),
        (["--search", "x", "--search", "y", "local"], ["x", "y"]),
        (["--search=local", "local"], ["local"]),
    ],
)
def test_search_words_stop_at_the_backend_subcommand(argv: list[str], search: list[str]) -> None:
    assert load(argv).pools["default"].search == search


def test_a_backend_error_names_the_field_as_the_operator_wrote_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(
            ["slurm-batch", "--cpus", "0"],
            environ={"CODALAB_USERNAME": "u", "CODALAB_PASSWORD": "p"},
        )
        == 2
    )
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "codalab-scaler: config error: pools.default.backend.partition: Field required",
        "codalab-scaler: config error: pools.default.backend.cpus: Input should be greater than 0",
    ]


def test_a_backend_table_without_kind_is_local(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[pools.a.backend]\ncpus = 2\n[pools.b.backend]\nkind = "local"\n')
    s = load_settings({"username": "u", "password": "p"}, {}, read_config_file(config))
    assert {name: pool.backend.kind for name, pool in s.pools.items()} == {
        "a": "local",
        "b": "local",
    }
    assert s.pools["a"].backend.cpus == 2


# The original cl-worker-manager's global flags, and what each sets.
ORIGINAL_GLOBAL_FLAGS = [
    "--server", "https://cl.example.org/", "--min-workers", "0", "--max-workers", "3",
    "--search", "request_gpus=0", ".shared", "--verbose", "--sleep-time", "7",
    "--once", "--min-seconds-between-workers", "30", "--no-prefilter",
    "--worker-tag", "cpuq", "--worker-tag-exclusive", "--worker-group", "nlp",
    "--worker-executable", "/opt/cl-worker", "--worker-idle-seconds", "60",
    "--worker-work-dir-prefix", "/scratch", "--worker-max-work-dir-size", "10g",
    "--worker-delete-work-dir-on-exit", "--worker-exit-after-num-runs", "1",
    "--worker-exit-on-exception", "--worker-pass-down-termination",
    "--worker-checkin-frequency-seconds", "15",
    "--worker-download-dependencies-max-retries", "5",
    "--worker-shared-memory-size-gb", "4", "--worker-preemptible",
    "--temp-session", "--restart-after-seconds", "3600",
]  # fmt: skip
ORIGINAL_GLOBAL_SETTINGS = {
    "server": "https://cl.example.org", "verbose": True, "sleep_time": 7, "once": True,
    "temp_session": True, "restart_after_seconds": 3600,
}  # fmt: skip
ORIGINAL_POOL_SETTINGS = {
    "min_workers": 0, "max_workers": 3, "search": ["request_gpus=0", ".shared"],
    "min_seconds_between_workers": 30, "no_prefilter": True, "worker_tag": "cpuq",
    "worker_tag_exclusive": True, "worker_group": "nlp", "worker_executable": "/opt/cl-worker",
    "worker_idle_seconds": 60, "worker_work_dir_prefix": "/scratch",
    "worker_max_work_dir_size": "10g", "worker_delete_work_dir_on_exit": True,
    "worker_exit_after_num_runs": 1, "worker_exit_on_exception": True,
    "worker_pass_down_termination": True, "worker_checkin_frequency_seconds": 15,
    "worker_download_dependencies_max_retries": 5, "worker_shared_memory_size_gb": 4,
    "worker_preemptible": True, "exit_after_num_failed": 2,
}  # fmt: skip
# Each backend subcommand with the original's flags for it (and --exit-after-num-failed,
# which the original had after slurm-batch only), and the backend settings they give.
ORIGINAL_BACKEND_FLAGS: dict[str, tuple[list[str], dict[str, Any], dict[str, Any]]] = {
    "local": (
        ["--cpus", "4", "--gpus", "1", "--memory-mb", "8192", "--exit-after-num-failed", "2"],
        {"cpus": 4, "gpus": 1, "memory_mb": 8192},
        {},
    ),
    "aws-batch": (
        [
            "--region", "eu-west-1", "--job-definition-name", "cw-def", "--cpus", "4",
            "--gpus", "1", "--memory-mb", "8192", "--user", "worker", "--job-queue", "q1",
            "--job-filter", "cw-.*", "--allow-plaintext-password",
            "--exit-after-num-failed", "2",
        ],
        {
            "region": "eu-west-1", "job_definition_name": "cw-def", "cpus": 4, "gpus": 1,
            "memory_mb": 8192, "user": "worker", "job_queue": "q1", "job_filter": "cw-.*",
        },
        {},
    ),
    "azure-batch": (
        [
            "--account-name", "acct", "--account-key", "a2V5", "--service-url",
            "https://acct.westeurope.batch.azure.com", "--log-container-url",
            "https://acct.blob.core.windows.net/logs", "--job-id", "cw-job", "--cpus", "4",
            "--gpus", "1", "--memory-mb", "8192", "--user", "worker",
            "--allow-plaintext-password", "--exit-after-num-failed", "2",
        ],
        {
            "account_name": "acct", "service_url": "https://acct.westeurope.batch.azure.com",
            "log_container_url": "https://acct.blob.core.windows.net/logs", "job_id": "cw-job",
            "cpus": 4, "gpus": 1, "memory_mb": 8192, "user": "worker",
        },
        {},
    ),
    "kubernetes": (
        [
            "--cluster-host", "https://k8s.example.org:6443", "--auth-token", "tok",
            "--cert-path", "/etc/ca.crt", "--nfs-volume-name", "nfs", "--bundle-runtime",
            "kubernetes", "--cpus", "4", "--gpus", "1", "--memory-mb", "8192",
            "--exit-after-num-failed", "2",
        ],
        {
            "cluster_host": "https://k8s.example.org:6443", "cert_path": Path("/etc/ca.crt"),
            "nfs_volume_name": "nfs", "bundle_runtime": "kubernetes", "cpus": 4, "gpus": 1,
            "memory_mb": 8192,
        },
        {},
    ),
    "slurm-batch": (
        [
            "--job-name", "cw", "--nodelist", "n1", "--exclude", "n2", "--partition", "gpu",
            "--cpus", "4", "--gpus", "0", "--gpu-type", "a100", "--constraint", "ib",
            "--memory-mb", "8192", "--time", "1-0", "--dry-run", "--user", "bob",
            "--password-file", "PASSWORD_FILE", "--slurm-work-dir", "/scratch/slurm",
            "--exit-after-num-failed", "2",
        ],
        {
            "job_name": "cw", "nodelist": "n1", "exclude": "n2", "partition": "gpu", "cpus": 4,
            "gpus": 0, "gpu_type": "a100", "constraint": "ib", "memory_mb": 8192,
            "time": "1-0", "user": "bob", "slurm_work_dir": Path("/scratch/slurm"),
        },
        {"dry_run": True, "username": "bob"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(ORIGINAL_BACKEND_FLAGS))
def test_every_original_flag_works_with_each_backend(kind: str, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("bob\nsecret\n")
    flags, backend, service = ORIGINAL_BACKEND_FLAGS[kind]
    flags = [str(pw) if flag == "PASSWORD_FILE" else flag for flag in flags]
    s = load([*ORIGINAL_GLOBAL_FLAGS, kind, *flags])
    for name, value in {**ORIGINAL_GLOBAL_SETTINGS, **service}.items():
        assert getattr(s, name) == value, name
    pool = s.pools["default"]
    for name, value in ORIGINAL_POOL_SETTINGS.items():
        assert getattr(pool, name) == value, name
    assert pool.backend.kind == kind
    for name, value in backend.items():
        assert getattr(pool.backend, name) == value, name


AZURE_REQUIRED = [
    "--account-name", "a", "--account-key", "a2V5", "--service-url", "https://a.b.batch.azure.com",
    "--log-container-url", "https://a.blob.core.windows.net/l", "--job-id", "j",
    "--worker-password-file", "/mnt/pw",
]  # fmt: skip


@pytest.mark.parametrize("kind", sorted(ORIGINAL_BACKEND_FLAGS))
def test_exit_after_num_failed_after_any_backend(kind: str) -> None:
    extra = {
        "aws-batch": ["--allow-plaintext-password"],
        "azure-batch": AZURE_REQUIRED,
        "kubernetes": ["--in-cluster"],
        "slurm-batch": ["--partition", "p"],
    }
    s = load([kind, *extra.get(kind, []), "--exit-after-num-failed", "3"])
    assert s.pools["default"].exit_after_num_failed == 3


def test_environment_dependent_defaults_come_from_the_given_environment() -> None:
    env = {**ENV, "XDG_STATE_HOME": "/xdg", "CODALAB_VERSION": "1.2.3", "LOGNAME": "carol"}
    local = load(["local"], env).pools["default"].backend
    assert isinstance(local, LocalBackendSettings)
    assert local.state_dir == Path("/xdg/codalab-scaler")
    local = load(["local"], {**ENV, "HOME": "/home/d"}).pools["default"].backend
    assert isinstance(local, LocalBackendSettings)
    assert local.state_dir == Path("/home/d/.local/state/codalab-scaler")
    aws = load(["aws-batch", "--allow-plaintext-password"], env).pools["default"].backend
    assert isinstance(aws, AwsBatchBackendSettings)
    assert aws.image == "codalab/worker:1.2.3"
    slurm = load(["slurm-batch", "--partition", "p"], env).pools["default"].backend
    assert isinstance(slurm, SlurmBatchBackendSettings)
    assert slurm.user == "carol"


def test_a_toml_pool_gets_its_kinds_environment_defaults_and_env_tables_merge() -> None:
    env = {
        **ENV,
        "CODALAB_VERSION": "9",
        "CODALAB_SCALER_POOLS__GPU__BACKEND__GPUS": "2",
        "CODALAB_SCALER_POOLS__GPU__SEARCH": '["request_gpus>0"]',
    }
    toml = {"pools": {"gpu": {"backend": {"kind": "aws-batch", "allow_plaintext_password": True}}}}
    s = load_settings({}, env, toml)
    backend = s.pools["gpu"].backend
    assert isinstance(backend, AwsBatchBackendSettings)
    assert (backend.gpus, backend.image) == (2, "codalab/worker:9")
    assert s.pools["gpu"].search == ["request_gpus>0"]


def test_help_and_validation_never_import_an_sdk() -> None:
    code = (
        "import sys\n"
        "from codalab_scaler.entry.cli import build_parser, settings_from_args, split_search\n"
        "build_parser().format_help()\n"
        "args = build_parser().parse_args(['aws-batch', '--allow-plaintext-password'])\n"
        "settings_from_args(args, {'CODALAB_USERNAME': 'u', 'CODALAB_PASSWORD': 'p'})\n"
        f"args = build_parser().parse_args(['azure-batch', *{AZURE_REQUIRED!r}])\n"
        "settings_from_args(args, {'CODALAB_USERNAME': 'u', 'CODALAB_PASSWORD': 'p'})\n"
        "print(sorted({'botocore', 'aiobotocore', 'azure'} & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_a_backend_subcommand_replaces_a_toml_pool_of_another_kind(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        "[pools.default]\nmax_workers = 4\n"
        '[pools.default.backend]\nkind = "aws-batch"\nregion = "eu-west-1"\n'
        "allow_plaintext_password = true\n"
    )
    s = load(["--config", str(config), "local", "--cpus", "2"])
    pool = s.pools["default"]
    assert (pool.backend.kind, pool.backend.cpus, pool.max_workers) == ("local", 2, 4)
    same_kind = load(["--config", str(config), "aws-batch", "--cpus", "2"]).pools["default"]
    assert isinstance(same_kind.backend, AwsBatchBackendSettings)
    assert same_kind.backend.region == "eu-west-1"  # same kind: merged


def test_planner_settings_from_flags_and_their_defaults() -> None:
    default = load(["local"]).pools["default"]
    assert (default.policy, default.priority, default.launch_rate_per_minute) == ("compat", 0, 60)
    assert (default.launch_burst, default.min_idle_workers) == (20, 0)
    assert (default.provision_timeout_seconds, default.cancel_stuck_workers) == (900, False)
    assert (default.backoff_initial_seconds, default.backoff_max_seconds) == (10, 300)
    s = load(
        ["--policy", "fast", "--priority", "2", "--launch-rate-per-minute", "30",
         "--launch-burst", "5", "--min-idle-workers", "1", "--provision-timeout-seconds", "60",
         "--cancel-stuck-workers", "--backoff-initial-seconds", "2",
         "--backoff-max-seconds", "20", "local"]
    )  # fmt: skip
    spec = s.pool_spec("default")
    assert (spec.kind.value, spec.route.priority, spec.launch_rate_per_minute) == ("fast", 2, 30)
    assert (spec.launch_burst, spec.min_idle_workers, spec.provision_timeout) == (5, 1, 60)
    assert (spec.backoff_initial, spec.backoff_max) == (2, 20)
    assert s.pools["default"].cancel_stuck_workers


def test_a_bad_planner_setting_in_toml_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        "[pools.a]\npolicy = 'turbo'\nlaunch_rate_per_minute = -1\nbackoff_initial_seconds = 30\n"
        "backoff_max_seconds = 20\n[pools.a.backend]\nkind = 'local'\n"
    )
    lines = errors(["--config", str(config)], capsys)
    assert sorted(lines) == [
        (
            "codalab-scaler: config error: pools.a.backoff_max_seconds: "
            "must be >= backoff_initial_seconds (20 < 30)"
        ),
        (
            "codalab-scaler: config error: pools.a.launch_rate_per_minute: "
            "Input should be greater than 0"
        ),
        "codalab-scaler: config error: pools.a.policy: Input should be 'compat' or 'fast'",
    ]
