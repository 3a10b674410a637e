"""Every setting, declared once: its type, default, unit and why (pydantic).

The command line, the environment variables and the settings reference in
``docs/`` are all generated from these models; ``loader`` fills them from
flags, the environment and a TOML file.  Defaults are the original
``cl-worker-manager``'s wherever it had the setting.  Invalid input raises
``ConfigError`` whose lines each name one bad field; the CLI prints them
and exits 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from codalab_scaler.core.decision import Policy
from codalab_scaler.core.planner import PolicyKind, PoolSpec
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.routing import RouteSpec
from codalab_scaler.core.worker_command import WorkerOptions
from codalab_scaler.sources.backends.base import StrictModel
from codalab_scaler.sources.backends.registry import (
    DEFAULT_KIND,
    BackendSettings,
    default_backend_settings,
    kind_names,
)
from codalab_scaler.sources.retry import RetryPolicy

__all__ = ["BackendSettings", "PoolSettings", "Settings", "format_errors"]

POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# The validation context key under which the loader reports an unreadable password file.
PASSWORD_FILE_PROBLEM = "password_file_problem"  # noqa: S105 - a key name, not a password


class PoolSettings(StrictModel):
    """One pool: a backend, a worker shape, limits and a tag."""

    backend: BackendSettings = Field(
        default_factory=default_backend_settings,
        description="Where this pool's workers run: a table whose kind names the backend "
        "(see the backend sections). Default, and without a kind: local, the embedded "
        "default.",
    )
    min_workers: NonNegativeInt = Field(
        default=1,
        description="Workers to keep even with no staged work, a count; one is launched per "
        "pass while below it. 1: the original's default, so a bundle starts without waiting "
        "for a worker to boot.",
    )
    max_workers: NonNegativeInt = Field(
        default=10,
        description="Most workers (pending and active) this pool runs, a count. "
        "10: the original's default; at least min_workers.",
    )
    search: list[str] = Field(
        default_factory=list,
        description="Extra CodaLab search keywords; only staged bundles matching them count "
        "as this pool's work. Empty: every staged bundle the user may run, as the original.",
    )
    min_seconds_between_workers: NonNegativeInt = Field(
        default=60,
        description="Seconds to wait after a launch before the next one. 60: the original's "
        "default, about the time a worker takes to check in and take work.",
    )
    max_launches_per_pass: PositiveInt = Field(
        default=1,
        description="Workers launched per pass at most, a count (still bounded by staged "
        "minus pending and by max_workers). 1: the original's behaviour.",
    )
    policy: Literal["compat", "fast"] = Field(
        default="compat",
        description="How the pool decides what to launch. compat: the original's rules, "
        "exactly, on the bundles routed to this pool (the default, so a cl-worker-manager "
        "command line behaves as before). fast: place the bundles on serving and booting "
        "workers, bin-pack the rest into new workers and launch those at once, paced by "
        "launch_rate_per_minute and launch_burst (min_seconds_between_workers and "
        "max_launches_per_pass are then ignored).",
    )
    priority: int = Field(
        default=0,
        description="Among the pools that can take a staged bundle, the highest priority "
        "gets it (then the smallest worker shape, then the name). 0: all pools equal, so "
        "the shape that wastes least wins.",
    )
    launch_rate_per_minute: PositiveFloat = Field(
        default=60,
        description="fast pools: launch tokens refilled per minute. 60: one launch a second "
        "sustained, well under what AWS Batch, Slurm and Kubernetes accept, yet a runaway "
        "is bounded to 60 jobs a minute.",
    )
    launch_burst: PositiveInt = Field(
        default=20,
        description="fast pools: most launch tokens held, so most launches in one pass, a "
        "count. 20: a burst of 20 staged bundles (the issue's workload) gets its workers in "
        "one pass.",
    )
    min_idle_workers: NonNegativeInt = Field(
        default=0,
        description="fast pools: serving workers with nothing running to keep as warm "
        "spares (booting workers with no bundle count), within max_workers. 0: no spares; "
        "idle workers exit after worker_idle_seconds.",
    )
    provision_timeout_seconds: PositiveFloat = Field(
        default=900,
        description="A worker booting longer than this, in seconds (pending in the "
        "backend, or running and not checked in with CodaLab), is stuck: no longer counted "
        "as capacity, logged once. 900: longer than a cold cloud instance plus an image pull "
        "normally take.",
    )
    cancel_stuck_workers: bool = Field(
        default=False,
        description="Cancel a stuck worker's backend job (and back the pool off). Off: "
        "stuck workers are reported and left for the operator, who may know why.",
    )
    keep_exited_workers_listed: bool = Field(
        default=False,
        description="Leave a worker whose backend job has ended listed in CodaLab until the "
        "server forgets it (60 s after its last check-in), as the original does. Off: the "
        "scaler checks it out on its behalf (POST /rest/workers/<id>/checkout), because a "
        "cl-worker that exits idle does not, and CodaLab's bundle manager keeps dispatching "
        "runs to it, each failing, until then.",
    )
    backoff_initial_seconds: PositiveFloat = Field(
        default=10,
        description="After a refused or failed launch, a failed start or a cancelled stuck "
        "worker, the pool takes no bundles and launches nothing for this long (jittered), "
        "doubled on each failure in a row. 10: a few polls, enough for a transient to clear.",
    )
    backoff_max_seconds: PositiveFloat = Field(
        default=300,
        description="Longest backoff, in seconds; the backoff resets when a worker of the "
        "pool registers with CodaLab. 300: a broken backend is retried every five minutes.",
    )
    no_prefilter: bool = Field(
        default=False,
        description="Count every staged bundle as work, even those asking for more CPUs, "
        "GPUs or memory than this pool's workers offer. Off: such bundles would launch "
        "workers that can never run them.",
    )
    worker_tag: str | None = Field(
        default=None,
        description="Tag workers carry (cl-worker --tag) and staged bundles' request_queue "
        "is matched against. Unset: untagged workers, as the original.",
    )
    worker_tag_exclusive: bool = Field(
        default=False,
        description="Workers run only bundles that ask for their tag (cl-worker "
        "--tag-exclusive), and only those count as work. Off: the original's default.",
    )
    worker_group: str | None = Field(
        default=None,
        description="Workers run only bundles of this CodaLab group (cl-worker --group). "
        "Unset: any group.",
    )
    worker_executable: str = Field(
        default="cl-worker",
        description="The CodaLab worker command, a path or a name on PATH. cl-worker: the "
        "original's default.",
    )
    worker_idle_seconds: NonNegativeInt = Field(
        default=600,
        description="Seconds a worker waits for a run before it exits (cl-worker "
        "--idle-seconds), which is how the pool shrinks. 600: the original's default.",
    )
    worker_work_dir_prefix: str | None = Field(
        default=None,
        description="Directory under which each worker gets its work dir. Unset: the "
        "backend's default (/tmp, or the local backend's state_dir).",
    )
    worker_max_work_dir_size: str | None = Field(
        default=None,
        description="Most temporary bundle data a worker keeps, a size such as 10g "
        "(cl-worker --max-work-dir-size). Unset: the worker's own default.",
    )
    worker_delete_work_dir_on_exit: bool = Field(
        default=False,
        description="Workers delete their work dir when they exit. Off: the original's "
        "default, so a crashed run's data stays for inspection.",
    )
    worker_exit_after_num_runs: int | None = Field(
        default=None,
        description="Workers exit after this many runs, a count; 0 or less means never, as "
        "the original. Unset: never.",
    )
    worker_exit_on_exception: bool = Field(
        default=False,
        description="Workers exit on an unexpected exception instead of sleeping and "
        "retrying. Off: the original's default.",
    )
    worker_pass_down_termination: bool = Field(
        default=False,
        description="Workers kill and restage their runs when terminated. Off: the "
        "original's default.",
    )
    worker_checkin_frequency_seconds: PositiveInt | None = Field(
        default=None,
        description="Seconds between a worker's check-ins. Unset: the worker's own default.",
    )
    worker_download_dependencies_max_retries: NonNegativeInt | None = Field(
        default=3,
        description="Times a worker retries downloading a run's dependencies, a count. "
        "3: cl-worker's own default, passed explicitly as the original did.",
    )
    worker_shared_memory_size_gb: NonNegativeInt | None = Field(
        default=1,
        description="Shared memory of each run's container, in GB. 1: cl-worker's own "
        "default, passed explicitly as the original did.",
    )
    worker_preemptible: bool = Field(
        default=False,
        description="Workers tell CodaLab they may be preempted, so their runs can be "
        "restaged. Off: workers are not preempted unless the backend says so.",
    )
    exit_after_num_failed: PositiveInt | None = Field(
        default=None,
        description="Exit with status 1 once this many workers of this pool failed to "
        "start, a count, so that a supervisor or operator notices a broken backend. "
        "Unset: keep trying forever, as the original.",
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _local_by_default(cls, value: Any) -> Any:
        """A backend table without ``kind`` is the embedded default, as before kinds existed."""
        if isinstance(value, Mapping) and "kind" not in value:
            return {**value, "kind": DEFAULT_KIND}
        return value

    @field_validator("max_workers")
    @classmethod
    def _max_at_least_min(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("min_workers")
        if isinstance(minimum, int) and value < minimum:
            raise ValueError(f"must be >= min_workers ({value} < {minimum})")
        return value

    @field_validator("backoff_max_seconds")
    @classmethod
    def _backoff_max_at_least_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("backoff_initial_seconds")
        if isinstance(initial, float | int) and value < initial:
            raise ValueError(f"must be >= backoff_initial_seconds ({value:g} < {initial:g})")
        return value

    @field_validator("min_idle_workers")
    @classmethod
    def _idle_within_max(cls, value: int, info: ValidationInfo) -> int:
        maximum = info.data.get("max_workers")
        if isinstance(maximum, int) and value > maximum:
            raise ValueError(f"must be <= max_workers ({value} > {maximum})")
        return value

    @field_validator("worker_max_work_dir_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            from codalab_scaler.core.sizes import parse_size

            parse_size(value)
        return value

    def route_spec(self, name: str) -> RouteSpec:
        return RouteSpec(
            name=name,
            shape=self.shape(),
            tag=self.worker_tag,
            tag_exclusive=self.worker_tag_exclusive,
            priority=self.priority,
            prefilter=not self.no_prefilter,
        )

    def shape(self) -> WorkerShape:
        b = self.backend
        return WorkerShape(cpus=b.cpus, gpus=b.gpus, memory_mb=b.memory_mb)

    def worker_options(self, server: str) -> WorkerOptions:
        return WorkerOptions(
            server=server,
            executable=self.worker_executable,
            idle_seconds=self.worker_idle_seconds,
            tag=self.worker_tag,
            tag_exclusive=self.worker_tag_exclusive,
            group=self.worker_group,
            exit_after_num_runs=self.worker_exit_after_num_runs,
            download_dependencies_max_retries=self.worker_download_dependencies_max_retries,
            max_work_dir_size=self.worker_max_work_dir_size,
            delete_work_dir_on_exit=self.worker_delete_work_dir_on_exit,
            exit_on_exception=self.worker_exit_on_exception,
            pass_down_termination=self.worker_pass_down_termination,
            checkin_frequency_seconds=self.worker_checkin_frequency_seconds,
            shared_memory_size_gb=self.worker_shared_memory_size_gb,
            preemptible=self.worker_preemptible,
            work_dir_prefix=self.worker_work_dir_prefix,
        )


class Settings(StrictModel):
    """The whole service's settings."""

    server: str = Field(
        default="https://worksheets.codalab.org",
        description="CodaLab instance to connect to, an http(s) URL. The public instance: "
        "the original's default.",
    )
    username: str | None = Field(
        default=None,
        description="CodaLab user the scaler logs in as, and its workers run as. No flag: "
        "set CODALAB_USERNAME or use password_file, as the original.",
    )
    password: SecretStr | None = Field(
        default=None,
        description="That user's CodaLab password; never logged. No flag: set "
        "CODALAB_PASSWORD or use password_file.",
    )
    password_file: Path | None = Field(
        default=None,
        description="File with the CodaLab username on line 1 and the password on line 2 "
        "(mode 0600); wins over CODALAB_USERNAME/CODALAB_PASSWORD. Unset: those variables.",
    )
    sleep_time: PositiveFloat = Field(
        default=5,
        description="Seconds between polls of CodaLab and of each backend. 5: the "
        "original's default.",
    )
    once: bool = Field(
        default=False,
        description="Run one poll-decide-launch pass and exit (0 if it could observe and "
        "decide, else 1). Off: run until stopped.",
    )
    dry_run: bool = Field(
        default=False,
        description="Decide and log what would be launched, never launch. Off.",
    )
    verbose: bool = Field(
        default=False,
        description="Log debug events too. Off: info and above, as the original.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="Log format. auto: readable console lines on a TTY, JSON lines "
        "otherwise (for a log collector).",
    )
    staleness_seconds: PositiveFloat | None = Field(
        default=None,
        description="A view (staged bundles or jobs) older than this, in seconds, launches "
        "nothing. Unset: 3 x sleep_time, three missed polls.",
    )
    in_flight_timeout_seconds: PositiveFloat = Field(
        default=300,
        description="Seconds an accepted launch counts as pending while the backend does "
        "not list it yet. 300: far beyond the seconds a backend normally takes to list a "
        "new job, short enough that a lost launch does not hold the pool back for long.",
    )
    request_timeout_seconds: PositiveFloat = Field(
        default=30,
        description="Timeout of one HTTP request to CodaLab, in seconds. 30: a search over "
        "many staged bundles can take several seconds on a busy server.",
    )
    retry_attempts: PositiveInt = Field(
        default=4,
        description="Attempts of one CodaLab or backend call on a transient error, a count "
        "(the first included). 4: rides out a restart of a server or a throttled burst.",
    )
    retry_max_seconds: PositiveFloat = Field(
        default=30,
        description="Total seconds one call may spend retrying. 30: a few polls' worth; "
        "past it the view is marked stale and the next poll tries again. A wait that "
        "would end past it (a long Retry-After) gives up at once instead.",
    )
    retry_backoff_seconds: PositiveFloat = Field(
        default=0.5,
        description="First wait between retries, in seconds, doubled each time with "
        "jitter. 0.5: quick enough for a dropped connection.",
    )
    retry_max_backoff_seconds: PositiveFloat = Field(
        default=8,
        description="Longest wait between retries, in seconds. 8: keeps retries within "
        "retry_max_seconds.",
    )
    health_grace_seconds: PositiveFloat = Field(
        default=60,
        description="Seconds after start during which /healthz answers 200 before any "
        "loop succeeded. 60: time for a first login and poll on a slow server.",
    )
    health_stall_seconds: PositiveFloat | None = Field(
        default=None,
        description="/healthz answers 503 when a loop made no progress for this many "
        "seconds. Unset: 3 x sleep_time + retry_max_seconds + request_timeout_seconds, "
        "the longest a healthy pass can take.",
    )
    http_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - a metrics endpoint in a container must be reachable
        description="Address /metrics, /healthz and /status listen on. 0.0.0.0: reachable "
        "from a Prometheus or a probe outside the container.",
    )
    http_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=9740,
        description="Port of /metrics, /healthz and /status; 0 picks a free one. 9740: a "
        "fixed port in the range Prometheus exporters use, so scrape configs can name it.",
    )
    temp_session: bool = Field(
        default=True,
        description="Accepted for compatibility with cl-worker-manager; sessions are always "
        "in memory.",
    )
    restart_after_seconds: PositiveInt | None = Field(
        default=None,
        description="Accepted for compatibility with cl-worker-manager; ignored with a "
        "warning (the scaler holds no state that needs a periodic restart).",
    )
    leader_election: bool = Field(
        default=False,
        description="Run as one of several replicas: only the holder of a Kubernetes Lease "
        "launches, the others poll and stand by. Off: one scaler, always launching.",
    )
    leader_election_lease: str = Field(
        default="codalab-scaler",
        description="Name of the coordination.k8s.io Lease the replicas compete for.",
    )
    leader_election_namespace: str | None = Field(
        default=None,
        description="Namespace of the Lease. Unset: the scaler's own (in a cluster), else default.",
    )
    leader_election_identity: str | None = Field(
        default=None,
        description="This replica's name in the Lease. Unset: the host name, which in a "
        "pod is the pod's name.",
    )
    leader_election_kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig to reach the Lease with. Unset: the pod's service account.",
    )
    leader_election_lease_seconds: PositiveInt = Field(
        default=15,
        description="Seconds a Lease not renewed stays with its holder (whole seconds, as "
        "the Lease stores them); a standby takes over after it. 15: client-go's default.",
    )
    leader_election_renew_seconds: PositiveFloat = Field(
        default=10,
        description="Seconds the leader keeps trying to renew before it stops launching; "
        "less than the Lease. 10: client-go's default.",
    )
    leader_election_retry_seconds: PositiveFloat = Field(
        default=2,
        description="Seconds between attempts to acquire or renew the Lease (at least 1). "
        "2: client-go's default.",
    )
    pools: dict[str, PoolSettings] = Field(
        default_factory=dict,
        description="The pools, by name (lower-case letters, digits, - and _). A backend "
        "subcommand declares one pool named default; a TOML file may declare several.",
    )

    @field_validator("server")
    @classmethod
    def _server_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, value: dict[str, PoolSettings]) -> dict[str, PoolSettings]:
        for name in value:
            if not POOL_NAME.match(name):
                raise ValueError(f"pool name {name!r} must match {POOL_NAME.pattern}")
        return value

    @model_validator(mode="after")
    def _complete(self, info: ValidationInfo) -> Settings:
        # The loader read password_file before validation; a problem with it comes first.
        problem = (info.context or {}).get(PASSWORD_FILE_PROBLEM)
        if problem is not None:
            raise ValueError(f"password_file: {problem}")
        if not self.pools:
            raise ValueError("pools: no pool configured (give a backend subcommand or [pools.X])")
        if self.username is None or self.password is None:
            raise ValueError(
                "credentials: set CODALAB_USERNAME and CODALAB_PASSWORD, or --password-file"
            )
        if self.leader_election_retry_seconds < 1:
            raise ValueError("leader_election_retry_seconds: must be at least 1")
        if self.leader_election_renew_seconds <= 1.2 * self.leader_election_retry_seconds:
            raise ValueError(
                "leader_election_renew_seconds: must be more than 1.2 x "
                "leader_election_retry_seconds"
            )
        if self.leader_election_lease_seconds <= self.leader_election_renew_seconds:
            raise ValueError(
                "leader_election_lease_seconds: must be more than leader_election_renew_seconds"
            )
        return self

    @property
    def effective_staleness_seconds(self) -> float:
        return self.staleness_seconds or 3 * self.sleep_time

    @property
    def effective_health_stall_seconds(self) -> float:
        if self.health_stall_seconds is not None:
            return self.health_stall_seconds
        return 3 * self.sleep_time + self.retry_max_seconds + self.request_timeout_seconds

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.retry_attempts,
            max_seconds=self.retry_max_seconds,
            initial_backoff=self.retry_backoff_seconds,
            max_backoff=self.retry_max_backoff_seconds,
        )

    def policy(self, pool: str) -> Policy:
        p = self.pools[pool]
        return Policy(
            min_workers=p.min_workers,
            max_workers=p.max_workers,
            min_seconds_between_workers=p.min_seconds_between_workers,
            staleness_seconds=self.effective_staleness_seconds,
            max_launches_per_pass=p.max_launches_per_pass,
        )

    def pool_spec(self, pool: str) -> PoolSpec:
        """What the planner needs of pool ``pool``."""
        p = self.pools[pool]
        return PoolSpec(
            route=p.route_spec(pool),
            kind=PolicyKind(p.policy),
            limits=self.policy(pool),
            launch_rate_per_minute=p.launch_rate_per_minute,
            launch_burst=p.launch_burst,
            min_idle_workers=p.min_idle_workers,
            provision_timeout=p.provision_timeout_seconds,
            backoff_initial=p.backoff_initial_seconds,
            backoff_max=p.backoff_max_seconds,
            checkin_grace=checkin_grace(p.worker_checkin_frequency_seconds),
        )


CL_WORKER_CHECKIN_SECONDS = 5  # cl-worker's own --checkin-frequency-seconds default


def checkin_grace(frequency: int | None) -> float:
    """How long a registration's check-in time must stand still to prove its worker stopped.

    Two check-in periods and two seconds (check-in times are whole seconds).
    """
    return 2.0 * (frequency or CL_WORKER_CHECKIN_SECONDS) + 2.0


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``pools.gpu.backend.slurm-batch.partition`` -> ``pools.gpu.backend.partition``.

    pydantic puts the union's tag into the path; the operator's file has no such level.
    """
    kinds = kind_names()
    parts = [
        str(part)
        for i, part in enumerate(loc)
        if not (i > 0 and loc[i - 1] == "backend" and part in kinds)
    ]
    return ".".join(parts) or "config"


def format_errors(exc: ValidationError) -> list[str]:
    """One line per bad field; never echoes the input (it may be a password)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        msg = error["msg"]
        if error["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        path = _field_path(tuple(error["loc"]))
        if path == "config" and ": " in msg:
            path, msg = msg.split(": ", 1)
        lines.append(f"{path}: {msg}")
    return lines
