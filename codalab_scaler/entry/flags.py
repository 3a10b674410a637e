"""The command line's surface: the original's global flags, one subcommand per backend, ``demo``.

Flag names and defaults are ``cl-worker-manager``'s; every flag defaults to
"not given" (``SUPPRESS``) so that the environment and the TOML file can
fill what the command line leaves out.  Where a backend subcommand repeats a
global flag of the original (``slurm-batch --dry-run``, ``--password-file``)
it sets the same global setting.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from pydantic import BaseModel

from codalab_scaler import __version__
from codalab_scaler.config.settings import (
    AwsBatchBackendSettings,
    LocalBackendSettings,
    PoolSettings,
    Settings,
    SlurmBatchBackendSettings,
)
from codalab_scaler.core.errors import EXIT_CONFIG

S = argparse.SUPPRESS

# A flag named after a service setting sets it; every other global flag belongs to the CLI's pool.
GLOBAL_KEYS = frozenset(Settings.model_fields)
# Backend subcommands and the settings model each one's flags fill.
BACKENDS: dict[str, type[BaseModel]] = {
    "local": LocalBackendSettings,
    "aws-batch": AwsBatchBackendSettings,
    "slurm-batch": SlurmBatchBackendSettings,
}
DEMO_ONLY = frozenset({"duration", "bundles", "bundles_per_minute", "max_run_seconds", "seed"})
CLI_POOL = "default"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def _default(model: type[BaseModel], field: str) -> str:
    info = model.model_fields[field]
    if info.default_factory is not None:
        return ""
    return f" (default: {info.default})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="codalab-scaler",
        description="Keeps a CodaLab Worksheets installation supplied with workers.",
    )
    add = parser.add_argument

    def g(field: str) -> str:
        return _default(Settings, field)

    def p(field: str) -> str:
        return _default(PoolSettings, field)

    add("--version", action="version", version=f"codalab-scaler {__version__}")
    add("--server", default=S, help="CodaLab instance to connect to" + g("server"))
    add("--min-workers", type=int, default=S, help="Minimum number of workers" + p("min_workers"))
    add("--max-workers", type=int, default=S, help="Maximum number of workers" + p("max_workers"))
    add(
        "--search",
        nargs="*",
        action="extend",
        default=S,
        help="Monitor only runs that satisfy these criteria",
    )
    add("--verbose", action="store_true", default=S, help="Log debug events too")
    add("--sleep-time", type=float, default=S, help="Seconds between polls" + g("sleep_time"))
    add(
        "--once",
        action="store_true",
        default=S,
        help="Run one poll-decide-launch cycle and exit (0 if it could observe and decide)",
    )
    add(
        "--min-seconds-between-workers",
        type=int,
        default=S,
        help="Minimum time to wait between launching workers" + p("min_seconds_between_workers"),
    )
    add(
        "--no-prefilter",
        action="store_true",
        default=S,
        help="Do not drop bundles that request more than the worker shape",
    )
    add("--worker-tag", default=S, help="Tag to look for in bundles and put on workers")
    add(
        "--worker-tag-exclusive",
        action="store_true",
        default=S,
        help="Workers only run bundles that match their tag",
    )
    add("--worker-group", default=S, help="Workers only run bundles for this group")
    add(
        "--worker-executable",
        default=S,
        help="The CodaLab worker executable" + p("worker_executable"),
    )
    add(
        "--worker-idle-seconds",
        type=int,
        default=S,
        help="Workers wait this long for runs before quitting" + p("worker_idle_seconds"),
    )
    add("--worker-work-dir-prefix", default=S, help="Prefix of each worker's work dir")
    add("--worker-max-work-dir-size", default=S, help="Maximum size of temporary bundle data")
    add(
        "--worker-delete-work-dir-on-exit",
        action="store_true",
        default=S,
        help="Delete a worker's work dir when it exits",
    )
    add(
        "--worker-exit-after-num-runs",
        type=int,
        default=S,
        help="Workers exit after this many runs",
    )
    add(
        "--worker-exit-on-exception",
        action="store_true",
        default=S,
        help="Workers exit on an exception instead of sleeping",
    )
    add(
        "--worker-pass-down-termination",
        action="store_true",
        default=S,
        help="Workers kill and restage their runs when terminated",
    )
    add(
        "--worker-checkin-frequency-seconds",
        type=int,
        default=S,
        help="Seconds between worker check-ins",
    )
    add(
        "--worker-download-dependencies-max-retries",
        type=int,
        default=S,
        help="Worker retries of dependency downloads"
        + p("worker_download_dependencies_max_retries"),
    )
    add(
        "--worker-shared-memory-size-gb",
        type=int,
        default=S,
        help="Shared memory of run containers, GB" + p("worker_shared_memory_size_gb"),
    )
    add("--worker-preemptible", action="store_true", default=S, help="Workers are preemptible")
    add(
        "--temp-session",
        action="store_true",
        default=S,
        help="Accepted for compatibility with cl-worker-manager; sessions are always in memory",
    )
    add(
        "--restart-after-seconds",
        type=int,
        default=S,
        help="Accepted for compatibility with cl-worker-manager; ignored (no periodic restart)",
    )
    # new in codalab-scaler
    add("--config", type=Path, default=None, help="TOML file declaring settings and pools")
    add("--dry-run", action="store_true", default=S, help="Decide and log, never launch")
    add(
        "--password-file",
        type=Path,
        default=S,
        help="File with the CodaLab username (line 1) and password (line 2)",
    )
    add(
        "--max-launches-per-pass",
        type=int,
        default=S,
        help="Launch up to this many workers per pass" + p("max_launches_per_pass"),
    )
    add(
        "--staleness-seconds",
        type=float,
        default=S,
        help="A view older than this launches nothing (default: 3 x --sleep-time)",
    )
    add(
        "--in-flight-timeout-seconds",
        type=float,
        default=S,
        help="Count an accepted launch as pending this long at most"
        + g("in_flight_timeout_seconds"),
    )
    add(
        "--request-timeout-seconds",
        type=float,
        default=S,
        help="Timeout of one HTTP request" + g("request_timeout_seconds"),
    )
    add("--http-host", default=S, help="Address for /metrics, /healthz, /status" + g("http_host"))
    add("--http-port", type=int, default=S, help="Port (0 picks a free one)" + g("http_port"))
    add(
        "--log-format",
        choices=["auto", "json", "console"],
        default=S,
        help="Log format (auto: console on a TTY, JSON lines otherwise)",
    )

    sub = parser.add_subparsers(title="backends", dest="backend", metavar="BACKEND")
    _local_flags(sub.add_parser("local", help="Run workers as local processes (embedded default)"))
    _aws_batch_flags(sub.add_parser("aws-batch", help="Run workers as AWS Batch jobs"))
    _slurm_batch_flags(sub.add_parser("slurm-batch", help="Run workers as Slurm batch jobs"))
    demo = sub.add_parser("demo", help="Run against an embedded CodaLab simulator")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="Stop after this many seconds (default: run until Ctrl-C)",
    )
    demo.add_argument("--bundles", type=int, default=40, help="Bundles to stage (default: 40)")
    demo.add_argument(
        "--bundles-per-minute",
        type=float,
        default=30.0,
        help="Rate of the synthetic stream (default: 30)",
    )
    demo.add_argument(
        "--max-run-seconds",
        type=float,
        default=10.0,
        help="Each bundle runs 1 s to this long (default: 10)",
    )
    demo.add_argument("--seed", type=int, default=1, help="Random seed of the stream")
    return parser  # fmt: skip


SUBCOMMANDS = frozenset({*BACKENDS, "demo"})


def _local_flags(p: argparse.ArgumentParser) -> None:
    def d(field: str) -> str:
        return _default(LocalBackendSettings, field)

    p.add_argument("--cpus", type=int, default=S, help="CPUs per worker" + d("cpus"))
    p.add_argument("--gpus", type=int, default=S, help="GPUs per worker" + d("gpus"))
    p.add_argument(
        "--memory-mb", type=int, default=S, help="Memory per worker in MB" + d("memory_mb")
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=S,
        help="Where worker pid files, logs and work dirs live "
        "(default: $XDG_STATE_HOME/codalab-scaler)",
    )


def _aws_batch_flags(p: argparse.ArgumentParser) -> None:
    def d(field: str) -> str:
        return _default(AwsBatchBackendSettings, field)

    add = p.add_argument
    add("--region", default=S, help="AWS region to run jobs in" + d("region"))
    add(
        "--job-definition-name",
        default=S,
        help="Name of the job definition this scaler registers" + d("job_definition_name"),
    )
    add("--cpus", type=int, default=S, help="vCPUs for each worker" + d("cpus"))
    add("--gpus", type=int, default=S, help="GPUs to request for each worker" + d("gpus"))
    add("--memory-mb", type=int, default=S, help="Memory (MB) for each worker" + d("memory_mb"))
    add("--user", default=S, help="User to run the Batch jobs as" + d("user"))
    add("--job-queue", default=S, help="AWS Batch job queue" + d("job_queue"))
    add(
        "--job-filter",
        default=S,
        help="Count only jobs whose names fully match this regular expression",
    )
    # new in codalab-scaler
    add("--endpoint-url", default=S, help="AWS Batch endpoint (default: the region's)")
    add("--image", default=S, help="Worker image (default: codalab/worker:$CODALAB_VERSION)")
    add(
        "--password-secret-arn",
        default=S,
        help="Secrets Manager or SSM parameter ARN holding the worker's CodaLab password",
    )
    add(
        "--allow-plaintext-password",
        action="store_true",
        default=S,
        help="Without --password-secret-arn, put the password in each job's overrides (insecure)",
    )
    add(
        "--job-name-prefix",
        default=S,
        help="Jobs are named <prefix>-<pool>-<worker id>" + d("job_name_prefix"),
    )
    add(
        "--execution-role-arn",
        default=S,
        help="IAM role AWS Batch uses to read --password-secret-arn",
    )
    add(
        "--connect-timeout-seconds",
        type=float,
        default=S,
        help="Connect timeout of one AWS request" + d("connect_timeout_seconds"),
    )
    add(
        "--read-timeout-seconds",
        type=float,
        default=S,
        help="Read timeout of one AWS request" + d("read_timeout_seconds"),
    )


def _slurm_batch_flags(p: argparse.ArgumentParser) -> None:
    def d(field: str) -> str:
        return _default(SlurmBatchBackendSettings, field)

    add = p.add_argument
    add("--job-name", default=S, help="Name of the jobs this scaler submits" + d("job_name"))
    add("--nodelist", default=S, help="Nodes to run jobs on")
    add("--exclude", default=S, help="Comma-separated nodes never to run jobs on")
    add("--partition", default=S, help="Slurm partition (required)")
    add("--cpus", type=int, default=S, help="CPUs for each worker" + d("cpus"))
    add("--gpus", type=int, default=S, help="GPUs for each worker" + d("gpus"))
    add("--gpu-type", default=S, help="GPU type to request from Slurm")
    add("--constraint", default=S, help="Constraints to request from Slurm")
    add("--memory-mb", type=int, default=S, help="Memory (MB) for each worker" + d("memory_mb"))
    add("--time", default=S, help="Time limit of each job" + d("time"))
    add("--account", default=S, help="Slurm account to charge")
    add(
        "--dry-run",
        action="store_true",
        default=S,
        help="Write the batch script and report it, never submit (same as the global flag)",
    )
    add("--user", default=S, help="Slurm user whose jobs are counted (default: the current user)")
    add(
        "--password-file",
        type=Path,
        default=S,
        help="CodaLab username and password file (mode 0600), for the scaler and its workers",
    )
    add(
        "--slurm-work-dir",
        type=Path,
        default=S,
        help="Where batch scripts and job logs go" + d("slurm_work_dir"),
    )
    add(
        "--exit-after-num-failed",
        type=int,
        default=S,
        help="Exit with status 1 once this many workers failed to start",
    )
