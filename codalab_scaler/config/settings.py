"""Every setting, validated in one place (pydantic).

Sources, strongest first: command-line flags, environment variables
(``CODALAB_SCALER_<FIELD>``, nested with ``__``: ``CODALAB_SCALER_POOLS__GPU__MAX_WORKERS``),
the TOML file given with ``--config``, then the defaults below, which are
the original ``cl-worker-manager``'s.  CodaLab credentials come from
``CODALAB_USERNAME`` / ``CODALAB_PASSWORD`` or a two-line password file.

Invalid input raises ``ConfigError`` whose lines each name one bad field;
the CLI prints them and exits 2.
"""

from __future__ import annotations

import contextvars
import re
import tomllib
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
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from codalab_scaler.config.backend_settings import (
    AwsBatchBackendSettings,
    BackendSettings,
    LocalBackendSettings,
    SlurmBatchBackendSettings,
    StrictModel,
)
from codalab_scaler.core.decision import Policy
from codalab_scaler.core.errors import ConfigError
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.worker_command import WorkerOptions
from codalab_scaler.sources.retry import RetryPolicy

__all__ = [
    "AwsBatchBackendSettings",
    "BackendSettings",
    "LocalBackendSettings",
    "PoolSettings",
    "Settings",
    "SlurmBatchBackendSettings",
    "format_errors",
    "load_settings",
]

BACKEND_KINDS = frozenset(
    model.model_fields["kind"].default
    for model in (LocalBackendSettings, AwsBatchBackendSettings, SlurmBatchBackendSettings)
)
POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class PoolSettings(StrictModel):
    """One pool: a backend, a worker shape, limits and a tag."""

    backend: BackendSettings = Field(default_factory=LocalBackendSettings)
    min_workers: NonNegativeInt = 1
    max_workers: NonNegativeInt = 10
    search: list[str] = Field(default_factory=list)
    min_seconds_between_workers: NonNegativeInt = 60
    max_launches_per_pass: PositiveInt = 1
    no_prefilter: bool = False
    worker_tag: str | None = None
    worker_tag_exclusive: bool = False
    worker_group: str | None = None
    worker_executable: str = "cl-worker"
    worker_idle_seconds: NonNegativeInt = 600
    worker_work_dir_prefix: str | None = None
    worker_max_work_dir_size: str | None = None
    worker_delete_work_dir_on_exit: bool = False
    worker_exit_after_num_runs: int | None = None
    worker_exit_on_exception: bool = False
    worker_pass_down_termination: bool = False
    worker_checkin_frequency_seconds: PositiveInt | None = None
    worker_download_dependencies_max_retries: NonNegativeInt | None = 3
    worker_shared_memory_size_gb: NonNegativeInt | None = 1
    worker_preemptible: bool = False
    exit_after_num_failed: PositiveInt | None = None

    @field_validator("backend", mode="before")
    @classmethod
    def _local_by_default(cls, value: Any) -> Any:
        """A backend table without ``kind`` is the embedded default, as before kinds existed."""
        if isinstance(value, Mapping) and "kind" not in value:
            return {**value, "kind": "local"}
        return value

    @field_validator("max_workers")
    @classmethod
    def _max_at_least_min(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("min_workers")
        if isinstance(minimum, int) and value < minimum:
            raise ValueError(f"must be >= min_workers ({value} < {minimum})")
        return value

    @field_validator("worker_max_work_dir_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            from codalab_scaler.core.sizes import parse_size

            parse_size(value)
        return value

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


# The parsed --config file while load_settings validates (pydantic-settings takes no argument).
_CONFIG: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "codalab_scaler_config", default=None
)


class Settings(BaseSettings):
    """The whole service's settings."""

    model_config = SettingsConfigDict(
        env_prefix="CODALAB_SCALER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: str = "https://worksheets.codalab.org"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    sleep_time: PositiveFloat = 5
    once: bool = False
    dry_run: bool = False
    verbose: bool = False
    log_format: Literal["auto", "json", "console"] = "auto"
    staleness_seconds: PositiveFloat | None = None
    in_flight_timeout_seconds: PositiveFloat = 300
    request_timeout_seconds: PositiveFloat = 30
    retry_attempts: PositiveInt = 4
    retry_max_seconds: PositiveFloat = 30
    retry_backoff_seconds: PositiveFloat = 0.5
    retry_max_backoff_seconds: PositiveFloat = 8
    health_grace_seconds: PositiveFloat = 60
    health_stall_seconds: PositiveFloat | None = None
    http_host: str = "0.0.0.0"  # noqa: S104 - a metrics endpoint in a container must be reachable
    http_port: Annotated[int, Field(ge=0, le=65535)] = 9740
    temp_session: bool = True
    restart_after_seconds: PositiveInt | None = None
    pools: dict[str, PoolSettings] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = _CONFIG.get()
        if config is None:
            return (init_settings, env_settings)
        # The file as load_settings already read and parsed it (read once, checked once).
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=config))

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
    def _credentials(self) -> Settings:
        if self.password_file is not None:
            try:
                lines = self.password_file.read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"password_file: cannot read ({exc.strerror})") from None
            if len(lines) < 2 or not lines[0].strip() or not lines[1]:
                raise ValueError("password_file: needs the username on line 1, the password on 2")
            object.__setattr__(self, "username", lines[0].strip())
            object.__setattr__(self, "password", SecretStr(lines[1]))
        if not self.pools:
            raise ValueError("pools: no pool configured (give a backend subcommand or [pools.X])")
        if self.username is None or self.password is None:
            raise ValueError(
                "credentials: set CODALAB_USERNAME and CODALAB_PASSWORD, or --password-file"
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


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``pools.gpu.backend.slurm-batch.partition`` -> ``pools.gpu.backend.partition``.

    pydantic puts the union's tag into the path; the operator's file has no such level.
    """
    parts = [
        str(part)
        for i, part in enumerate(loc)
        if not (i > 0 and loc[i - 1] == "backend" and part in BACKEND_KINDS)
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


def load_settings(values: Mapping[str, Any], config_file: Path | None = None) -> Settings:
    """Validate ``values`` (from the command line) over the environment and ``config_file``."""
    config = None
    if config_file is not None:
        try:
            with config_file.open("rb") as fh:
                config = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError([f"config: cannot read {config_file} ({exc.strerror})"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config: {config_file} is not valid TOML ({exc})"]) from None
    token = _CONFIG.set(config)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None
    finally:
        _CONFIG.reset(token)
