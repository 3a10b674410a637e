"""``placement.pack`` is first-fit decreasing: the same placements as the plainest version of it.

``plain_pack`` is the algorithm as first written (every bundle tries every
bin from the first); ``pack`` resumes the search for a run of equal bundles
where the previous one went.  For any bundles and workers they must agree
exactly: each bundle's bin, the new workers' count and the untouched workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from codalab_scaler.core.model import StagedBundle
from codalab_scaler.core.placement import Packing, Placement, Where, pack
from codalab_scaler.core.prefilter import WorkerShape
from codalab_scaler.core.supply import Capacity, PoolWorker, WorkerState
from tests.planner_inputs import GIB


def plain_pack(
    bundles: Iterable[StagedBundle], workers: Sequence[PoolWorker], shape: WorkerShape
) -> Packing:
    """First-fit decreasing, quadratic: the reference ``pack`` must match."""
    order = [w for w in workers if w.state is WorkerState.SERVING] + [
        w for w in workers if w.state is WorkerState.BOOTING
    ]
    bins = [(Where(w.state.value), w.job_id, w.free) for w in order]
    used = [False] * len(bins)
    existing = len(bins)
    placements: list[Placement] = []
    ranked = sorted(bundles, key=lambda b: (-b.gpus, -b.cpus, -b.memory_bytes, b.uuid))
    for bundle in ranked:
        need = (bundle.cpus, bundle.gpus, bundle.memory_bytes)
        for i, (where, worker, free) in enumerate(bins):
            if free.fits(*need):
                bins[i] = (where, worker, free.minus(*need))
                used[i] = True
                placements.append(Placement(bundle.uuid, where, worker))
                break
        else:
            label = f"new-{len(bins) - existing + 1}"
            bins.append((Where.NEW, label, Capacity.of(shape).minus(*need)))
            used.append(True)
            placements.append(Placement(bundle.uuid, Where.NEW, label))
    untouched = tuple(bins[i][1] for i in range(existing) if not used[i])
    return Packing(tuple(placements), len(bins) - existing, untouched)


# Few distinct sizes, so runs of equal bundles are common; zeros and sizes above the
# shape (the prefilter off) included.
CPUS = st.integers(0, 6)
GPUS = st.integers(0, 2)
MEMORY = st.sampled_from([0, GIB // 2, GIB, 2 * GIB, 4 * GIB, 9 * GIB])


@st.composite
def staged(draw: st.DrawFn) -> list[StagedBundle]:
    sizes = draw(st.lists(st.tuples(CPUS, GPUS, MEMORY), min_size=1, max_size=4))
    count = draw(st.integers(0, 40))
    return [StagedBundle(f"0x{i:04x}", *draw(st.sampled_from(sizes)), tag="") for i in range(count)]


@st.composite
def pool_workers(draw: st.DrawFn) -> list[PoolWorker]:
    workers = []
    for i in range(draw(st.integers(0, 12))):
        state = draw(st.sampled_from(WorkerState))
        free = Capacity(draw(CPUS), draw(GPUS), draw(MEMORY))
        if state is WorkerState.STUCK:
            free = Capacity(0, 0, 0)
        workers.append(PoolWorker(f"job{i:02d}", f"w{i}", state, free))
    return workers


SHAPES = st.builds(WorkerShape, st.integers(1, 4), st.integers(0, 1), st.sampled_from([1024, 4096]))


@settings(max_examples=400, deadline=None)
@given(staged(), pool_workers(), SHAPES)
def test_pack_is_the_plain_first_fit(
    bundles: list[StagedBundle], workers: list[PoolWorker], shape: WorkerShape
) -> None:
    assert pack(bundles, workers, shape) == plain_pack(bundles, workers, shape)


def test_a_run_of_equal_bundles_fills_each_bin_in_turn() -> None:
    shape = WorkerShape(2, 0, 4096)
    serving = PoolWorker("s", "ws", WorkerState.SERVING, Capacity(1, 0, 4 * GIB))
    booting = PoolWorker("b", "wb", WorkerState.BOOTING, Capacity(2, 0, 4 * GIB))
    bundles = [StagedBundle(f"0x{i}", 1, 0, GIB, "") for i in range(6)]
    got = pack(bundles, [booting, serving], shape)
    assert [p.worker for p in got.placements] == ["s", "b", "b", "new-1", "new-1", "new-2"]
    assert got == plain_pack(bundles, [booting, serving], shape)
