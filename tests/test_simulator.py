"""The CodaLab simulator speaks the contract: search traps, OAuth2, worker check-ins."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from codalab_scaler.simulator import CodaLabSimulator, run_bundle_stream
from tests.fakes import FakeClock
from tests.simulator_fixtures import (  # noqa: F401 - pytest finds the fixtures by name
    SimFactory,
    sim_factory_fixture,
    sim_fixture,
)

BASIC = {"Authorization": "Basic Y29kYWxhYl9jbGlfY2xpZW50Og=="}  # codalab_cli_client:
XHR = {"X-Requested-With": "XMLHttpRequest"}
PASSWORDS = {"codalab": "codalab", "alice": "alice-secret", "bob": "bob-secret"}


class Wire:
    """A thin raw-HTTP helper: each call returns (status, content type, decoded body)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def call(
        self, method: str, path: str, token: str | None = None, *, xhr: bool = True, **kw: Any
    ) -> tuple[int, str, Any]:
        headers = {**kw.pop("headers", {}), **(XHR if xhr else {})}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, self.url + path, headers=headers, allow_redirects=False, **kw
        ) as response:
            text = await response.text()
            body = await response.json() if response.content_type == "application/json" else text
            return response.status, response.content_type, body

    async def grant(self, form: dict[str, str], headers: dict[str, str] | None = None) -> Any:
        return await self.call(
            "POST", "/rest/oauth2/token", data=form, headers=BASIC if headers is None else headers
        )

    async def login(self, user: str) -> str:
        form = {"grant_type": "password", "username": user, "password": PASSWORDS[user]}
        status, _, body = await self.grant(form)
        assert status == 200
        token: str = body["access_token"]
        return token

    async def search(self, token: str | None, *keywords: str, include: str = "owner") -> Any:
        params = [("include", include)] + [("keywords", k) for k in keywords]
        return await self.call("GET", "/rest/bundles", token, params=params)

    async def uuids(self, token: str | None, *keywords: str) -> list[str]:
        status, _, body = await self.search(token, *keywords)
        assert status == 200
        return [item["id"] for item in body["data"]]

    async def checkin(self, token: str | None, worker_id: str, **fields: Any) -> Any:
        body = {"tag": "", "cpus": 1, "gpus": 0, "memory_bytes": 2 * 1024**3, "runs": []}
        body.update(fields)
        path = f"/rest/workers/{worker_id}/checkin"
        return await self.call("POST", path, token, json=body)


@pytest_asyncio.fixture(name="wire")
async def wire_fixture(sim: CodaLabSimulator) -> AsyncIterator[Wire]:
    async with aiohttp.ClientSession() as session:
        yield Wire(session, sim.url)


async def test_search_returns_ten_without_limit_and_counts(
    sim: CodaLabSimulator, wire: Wire
) -> None:
    for _ in range(15):
        sim.add_bundle("codalab")
    root = await wire.login("codalab")
    assert len(await wire.uuids(root, "state=staged")) == 10
    assert len(await wire.uuids(root, "state=staged", ".limit=15")) == 15
    status, _, body = await wire.search(root, "state=staged", ".count")
    assert (status, body) == (200, {"meta": {"result": 15}})


async def test_sort_limit_offset_page_through_in_uuid_order(
    sim: CodaLabSimulator, wire: Wire
) -> None:
    uuids = sorted(sim.add_bundle("codalab") for _ in range(7))
    root = await wire.login("codalab")
    first = await wire.uuids(root, "id=.sort", ".limit=4", ".offset=0")
    second = await wire.uuids(root, "id=.sort", ".limit=4", ".offset=4")
    assert first + second == uuids
    assert await wire.uuids(root, "id=.sort-", ".limit=2") == uuids[::-1][:2]


@pytest.mark.parametrize(
    ("keywords", "include", "message"),
    [
        ([".bogus"], "owner", "Unknown keyword"),
        ([".limit=ten"], "owner", "Invalid value"),
        (["state=staged"], "owner,friends", "Invalid include"),
    ],
)
async def test_usage_errors_are_400_in_plain_text(
    wire: Wire, keywords: list[str], include: str, message: str
) -> None:
    root = await wire.login("codalab")
    status, content_type, body = await wire.search(root, *keywords, include=include)
    assert (status, content_type) == (400, "text/html")
    assert message in body


async def test_documents_have_the_contract_shape(sim: CodaLabSimulator, wire: Wire) -> None:
    uuid = sim.add_bundle("alice", cpus=2, memory="3g", queue="tag=cpuq", duration=3)
    root = await wire.login("codalab")
    status, content_type, body = await wire.search(root, "state=staged")
    assert (status, content_type) == (200, "application/json")
    (item,) = body["data"]
    assert item["type"] == "bundles"
    assert item["id"] == uuid
    assert item["attributes"]["uuid"] == uuid
    assert item["attributes"]["bundle_type"] == "run"
    assert item["attributes"]["state"] == "staged"
    metadata = item["attributes"]["metadata"]
    assert metadata["request_cpus"] == 2
    assert metadata["request_memory"] == "3g"
    assert metadata["request_queue"] == "tag=cpuq"
    assert metadata["request_time"] == "3s"
    assert item["relationships"]["owner"]["data"] == {"type": "users", "id": "1"}
    assert [(u["id"], u["attributes"]["user_name"]) for u in body["included"]] == [("1", "alice")]
    status, _, empty = await wire.search(root, "state=ready")
    assert (status, empty["data"], empty["included"]) == (200, [], [])


async def test_a_bad_token_is_served_as_anonymous(sim: CodaLabSimulator, wire: Wire) -> None:
    public = sim.add_bundle("bob", public=True)
    sim.add_bundle("alice")
    for token in (None, "expired-or-made-up"):
        assert await wire.uuids(token, "state=staged", ".mine") == []
        assert await wire.uuids(token, "state=staged") == [public]
    alice = await wire.login("alice")
    sim.expire_all_tokens()
    assert await wire.uuids(alice, "state=staged", ".mine") == []


async def test_mine_and_visibility(sim: CodaLabSimulator, wire: Wire) -> None:
    alices = sim.add_bundle("alice")
    bobs = sim.add_bundle("bob")
    alice, root = await wire.login("alice"), await wire.login("codalab")
    assert await wire.uuids(alice, "state=staged", ".mine") == [alices]
    assert await wire.uuids(alice, "state=staged") == [alices]
    assert set(await wire.uuids(root, "state=staged")) == {alices, bobs}
    assert await wire.uuids(root, "state=staged", ".mine") == []


async def test_comma_values_are_a_set_and_metadata_compares_as_text(
    sim: CodaLabSimulator, wire: Wire
) -> None:
    plain = sim.add_bundle(queue="gpuq")
    prefixed = sim.add_bundle(queue="tag=gpuq", gpus=1)
    sim.add_bundle(queue="cpuq")
    sim.add_bundle()
    root = await wire.login("codalab")
    assert set(await wire.uuids(root, "request_queue=gpuq,tag=gpuq")) == {plain, prefixed}
    assert await wire.uuids(root, "request_queue=gpuq,tag=gpuq", "request_gpus=0") == [plain]
    assert len(await wire.uuids(root, "name=run-.*")) == 4


async def test_token_endpoint_grants_and_errors(wire: Wire) -> None:
    status, _, body = await wire.grant(
        {"grant_type": "password", "username": "alice", "password": "nope"}
    )
    assert (status, body["error"]) == (401, "invalid_grant")
    password = {"grant_type": "password", "username": "alice", "password": "alice-secret"}
    status, _, body = await wire.grant(password, headers={})
    assert (status, body) == (
        401,
        {"error": "invalid_client", "error_description": "invalid_client"},
    )
    status, _, body = await wire.grant({**password, "client_id": "codalab_cli_client"}, headers={})
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600.0
    refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    status, _, _ = await wire.grant(refresh, headers={})
    assert status == 401
    status, _, renewed = await wire.grant(refresh)
    assert status == 200
    assert renewed["access_token"] != body["access_token"]
    status, _, again = await wire.grant(refresh)
    assert (status, again["error"]) == (401, "invalid_grant")


async def test_workers_info_needs_a_token(wire: Wire) -> None:
    status, content_type, _ = await wire.call("GET", "/rest/workers/info", "made-up")
    assert (status, content_type) == (401, "text/html")
    status, _, _ = await wire.call("GET", "/rest/workers/info", "made-up", xhr=False)
    assert status == 303
    status, _, _ = await wire.checkin(None, "w1")
    assert status == 401


WORKER = {"tag": "", "tag_exclusive": False, "cpus": 1, "gpus": 0, "memory_bytes": 2 * 1024**3}


@pytest.mark.parametrize(
    ("bundle", "worker", "user", "assigned"),
    [
        ({}, {}, "codalab", True),
        ({}, {"tag": "cpuq"}, "codalab", True),
        ({}, {"tag": "cpuq", "tag_exclusive": True}, "codalab", False),
        ({"queue": "gpuq"}, {}, "codalab", False),
        ({"queue": "gpuq"}, {"tag": "cpuq"}, "codalab", False),
        ({"queue": "gpuq"}, {"tag": "gpuq", "tag_exclusive": True}, "codalab", True),
        ({"queue": "tag=gpuq"}, {"tag": "gpuq"}, "codalab", True),
        ({"cpus": 2}, {}, "codalab", False),
        ({"cpus": 2}, {"cpus": 2}, "codalab", True),
        ({"gpus": 1}, {}, "codalab", False),
        ({"memory": "4g"}, {}, "codalab", False),
        ({"memory": "2048m"}, {}, "codalab", True),
        ({"owner": "bob"}, {}, "alice", False),
        ({"owner": "alice"}, {}, "alice", True),
        ({"owner": "bob"}, {}, "codalab", True),
        ({}, {"exit_after_num_runs": 0}, "codalab", False),
    ],
)
async def test_checkin_assignment_rules(
    sim: CodaLabSimulator,
    wire: Wire,
    bundle: dict[str, Any],
    worker: dict[str, Any],
    user: str,
    assigned: bool,
) -> None:
    uuid = sim.add_bundle(bundle.pop("owner", "codalab"), **bundle)
    status, _, answer = await wire.checkin(await wire.login(user), "w1", **{**WORKER, **worker})
    assert status == 200
    if not assigned:
        assert answer is None
        assert sim.bundles_in_state("staged") == [uuid]
        return
    assert answer["type"] == "run"
    assert answer["bundle"]["uuid"] == uuid
    assert set(answer["bundle"]) == {"uuid", "command", "metadata"}
    assert set(answer["resources"]) == {"cpus", "gpus", "memory"}
    assert sim.bundles_in_state("running") == [uuid]
    assert sim.workers["w1"].run_uuids == [uuid]


async def test_capacity_and_finished_runs(sim: CodaLabSimulator, wire: Wire) -> None:
    first, second, third = (sim.add_bundle(memory="1g") for _ in range(3))
    root = await wire.login("codalab")
    answers = [(await wire.checkin(root, "w1", cpus=2))[2] for _ in range(3)]
    assert [a["bundle"]["uuid"] if a else None for a in answers] == [first, second, None]
    _, _, info = await wire.call("GET", "/rest/workers/info", root)
    (view,) = info["data"]
    assert view["run_uuids"] == [first, second]
    assert view["cpus_in_use"] == 2
    done = [{"bundle_uuid": first, "state": "finished"}]
    _, _, answer = await wire.checkin(root, "w1", cpus=2, runs=done)
    assert answer["bundle"]["uuid"] == third
    assert sim.bundles_in_state("ready") == [first]


async def test_workers_info_lists_the_callers_workers(wire: Wire) -> None:
    alice, bob, root = [await wire.login(u) for u in ("alice", "bob", "codalab")]
    await wire.checkin(alice, "wa", tag="gpuq")
    await wire.checkin(bob, "wb")
    _, _, mine = await wire.call("GET", "/rest/workers/info", alice)
    assert [(w["worker_id"], w["tag"], w["run_uuids"]) for w in mine["data"]] == [
        ("wa", "gpuq", [])
    ]
    assert isinstance(mine["data"][0]["checkin_time"], int)  # epoch seconds, as the contract
    _, _, everyone = await wire.call("GET", "/rest/workers/info", root)
    assert {w["worker_id"] for w in everyone["data"]} == {"wa", "wb"}


async def test_a_silent_worker_is_forgotten_and_its_runs_restaged(
    sim_factory: SimFactory,
) -> None:
    clock = FakeClock()
    sim = await sim_factory(clock=clock, worker_timeout=60.0)
    uuid = sim.add_bundle()
    async with aiohttp.ClientSession() as session:
        wire = Wire(session, sim.url)
        root = await wire.login("codalab")
        await wire.checkin(root, "w1")
        clock.advance(60)
        assert sim.bundles_in_state("running") == [uuid]
        clock.advance(1)
        _, _, info = await wire.call("GET", "/rest/workers/info", root)
    assert info["data"] == []
    assert sim.workers == {}
    assert sim.bundles_in_state("staged") == [uuid]


async def test_a_terminating_worker_is_removed(sim: CodaLabSimulator, wire: Wire) -> None:
    running, finished = sim.add_bundle(memory="1g"), sim.add_bundle(memory="1g")
    root = await wire.login("codalab")
    await wire.checkin(root, "w1", cpus=2)
    await wire.checkin(root, "w1", cpus=2)
    done = [{"bundle_uuid": finished, "state": "finished"}]
    _, _, answer = await wire.checkin(root, "w1", is_terminating=True, runs=done)
    assert answer is None
    assert sim.workers == {}
    assert sim.bundles_in_state("staged") == [running]
    assert sim.bundles_in_state("ready") == [finished]


async def test_a_checkin_of_the_wrong_shape_is_400(wire: Wire) -> None:
    root = await wire.login("codalab")
    status, content_type, _ = await wire.checkin(root, "w1", cpus="many")
    assert (status, content_type) == (400, "text/html")


async def test_injected_failures_and_delays_hit_matching_paths_only(
    sim: CodaLabSimulator, wire: Wire
) -> None:
    sim.fail_next(1, 502, "/rest/bundles")
    sim.delay_next(1, 0.05, "/rest/workers/")
    root = await wire.login("codalab")
    status, content_type, body = await wire.search(root)
    assert (status, content_type) == (502, "text/html")
    assert "Unexpected Internal Error" in body
    assert (await wire.search(root))[0] == 200
    assert (await wire.call("GET", "/rest/workers/info", root))[0] == 200
    assert [r.path for r in sim.requests] == [
        "/rest/oauth2/token", "/rest/bundles", "/rest/bundles", "/rest/workers/info",
    ]  # fmt: skip


async def test_bundle_stream_adds_the_total(sim: CodaLabSimulator) -> None:
    rng = random.Random(7)
    await asyncio.wait_for(
        run_bundle_stream(sim, rate_per_minute=60000, total=3, rng=rng, duration_range=(1, 2)),
        timeout=5,
    )
    staged = sim.bundles_in_state("staged")
    assert len(staged) == 3
    for uuid in staged:
        assert 1 <= float(str(sim.bundle(uuid).metadata["request_time"]).rstrip("s")) <= 2


def test_a_bundle_with_an_unreadable_memory_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a size"):
        CodaLabSimulator().add_bundle(memory="lots")


async def test_recorded_requests_are_bounded(sim_factory: SimFactory) -> None:
    sim = await sim_factory(record_limit=4)
    async with aiohttp.ClientSession() as session:
        wire = Wire(session, sim.url)
        for index in range(7):
            await wire.call("GET", "/rest/bundles", params=[("keywords", f"name=n{index}")])
    assert 2 <= len(sim.requests) <= 4
    assert sim.requests[-1].keywords == ["name=n6"]


async def test_an_exited_worker_stays_listed_and_dispatches_to_it_fail(
    sim_factory: SimFactory,
) -> None:
    """CodaLab 1.7.5: a worker that left without checking out is listed for 60 s and tried."""
    clock = FakeClock()
    sim = await sim_factory(clock=clock, worker_timeout=60.0)
    async with aiohttp.ClientSession() as session:
        wire = Wire(session, sim.url)
        root = await wire.login("codalab")
        await wire.checkin(root, "gone")
        clock.advance(1)
        await wire.checkin(root, "gone")  # checks in every second, then exits
        clock.advance(10)
        uuid = sim.add_bundle()
        _, _, info = await wire.call("GET", "/rest/workers/info", root)
        assert [w["worker_id"] for w in info["data"]] == ["gone"]
        assert sim.failed_dispatches == 1  # that request's round tried the exited worker
        # A live, larger worker: the manager prefers the smaller (exited) one and loses
        # DISPATCH_LOSS on it each time, so the run waits for as long as that one is listed.
        answer = None
        for _ in range(60):
            clock.advance(1.5)
            answer = (await wire.checkin(root, "live", cpus=2))[2]
            if answer is not None:
                break
    assert answer is not None
    assert answer["bundle"]["uuid"] == uuid
    assert list(sim.workers) == ["live"]
    assert sim.runs_by_worker == {"gone": 0, "live": 1}
    started, staged = sim.bundle(uuid).started_at, sim.bundle(uuid).staged_at
    assert started == clock.now
    assert 60 < started - (staged - 10) <= 61.5  # picked up once "gone" was forgotten
    assert sim.failed_dispatches >= 25


async def test_a_run_dispatched_to_a_worker_that_stops_checking_in_is_restaged(
    sim_factory: SimFactory,
) -> None:
    clock = FakeClock()
    sim = await sim_factory(clock=clock)
    first, second = sim.add_bundle(memory="1g"), sim.add_bundle(memory="1g")
    async with aiohttp.ClientSession() as session:
        wire = Wire(session, sim.url)
        root = await wire.login("codalab")
        _, _, answer = await wire.checkin(root, "w1", cpus=2)
        assert answer["bundle"]["uuid"] == first
        assert sim.bundles_in_state("starting") == [second]  # handed over at the next check-in
        clock.advance(4.5)  # silent for twice the gap assumed after one check-in: it exited
        await wire.call("GET", "/rest/workers/info", root)
    assert sim.bundles_in_state("staged") == [second]
    assert sim.failed_dispatches == 1


async def test_a_user_at_their_parallel_run_quota_stays_staged(sim_factory: SimFactory) -> None:
    sim = await sim_factory(run_quotas={"alice": 1})
    a1, a2 = sim.add_bundle("alice", memory="1g"), sim.add_bundle("alice", memory="1g")
    bob = sim.add_bundle("bob", memory="1g")
    async with aiohttp.ClientSession() as session:
        wire = Wire(session, sim.url)
        root = await wire.login("codalab")
        answers = [(await wire.checkin(root, "w1", cpus=4))[2] for _ in range(3)]
        assert [a["bundle"]["uuid"] if a else None for a in answers] == [a1, bob, None]
        assert sim.bundles_in_state("staged") == [a2]
        # Alice's own worker is not bound by the quota of the root user's workers.
        _, _, answer = await wire.checkin(await wire.login("alice"), "wa")
    assert answer["bundle"]["uuid"] == a2


@pytest.mark.parametrize(
    ("first", "second", "bundle", "chosen"),
    [
        ({"gpus": 1}, {}, {}, "w2"),  # a CPU bundle avoids a GPU worker
        ({}, {"gpus": 1}, {"gpus": 1}, "w2"),  # unless it needs the GPU
        ({"cpus": 4}, {"cpus": 2}, {}, "w2"),  # the smallest worker first
        ({"cpus": 2}, {"cpus": 4}, {}, "w1"),
    ],
)
async def test_the_bundle_manager_prefers_workers_as_codalab_does(
    sim: CodaLabSimulator,
    wire: Wire,
    first: dict[str, Any],
    second: dict[str, Any],
    bundle: dict[str, Any],
    chosen: str,
) -> None:
    root = await wire.login("codalab")
    await wire.checkin(root, "w1", **first)
    await wire.checkin(root, "w2", **second)
    uuid = sim.add_bundle(**bundle)
    await wire.call("GET", "/rest/workers/info", root)  # any request runs a round
    assert (sim.bundle(uuid).state, sim.bundle(uuid).worker_id) == ("starting", chosen)
    _, _, answer = await wire.checkin(root, chosen, **(first if chosen == "w1" else second))
    assert answer["bundle"]["uuid"] == uuid


async def test_the_bundle_manager_prefers_the_worker_with_fewer_runs(
    sim: CodaLabSimulator, wire: Wire
) -> None:
    root = await wire.login("codalab")
    busy = sim.add_bundle(memory="1g")
    await wire.checkin(root, "w1", cpus=2)  # takes it
    await wire.checkin(root, "w2", cpus=2)
    assert sim.bundle(busy).worker_id == "w1"
    uuid = sim.add_bundle(memory="1g")
    await wire.call("GET", "/rest/workers/info", root)
    assert sim.bundle(uuid).worker_id == "w2"
