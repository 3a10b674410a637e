"""The bundle manager model follows the contract's rules: tags, exclusive tags, fit, quota.

Each row: the staged bundles, the workers, running runs per owner, the quota
-> the starts (bundle, worker) in order.
"""

from __future__ import annotations

import pytest

from codalab_scaler.core.model import StagedBundle
from codalab_scaler.core.supply import Capacity
from codalab_scaler.whatif.bundle_manager import Start, WorkerSlot, dispatch

G = 1024**3


def b(
    uuid: str, cpus: int = 1, gpus: int = 0, mem: int = 2, tag: str = "", owner: str = "u"
) -> StagedBundle:
    return StagedBundle(uuid, cpus, gpus, mem * G, tag, owner)


def w(
    wid: str,
    cpus: int = 4,
    gpus: int = 0,
    mem: int = 16,
    tag: str | None = None,
    *,
    exclusive: bool = False,
    has_gpus: bool | None = None,
    accepting: bool = True,
) -> WorkerSlot:
    gpu = gpus > 0 if has_gpus is None else has_gpus
    return WorkerSlot(wid, Capacity(cpus, gpus, mem * G), gpu, tag, exclusive, accepting)


# fmt: off
CASES = [
    # tags (contract section 4)
    ("tagged bundle, worker with that tag", [b("1", tag="q")], [w("A", tag="q")], {}, None, [("1", "A")]),
    ("tagged bundle, untagged worker", [b("1", tag="q")], [w("A")], {}, None, []),
    ("tagged bundle, other tag", [b("1", tag="q")], [w("A", tag="r")], {}, None, []),
    ("untagged bundle, tag-exclusive worker", [b("1")], [w("A", tag="q", exclusive=True)], {}, None, []),
    ("untagged bundle, non-exclusive tagged worker", [b("1")], [w("A", tag="q")], {}, None, [("1", "A")]),
    ("tagged bundle, its exclusive worker", [b("1", tag="q")], [w("A", tag="q", exclusive=True)], {}, None, [("1", "A")]),
    # resource fit (equality fits)
    ("exactly the free cpus", [b("1", cpus=4)], [w("A", cpus=4)], {}, None, [("1", "A")]),
    ("more cpus than free", [b("1", cpus=5)], [w("A", cpus=4)], {}, None, []),
    ("a gpu on a cpu worker", [b("1", gpus=1)], [w("A")], {}, None, []),
    ("more memory than free", [b("1", mem=17)], [w("A", mem=16)], {}, None, []),
    ("capacity taken within the pass", [b("1", cpus=3), b("2", cpus=3)], [w("A")], {}, None, [("1", "A")]),
    ("the second fits elsewhere", [b("1", cpus=3), b("2", cpus=3)], [w("A"), w("B")], {}, None, [("1", "B"), ("2", "A")]),
    ("a worker that ran its exit_after_num_runs", [b("1")], [w("A", accepting=False)], {}, None, []),
    # preference: a cpu bundle avoids gpu workers; then most free cpus
    ("cpu bundle prefers a worker without gpus", [b("1")], [w("G", cpus=8, gpus=1), w("A", cpus=2)], {}, None, [("1", "A")]),
    ("gpu bundle takes the gpu worker", [b("1", gpus=1)], [w("G", cpus=8, gpus=1), w("A")], {}, None, [("1", "G")]),
    ("most free cpus first", [b("1")], [w("A", cpus=2), w("B", cpus=3)], {}, None, [("1", "B")]),
    # the per-user parallel-run quota
    ("owner at quota", [b("1", owner="x")], [w("A")], {"x": 2}, 2, []),
    ("owner under quota", [b("1", owner="x")], [w("A")], {"x": 1}, 2, [("1", "A")]),
    ("quota counts this pass's starts", [b("1", owner="x"), b("2", owner="x"), b("3", owner="y")], [w("A")], {}, 1, [("1", "A"), ("3", "A")]),
    ("no quota", [b(str(i), owner="x") for i in range(4)], [w("A")], {"x": 50}, None, [(str(i), "A") for i in range(4)]),
    # order: staged bundles in creation order
    ("first staged first", [b("2", cpus=4), b("1", cpus=4)], [w("A")], {}, None, [("2", "A")]),
]
# fmt: on


@pytest.mark.parametrize(
    ("case", "staged", "workers", "running", "quota", "starts"), CASES, ids=[c[0] for c in CASES]
)
def test_bundle_manager(
    case: str,
    staged: list[StagedBundle],
    workers: list[WorkerSlot],
    running: dict[str, int],
    quota: int | None,
    starts: list[tuple[str, str]],
) -> None:
    assert dispatch(staged, workers, running, quota) == [Start(u, wid) for u, wid in starts]
