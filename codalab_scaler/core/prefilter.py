"""Drop staged bundles a pool's workers could never serve (the original's prefilter).

A bundle is kept when each request is at most the worker shape (equality
kept; 1g = 1024 MiB), as the original's ``filter_bundles`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from codalab_scaler.core.model import BundleView, FilteredBundle, StagedBundle


@dataclass(frozen=True, slots=True)
class WorkerShape:
    """What one worker of a pool offers; the values come from the backend's settings."""

    cpus: int
    gpus: int
    memory_mb: int

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * 1024 * 1024


def prefilter(
    bundles: Iterable[StagedBundle], shape: WorkerShape, *, enabled: bool = True, malformed: int = 0
) -> BundleView:
    kept: list[StagedBundle] = []
    dropped: list[FilteredBundle] = []
    for bundle in bundles:
        if not enabled:
            kept.append(bundle)
        elif bundle.cpus > shape.cpus:
            dropped.append(FilteredBundle(bundle.uuid, "cpus", bundle.cpus, shape.cpus))
        elif bundle.gpus > shape.gpus:
            dropped.append(FilteredBundle(bundle.uuid, "gpus", bundle.gpus, shape.gpus))
        elif bundle.memory_bytes > shape.memory_bytes:
            dropped.append(
                FilteredBundle(bundle.uuid, "memory", bundle.memory_bytes, shape.memory_bytes)
            )
        else:
            kept.append(bundle)
    return BundleView(staged=tuple(kept), filtered=tuple(dropped), malformed=malformed)
