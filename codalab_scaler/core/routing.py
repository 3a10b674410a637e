"""Route each staged bundle to exactly one pool, or say why none can take it.

A pool is *eligible* for a bundle when its search returned the bundle, the
tag rules of CodaLab's bundle manager let its workers run it (a bundle with
a ``request_queue`` only goes to a worker with that tag; an untagged bundle
never goes to a tag-exclusive worker) and the bundle fits the pool's worker
shape (unless the pool's prefilter is off).  Among eligible pools, those
backing off, full or with a stale view (they could not launch for it) are
skipped; the rest are ordered by highest ``priority``, then pools whose shape
fits before pools that take it only because their prefilter is off, then
least waste (the smallest shape), then name.

A bundle whose eligible pools are all skipped is unroutable with the reason
of the pool it would go to (``pools_backing_off``, ``pools_stale`` or
``pools_at_max``) and stays *held* by that pool: that pool counts it as its
own (so its rules report ``at_max`` as the original's do) and no other pool
does.  Every staged bundle is
therefore counted by at most one pool.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from codalab_scaler.core.model import FilteredBundle, StagedBundle
from codalab_scaler.core.prefilter import WorkerShape


class Unroutable(enum.StrEnum):
    NO_POOL_FOR_TAG = "no_pool_for_tag"
    TOO_LARGE = "too_large"
    POOLS_BACKING_OFF = "pools_backing_off"
    POOLS_AT_MAX = "pools_at_max"
    POOLS_STALE = "pools_stale"


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
    """Why a pool cannot take more bundles now (each skips it): backing off, full, stale view."""

    backing_off: bool = False
    full: bool = False
    stale: bool = False

    @property
    def blocked(self) -> Unroutable | None:
        if self.backing_off:
            return Unroutable.POOLS_BACKING_OFF
        if self.stale:
            return Unroutable.POOLS_STALE
        if self.full:
            return Unroutable.POOLS_AT_MAX
        return None


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


def _order(spec: RouteSpec, bundle: StagedBundle) -> tuple[int, bool, int, int, int, str]:
    s = spec.shape
    overflows = _exceeds(bundle, s) is not None  # taken only because the prefilter is off
    return (-spec.priority, overflows, s.gpus, s.cpus, s.memory_mb, spec.name)


def _set_aside(filtered: Mapping[str, Iterable[FilteredBundle]], kept: set[str]) -> list[Stranded]:
    largest: dict[str, FilteredBundle] = {}
    for name in sorted(filtered):
        for item in filtered[name]:
            if item.uuid in kept:
                continue
            best = largest.get(item.uuid)
            if best is None or item.available > best.available:
                largest[item.uuid] = item
    return [
        Stranded(uuid, Unroutable.TOO_LARGE, item.reason, item.requested, item.available)
        for uuid, item in sorted(largest.items())
    ]


# What routing decides for a bundle: the pool it goes to, or why none takes it (the
# ``Stranded`` without its uuid) and the pool that holds it, if any.
_Choice = tuple[str | None, Stranded | None]


def _choose(
    ordered: Sequence[RouteSpec],
    returned_by: Sequence[str],
    bundle: StagedBundle,
    availability: Mapping[str, Availability],
) -> _Choice:
    """The pool for ``bundle`` (returned by the pools ``returned_by``), or why there is none."""
    by_tag = [s for s in ordered if s.name in returned_by and tag_allows(s, bundle)]
    if not by_tag:
        return None, Stranded("", Unroutable.NO_POOL_FOR_TAG)
    eligible = sorted((s for s in by_tag if _fits(s, bundle)), key=lambda s: _order(s, bundle))
    if not eligible:
        largest = max(by_tag, key=lambda s: (s.shape.gpus, s.shape.cpus, s.shape.memory_mb))
        resource, asked, offered = _exceeds(bundle, largest.shape) or ("cpus", 0, 0)
        return None, Stranded("", Unroutable.TOO_LARGE, resource, asked, offered)
    free = [s for s in eligible if availability.get(s.name, Availability()).blocked is None]
    if free:
        return free[0].name, None
    first = eligible[0].name
    reason = availability.get(first, Availability()).blocked or Unroutable.POOLS_AT_MAX
    return first, Stranded("", reason, held_by=first)


def route(
    specs: Sequence[RouteSpec],
    searched: Mapping[str, Iterable[StagedBundle]],
    availability: Mapping[str, Availability],
    filtered: Mapping[str, Iterable[FilteredBundle]] | None = None,
) -> Routing:
    """Route every bundle any pool's search returned (merged by uuid).

    ``filtered`` are bundles a pool's search returned that its prefilter
    already set aside (the service's views are prefiltered); one no pool
    kept is ``too_large``, with the largest offer of the resource.

    The choice depends only on the bundle's request (cpus, gpus, memory,
    tag) and on which pools returned it, and thousands of staged bundles
    share a few such keys: each key is decided once per pass.
    """
    ordered = sorted(specs, key=lambda s: s.name)
    returned: dict[str, list[str]] = {}
    bundles: dict[str, StagedBundle] = {}
    for spec in ordered:
        for bundle in searched.get(spec.name, ()):
            names = returned.get(bundle.uuid)
            if names is None:
                bundles[bundle.uuid] = bundle
                returned[bundle.uuid] = [spec.name]
            elif names[-1] != spec.name:
                names.append(spec.name)
    routed: dict[str, list[StagedBundle]] = {}
    held: dict[str, list[StagedBundle]] = {}
    stranded: list[Stranded] = []
    choices: dict[tuple[int, int, int, str, tuple[str, ...]], _Choice] = {}
    for uuid in sorted(bundles):
        bundle = bundles[uuid]
        key = (bundle.cpus, bundle.gpus, bundle.memory_bytes, bundle.tag, tuple(returned[uuid]))
        choice = choices.get(key)
        if choice is None:
            choice = choices[key] = _choose(ordered, key[4], bundle, availability)
        pool, why = choice
        if why is None:
            routed.setdefault(pool or "", []).append(bundle)
            continue
        if pool is not None:
            held.setdefault(pool, []).append(bundle)
        stranded.append(Stranded(uuid, why.reason, why.resource, why.requested, why.largest,
                                 why.held_by))  # fmt: skip
    stranded += _set_aside(filtered or {}, set(bundles))
    return Routing(
        routed={k: tuple(v) for k, v in routed.items()},
        held={k: tuple(v) for k, v in held.items()},
        unroutable=tuple(stranded),
    )
