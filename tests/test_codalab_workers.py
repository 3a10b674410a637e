"""workers/info: the client reads the simulator's check-ins; bad entries are set aside."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from codalab_scaler.core.model import RegisteredWorker
from codalab_scaler.simulator import CodaLabSimulator
from codalab_scaler.sources.codalab.jsonapi import MalformedResponse
from codalab_scaler.sources.codalab.workers import parse_workers
from tests.simulator_fixtures import (  # noqa: F401 - pytest finds the fixtures by name
    ClientFactory,
    client_factory_fixture,
    sim_factory_fixture,
    sim_fixture,
)

GIB = 1 << 30


async def test_the_client_reads_the_check_ins(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    sim._registry.checkin("host-abc", "alice", {"cpus": 2, "gpus": 1, "memory_bytes": 4 * GIB})
    sim._registry.checkin("host-bob", "bob", {"cpus": 1, "memory_bytes": GIB})
    parsed = await client_factory(sim.url, "alice").fetch_workers()
    assert [(w.worker_id, w.cpus, w.gpus, w.memory_bytes, w.idle) for w in parsed.workers] == [
        ("host-abc", 2, 1, 4 * GIB, True)
    ]
    everybody = await client_factory(sim.url, "codalab").fetch_workers()
    assert sorted(w.worker_id for w in everybody.workers) == ["host-abc", "host-bob"]


def test_malformed_entries_are_skipped_with_a_reason() -> None:
    good = {"worker_id": "h-1", "cpus": 1, "memory_bytes": 5, "run_uuids": ["0x1"], "tag": ""}
    parsed = parse_workers(
        {"data": [good, {"cpus": 1}, {"worker_id": "h-2", "cpus": "x", "memory_bytes": 1}, 7]}
    )
    assert parsed.workers == (RegisteredWorker("h-1", 1, 0, 5, run_uuids=("0x1",)),)
    assert [(m.worker_id, m.reason) for m in parsed.malformed] == [
        (None, "worker_id is not a string"),
        ("h-2", "cpus is not a non-negative integer"),
        (None, "entry is not an object"),
    ]


@pytest.mark.parametrize("document", [[], {"data": {}}, {"nodata": []}])
def test_a_document_of_the_wrong_shape_is_a_transient_error(document: object) -> None:
    with pytest.raises(MalformedResponse):
        parse_workers(document)


async def test_the_client_warns_for_each_malformed_entry(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    sim._registry.checkin("host-abc", "alice", {"cpus": 2, "memory_bytes": GIB})
    sim._registry.workers["host-abc"].cpus = -1
    with capture_logs() as logs:
        parsed = await client_factory(sim.url, "alice").fetch_workers()
    assert parsed.workers == ()
    assert [(e["event"], e["worker_id"]) for e in logs if e["log_level"] == "warning"] == [
        ("codalab.worker_malformed", "host-abc")
    ]


async def test_checking_out_a_worker_makes_codalab_forget_it_and_restage_its_runs(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    uuid = sim.add_bundle("alice", cpus=1, memory="1g")
    sim._registry.checkin("host-abc", "alice", {"cpus": 2, "memory_bytes": 4 * GIB})
    sim._registry.checkin("host-bob", "bob", {"cpus": 1, "memory_bytes": GIB})
    assert sim.bundle(uuid).state == "running"  # on host-abc, which then exits
    alice = client_factory(sim.url, "alice")
    await alice.checkout_worker("host-abc")
    await alice.checkout_worker("host-bob")  # another user's: CodaLab leaves it alone
    await alice.checkout_worker("host-gone")  # not listed: a no-op, as worker_cleanup
    assert sim.checkouts == ["host-abc", "host-bob", "host-gone"]
    assert sorted(sim.workers) == ["host-bob"]
    assert sim.bundle(uuid).state == "staged"
    assert (await alice.fetch_workers()).workers == ()
