"""Route each staged bundle to exactly one pool, or say why none can take it.

A pool is *eligible* for a bundle when its search returned the bundle, the
tag rules of CodaLab's bundle manager let its workers run it (a bundle with
a ``request_queue`` only goes to a worker with that tag; an untagged bundle
never goes to a tag-exclusive worker) and the bundle fits the pool's worker
shape (unless the pool's prefilter is off).  Among eligible pools, those
backing off or full are skipped; the rest are ordered by highest
``priority``, then least waste (the smallest shape), then name.

A bundle whose eligible pools are all skipped is unroutable
(``pools_backing_off`` or ``pools_at_max``) but stays *held* by the pool it
would go to: that pool counts it as its own (so its rules report ``at_max``
as the original's do) and no other pool does.  Every staged bundle is
therefore counted by at most one pool.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from codalab_scaler.core.model import StagedBundle
from codalab_scaler.core.prefilter import WorkerShape


class Unroutable(enum.StrEnum):
    NO_POOL_FOR_TAG = "no_pool_for_tag"
    TOO_LARGE = "too_large"
    POOLS_BACKING_OFF = "pools_backing_off"
    POOLS_AT_MAX = "pools_at_max"


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """What routing needs to know of one pool."""

    name: str
    shape: WorkerShape
    tag: str | None
    tag_exclusive: bool
    priority: int
    prefilter: bool


@dataclass(frozen=True, slots=True)
class Availability:
    backing_off: bool = False
    full: bool = False


@dataclass(frozen=True, slots=True)
class Stranded:
    """A bundle no pool takes now: why, and for ``too_large`` what was asked and offered."""

    uuid: str
    reason: Unroutable
    resource: str | None = None
    requested: int | None = None
    largest: int | None = None
    held_by: str | None = None


@dataclass(frozen=True, slots=True)
class Routing:
    routed: Mapping[str, tuple[StagedBundle, ...]]
    held: Mapping[str, tuple[StagedBundle, ...]]
    unroutable: tuple[Stranded, ...]

    def counted(self, pool: str) -> tuple[StagedBundle, ...]:
        """The bundles ``pool`` counts as its own: routed to it, then held by it."""
        return self.routed.get(pool, ()) + self.held.get(pool, ())

    def pool_of(self) -> dict[str, str]:
        return {b.uuid: name for name, bs in self.routed.items() for b in bs}


def tag_allows(spec: RouteSpec, bundle: StagedBundle) -> bool:
    if bundle.tag:
        return spec.tag == bundle.tag
    return not (spec.tag and spec.tag_exclusive)


def _exceeds(bundle: StagedBundle, shape: WorkerShape) -> tuple[str, int, int] | None:
    for resource, asked, offered in (
        ("cpus", bundle.cpus, shape.cpus),
        ("gpus", bundle.gpus, shape.gpus),
        ("memory", bundle.memory_bytes, shape.memory_bytes),
    ):
        if asked > offered:
            return resource, asked, offered
    return None


def _fits(spec: RouteSpec, bundle: StagedBundle) -> bool:
    return not spec.prefilter or _exceeds(bundle, spec.shape) is None


def _order(spec: RouteSpec) -> tuple[int, int, int, int, str]:
    s = spec.shape
    return (-spec.priority, s.gpus, s.cpus, s.memory_mb, spec.name)


def route(
    specs: Sequence[RouteSpec],
    searched: Mapping[str, Iterable[StagedBundle]],
    availability: Mapping[str, Availability],
) -> Routing:
    """Route every bundle any pool's search returned (merged by uuid)."""
    ordered = sorted(specs, key=_order)
    returned: dict[str, set[str]] = {}
    bundles: dict[str, StagedBundle] = {}
    for spec in ordered:
        for bundle in searched.get(spec.name, ()):
            bundles.setdefault(bundle.uuid, bundle)
            returned.setdefault(bundle.uuid, set()).add(spec.name)
    routed: dict[str, list[StagedBundle]] = {}
    held: dict[str, list[StagedBundle]] = {}
    stranded: list[Stranded] = []
    for uuid in sorted(bundles):
        bundle = bundles[uuid]
        by_tag = [s for s in ordered if s.name in returned[uuid] and tag_allows(s, bundle)]
        if not by_tag:
            stranded.append(Stranded(uuid, Unroutable.NO_POOL_FOR_TAG))
            continue
        eligible = [s for s in by_tag if _fits(s, bundle)]
        if not eligible:
            largest = max(by_tag, key=lambda s: (s.shape.gpus, s.shape.cpus, s.shape.memory_mb))
            resource, asked, offered = _exceeds(bundle, largest.shape) or ("cpus", 0, 0)
            stranded.append(Stranded(uuid, Unroutable.TOO_LARGE, resource, asked, offered))
            continue
        free = [
            s
            for s in eligible
            if not availability.get(s.name, Availability()).backing_off
            and not availability.get(s.name, Availability()).full
        ]
        if free:
            routed.setdefault(free[0].name, []).append(bundle)
            continue
        first = eligible[0].name
        all_full = all(availability.get(s.name, Availability()).full for s in eligible)
        reason = Unroutable.POOLS_AT_MAX if all_full else Unroutable.POOLS_BACKING_OFF
        held.setdefault(first, []).append(bundle)
        stranded.append(Stranded(uuid, reason, held_by=first))
    return Routing(
        routed={k: tuple(v) for k, v in routed.items()},
        held={k: tuple(v) for k, v in held.items()},
        unroutable=tuple(stranded),
    )
