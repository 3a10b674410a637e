"""``routing.route`` decides each kind of bundle once: the same routing as deciding each bundle.

``plain_route`` is the router as first written (every bundle decided on its
own, from its pools' specs); ``route`` decides once per request and set of
pools that returned it.  For any pools, searches (overlapping, repeated),
availability and filtered bundles they must agree exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from codalab_scaler.core.model import FilteredBundle, StagedBundle
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.routing import (
    Availability,
    RouteSpec,
    Routing,
    Stranded,
    Unroutable,
    route,
    tag_allows,
)
from tests.planner_inputs import GIB

SIZES = (("cpus", "cpus"), ("gpus", "gpus"), ("memory", "memory_bytes"))


def _exceeds(bundle: StagedBundle, shape: WorkerShape) -> tuple[str, int, int] | None:
    for resource, field in SIZES:
        asked, offered = getattr(bundle, field), getattr(shape, field)
        if asked > offered:
            return resource, asked, offered
    return None


def plain_route(
    specs: Sequence[RouteSpec],
    searched: Mapping[str, Iterable[StagedBundle]],
    availability: Mapping[str, Availability],
    filtered: Mapping[str, Iterable[FilteredBundle]],
) -> Routing:
    """The documented rules applied to one bundle at a time: the reference ``route`` must match."""
    ordered = sorted(specs, key=lambda s: s.name)
    bundles: dict[str, StagedBundle] = {}
    returned: dict[str, set[str]] = {}
    for spec in ordered:
        for bundle in searched.get(spec.name, ()):
            bundles.setdefault(bundle.uuid, bundle)
            returned.setdefault(bundle.uuid, set()).add(spec.name)
    routed: dict[str, list[StagedBundle]] = {}
    held: dict[str, list[StagedBundle]] = {}
    stranded: list[Stranded] = []
    for uuid in sorted(bundles):
        b = bundles[uuid]
        by_tag = [s for s in ordered if s.name in returned[uuid] and tag_allows(s, b)]
        if not by_tag:
            stranded.append(Stranded(uuid, Unroutable.NO_POOL_FOR_TAG))
            continue
        eligible = [s for s in by_tag if not s.prefilter or _exceeds(b, s.shape) is None]
        if not eligible:
            big = max(by_tag, key=lambda s: (s.shape.gpus, s.shape.cpus, s.shape.memory_mb))
            resource, asked, offered = _exceeds(b, big.shape) or ("cpus", 0, 0)
            stranded.append(Stranded(uuid, Unroutable.TOO_LARGE, resource, asked, offered))
            continue
        eligible.sort(key=lambda s: (-s.priority, _exceeds(b, s.shape) is not None, s.shape.gpus,
                                     s.shape.cpus, s.shape.memory_mb, s.name))  # fmt: skip
        free = [s for s in eligible if availability.get(s.name, Availability()).blocked is None]
        if free:
            routed.setdefault(free[0].name, []).append(b)
            continue
        first = eligible[0].name
        held.setdefault(first, []).append(b)
        reason = availability.get(first, Availability()).blocked or Unroutable.POOLS_AT_MAX
        stranded.append(Stranded(uuid, reason, held_by=first))
    largest: dict[str, FilteredBundle] = {}
    for name in sorted(filtered):
        for item in filtered[name]:
            best = largest.get(item.uuid)
            if item.uuid not in bundles and (best is None or item.available > best.available):
                largest[item.uuid] = item
    stranded += [
        Stranded(u, Unroutable.TOO_LARGE, i.reason, i.requested, i.available)
        for u, i in sorted(largest.items())
    ]
    return Routing(
        routed={k: tuple(v) for k, v in routed.items()},
        held={k: tuple(v) for k, v in held.items()},
        unroutable=tuple(stranded),
    )


NAMES = ["a", "b", "c", "d"]


@st.composite
def specs(draw: st.DrawFn, name: str) -> RouteSpec:
    tag = draw(st.sampled_from([None, "q"]))
    shape = WorkerShape(draw(st.integers(1, 4)), draw(st.integers(0, 1)),
                        draw(st.sampled_from([1024, 4096])))  # fmt: skip
    return RouteSpec(name, shape, tag, tag is not None and draw(st.booleans()),
                     draw(st.integers(0, 1)), draw(st.booleans()))  # fmt: skip


Inputs = tuple[
    list[RouteSpec],
    dict[str, list[StagedBundle]],
    dict[str, Availability],
    dict[str, list[FilteredBundle]],
]
# A few requests shared by many bundles, as staged bundles are in practice.
REQUESTS = st.tuples(
    st.integers(1, 5),
    st.integers(0, 2),
    st.sampled_from([GIB // 2, GIB, 4 * GIB, 8 * GIB]),
    st.sampled_from(["", "q", "z"]),
)


@st.composite
def inputs(draw: st.DrawFn) -> Inputs:
    pools = [draw(specs(n)) for n in NAMES[: draw(st.integers(1, 4))]]
    requests = draw(st.lists(REQUESTS, min_size=1, max_size=4))
    staged = [
        StagedBundle(f"0x{i:03x}", *draw(st.sampled_from(requests)))
        for i in range(draw(st.integers(0, 30)))
    ]
    searched = {
        p.name: [b for b in staged if draw(st.booleans())] * draw(st.integers(1, 2)) for p in pools
    }
    availability = {
        p.name: Availability(draw(st.booleans()), draw(st.booleans()), draw(st.booleans()))
        for p in pools
        if draw(st.booleans())
    }
    filtered = {
        p.name: [FilteredBundle(f"0x{i:03x}", "cpus", 9, draw(st.integers(1, 4)))
                 for i in range(40) if draw(st.integers(0, 9)) == 0]
        for p in pools
    }  # fmt: skip
    return pools, searched, availability, filtered


@settings(max_examples=300, deadline=None)
@given(inputs())
def test_route_is_the_rules_applied_bundle_by_bundle(case: Inputs) -> None:
    assert route(*case) == plain_route(*case)
