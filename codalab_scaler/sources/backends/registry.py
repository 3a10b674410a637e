"""The one list of backend kinds; everything else that names a kind is derived from it.

The settings union (``BackendSettings``), the kind names, the CLI's
subcommands and the docs' backend sections all read ``BACKEND_KINDS``.
Adding a backend: a package ``sources/backends/<kind>/`` with
``settings.py`` (its model, importing no SDK) and ``backend.py`` (with
``open_backend``), one line below, its docs page and its tests.

Only the settings modules are imported here; a kind's ``backend`` module
(and its SDK) is imported when a pool of that kind is opened.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Protocol, Union, cast

from pydantic import Field

from codalab_scaler.core.worker_command import WorkerOptions
from codalab_scaler.sources.backends.aws_batch import settings as aws_batch
from codalab_scaler.sources.backends.azure_batch import settings as azure_batch
from codalab_scaler.sources.backends.base import Backend, StrictModel, WorkerCredentials
from codalab_scaler.sources.backends.kubernetes import settings as kubernetes
from codalab_scaler.sources.backends.local import settings as local
from codalab_scaler.sources.backends.slurm import settings as slurm

__all__ = [
    "BACKEND_KINDS",
    "DEFAULT_KIND",
    "BackendKind",
    "BackendSettings",
    "backend_kind",
    "default_backend_settings",
    "kind_names",
]

Factory = Callable[[str, Any, WorkerOptions, WorkerCredentials], Any]
Opener = Callable[
    [str, Any, WorkerOptions, WorkerCredentials], AbstractAsyncContextManager[Backend]
]


class AnyBackendSettings(Protocol):
    """What the rest of the program reads from any backend's settings: its kind and shape."""

    @property
    def kind(self) -> str: ...
    @property
    def cpus(self) -> int: ...
    @property
    def gpus(self) -> int: ...
    @property
    def memory_mb(self) -> int: ...


@dataclass(frozen=True, slots=True)
class BackendKind:
    """One kind of backend: its name, settings model, opener and CLI subcommand.

    ``package`` is the backend's package; its ``backend`` module must define
    ``create_backend(pool, settings, options, credentials)`` (the backend,
    not yet opened, with an ``aclose``).  Opening it means entering
    ``contextlib.aclosing`` of it, unless the module also defines
    ``open_backend`` with the same arguments, an async context manager for a
    backend that must do more on the way in (kubernetes connects).
    ``environ_defaults`` gives the defaults that depend on the environment
    (read only by the loader).  ``also_accepts`` names service
    or pool settings the original ``cl-worker-manager`` also accepted after
    this subcommand.
    """

    name: str
    settings: type[StrictModel]
    package: str
    help: str
    environ_defaults: Callable[[Mapping[str, str]], dict[str, Any]] = field(
        default=lambda _environ: {}
    )
    also_accepts: tuple[str, ...] = ()

    def opener(self) -> Opener:
        """Import the backend module (and its SDK) now, and return how to open one."""
        module = self._backend_module()
        own = getattr(module, "open_backend", None)
        if own is not None:
            return cast("Opener", own)
        create = cast("Factory", module.create_backend)

        def open_backend(
            pool: str, settings: Any, options: WorkerOptions, credentials: WorkerCredentials
        ) -> AbstractAsyncContextManager[Backend]:
            return contextlib.aclosing(create(pool, settings, options, credentials))

        return open_backend

    def factory(self) -> Factory:
        """Import the backend module now, and return its ``create_backend`` (not opened)."""
        return cast("Factory", self._backend_module().create_backend)

    def _backend_module(self) -> ModuleType:
        return importlib.import_module(f"{self.package}.backend")


_PACKAGE = "codalab_scaler.sources.backends"

BACKEND_KINDS: tuple[BackendKind, ...] = (
    BackendKind("local", local.LocalBackendSettings, _PACKAGE + ".local",
                "Run workers as local processes (embedded default)",
                environ_defaults=local.environ_defaults),
    BackendKind("aws-batch", aws_batch.AwsBatchBackendSettings, _PACKAGE + ".aws_batch",
                "Run workers as AWS Batch jobs",
                environ_defaults=aws_batch.environ_defaults),
    BackendKind("azure-batch", azure_batch.AzureBatchBackendSettings, _PACKAGE + ".azure_batch",
                "Run workers as Azure Batch tasks",
                environ_defaults=azure_batch.environ_defaults),
    BackendKind("slurm-batch", slurm.SlurmBatchBackendSettings, _PACKAGE + ".slurm",
                "Run workers as Slurm batch jobs",
                environ_defaults=slurm.environ_defaults,
                also_accepts=("dry_run", "password_file")),
    BackendKind("kubernetes", kubernetes.KubernetesBackendSettings, _PACKAGE + ".kubernetes",
                "Run workers as Kubernetes pods",
                environ_defaults=kubernetes.environ_defaults),
)  # fmt: skip

_BY_NAME = {kind.name: kind for kind in BACKEND_KINDS}
DEFAULT_KIND = BACKEND_KINDS[0].name  # a pool without a backend table, or a table without kind


def kind_names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def backend_kind(name: str) -> BackendKind:
    """The kind called ``name``; ``KeyError`` if there is none."""
    return _BY_NAME[name]


if TYPE_CHECKING:
    BackendSettings = AnyBackendSettings
else:
    # A pool's ``backend`` table: one of the models above, told apart by ``kind``.
    BackendSettings = Annotated[
        Union[tuple(kind.settings for kind in BACKEND_KINDS)],  # noqa: UP007 - built from the tuple
        Field(discriminator="kind"),
    ]


def default_backend_settings() -> BackendSettings:
    """The default kind's settings with their defaults (the loader adds the environment's)."""
    return cast("BackendSettings", BACKEND_KINDS[0].settings())
