"""The CodaLab client against the simulator: wire format, paging, tokens and failures."""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl

import aiohttp
import pytest
from structlog.testing import capture_logs

from codalab_scaler.core.errors import LoginRefused, RefusedError, TransientError
from codalab_scaler.simulator import CodaLabSimulator, RecordedRequest
from codalab_scaler.sources.codalab import CodaLabClient, Credentials, staged_keywords
from tests.defaults import retry_policy
from tests.fakes import FakeClock
from tests.simulator_fixtures import (  # noqa: F401 - pytest finds the fixtures by name
    USERS,
    ClientFactory,
    SimFactory,
    client_factory_fixture,
    sim_factory_fixture,
    sim_fixture,
)

BASIC = "Basic " + base64.b64encode(b"codalab_cli_client:").decode()
STAGED_MINE = ["state=staged", ".mine"]


def token_requests(sim: CodaLabSimulator) -> list[RecordedRequest]:
    return [r for r in sim.requests if r.path == "/rest/oauth2/token"]


def grants(sim: CodaLabSimulator) -> list[str]:
    return [dict(parse_qsl(r.body))["grant_type"] for r in token_requests(sim)]


def searches(sim: CodaLabSimulator) -> list[RecordedRequest]:
    return [r for r in sim.requests if r.path == "/rest/bundles"]


def bearer_tokens(sim: CodaLabSimulator) -> set[str]:
    return {
        r.headers["authorization"].removeprefix("Bearer ")
        for r in sim.requests
        if r.headers.get("authorization", "").startswith("Bearer ")
    }


def test_credentials_never_show_the_password() -> None:
    credentials = Credentials("alice", "alice-secret")
    assert "alice-secret" not in repr(credentials)
    assert "alice-secret" not in str(credentials)


@pytest.mark.parametrize(
    ("username", "search", "tag", "exclusive", "expected"),
    [
        ("alice", [], None, False, ["state=staged", ".mine"]),
        ("codalab", [], None, False, ["state=staged"]),
        ("alice", ["request_gpus=0", "name=x"], None, False,
         ["state=staged", "request_gpus=0", "name=x", ".mine"]),
        ("alice", [], "gpuq", False, ["state=staged", ".mine"]),
        ("alice", [], None, True, ["state=staged", ".mine"]),
        ("alice", ["a=b"], "gpuq", True,
         ["state=staged", "a=b", ".mine", "request_queue=gpuq,tag=gpuq"]),
        ("codalab", [], "cpuq", True, ["state=staged", "request_queue=cpuq,tag=cpuq"]),
    ],
)  # fmt: skip
def test_staged_keywords_match_the_original(
    username: str, search: list[str], tag: str | None, exclusive: bool, expected: list[str]
) -> None:
    assert staged_keywords(username, search, tag, tag_exclusive=exclusive) == expected


async def test_login_is_a_password_grant_with_the_client_header(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    await client_factory(sim.url, "alice").login()
    (request,) = sim.requests
    assert (request.method, request.path) == ("POST", "/rest/oauth2/token")
    assert request.headers["authorization"] == BASIC
    assert request.headers["x-requested-with"] == "XMLHttpRequest"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qsl(request.body) == [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "alice-secret"),
    ]


async def test_wrong_password_is_refused_without_retrying(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    client = client_factory(sim.url, "alice", password="not-it")
    with pytest.raises(LoginRefused) as raised:
        await client.fetch_staged(STAGED_MINE)
    assert "not-it" not in str(raised.value)
    assert len(sim.requests) == 1


async def test_keywords_are_sent_repeated_in_the_original_order(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    mine = {sim.add_bundle("alice", queue="gpuq"), sim.add_bundle("alice", queue="tag=gpuq")}
    sim.add_bundle("alice", queue="cpuq")
    sim.add_bundle("alice", queue="gpuq", gpus=1)
    sim.add_bundle("alice")
    sim.add_bundle("bob", queue="gpuq")
    keywords = staged_keywords("alice", ["request_gpus=0"], "gpuq", tag_exclusive=True)
    client = client_factory(sim.url, "alice")

    parsed = await client.fetch_staged(keywords)

    assert {b.uuid for b in parsed.bundles} == mine
    assert {b.owner for b in parsed.bundles} == {"alice"}
    (search,) = searches(sim)
    assert search.keywords == [
        "state=staged", "request_gpus=0", ".mine", "request_queue=gpuq,tag=gpuq",
        "id=.sort", ".limit=500", ".offset=0",
    ]  # fmt: skip
    assert [(k, v) for k, v in search.query if k != "keywords"] == [("include", "owner")]
    assert all(r.headers.get("x-requested-with") == "XMLHttpRequest" for r in sim.requests)
    others = [r for r in sim.requests if r.path != "/rest/oauth2/token"]
    assert {r.path for r in others} == {"/rest/bundles", "/rest/workers/info"}
    assert all(r.headers["authorization"].startswith("Bearer ") for r in others)


async def test_the_root_user_sends_no_mine_and_sees_everybody(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    uuids = {sim.add_bundle("alice"), sim.add_bundle("bob"), sim.add_bundle("codalab")}
    client = client_factory(sim.url, "codalab")
    parsed = await client.fetch_staged(staged_keywords("codalab", [], None, tag_exclusive=False))
    assert {b.uuid for b in parsed.bundles} == uuids
    assert ".mine" not in searches(sim)[0].keywords


async def test_paging_sees_every_bundle_past_the_default_ten(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    uuids = {sim.add_bundle("codalab") for _ in range(1234)}
    client = client_factory(sim.url, "codalab", page_size=500)

    parsed = await client.fetch_staged(["state=staged"])

    assert len(parsed.bundles) == 1234
    assert {b.uuid for b in parsed.bundles} == uuids
    pages = searches(sim)
    assert [p.keywords[1:] for p in pages] == [
        ["id=.sort", ".limit=500", f".offset={offset}"] for offset in (0, 500, 1000)
    ]


async def test_a_last_page_that_is_exactly_full_costs_one_empty_page(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    for _ in range(20):
        sim.add_bundle("codalab")
    client = client_factory(sim.url, "codalab", page_size=10)
    parsed = await client.fetch_staged(["state=staged"])
    assert len(parsed.bundles) == 20
    assert len(searches(sim)) == 3


async def test_the_token_is_refreshed_before_it_expires(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    clock = FakeClock()
    sim = await sim_factory(token_ttl=100.0, clock=clock)
    uuid = sim.add_bundle("alice")
    client = client_factory(sim.url, "alice", clock=clock)
    await client.fetch_staged(STAGED_MINE)
    clock.advance(40)  # 60 s left: more than min(600, 100 / 2)
    await client.fetch_staged(STAGED_MINE)
    assert grants(sim) == ["password"]

    clock.advance(20)  # 40 s left
    with capture_logs() as logs:
        parsed = await client.fetch_staged(STAGED_MINE)

    assert grants(sim) == ["password", "refresh_token"]
    assert token_requests(sim)[-1].headers["authorization"] == BASIC
    assert [b.uuid for b in parsed.bundles] == [uuid]
    assert "codalab.token_refreshed" in [entry["event"] for entry in logs]


async def test_a_refused_refresh_falls_back_to_a_password_login(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    clock = FakeClock()
    sim = await sim_factory(token_ttl=100.0, clock=clock)
    uuid = sim.add_bundle("alice")
    client = client_factory(sim.url, "alice", clock=clock)
    await client.login()
    sim.expire_all_tokens()
    clock.advance(70)
    parsed = await client.fetch_staged(STAGED_MINE)
    assert grants(sim) == ["password", "refresh_token", "password"]
    assert [b.uuid for b in parsed.bundles] == [uuid]


async def test_expired_token_trap_never_reads_as_no_bundles(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    uuids = {sim.add_bundle("alice") for _ in range(3)}
    client = client_factory(sim.url, "alice")
    assert {b.uuid for b in (await client.fetch_staged(STAGED_MINE)).bundles} == uuids

    sim.expire_all_tokens()
    with capture_logs() as logs:
        parsed = await client.fetch_staged(STAGED_MINE)

    assert {b.uuid for b in parsed.bundles} == uuids
    assert grants(sim) == ["password", "password"]
    assert "codalab.token_rejected" in [entry["event"] for entry in logs]


async def test_expired_token_trap_for_root_is_not_the_public_view(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    public = {sim.add_bundle("bob", public=True) for _ in range(2)}
    private = {sim.add_bundle("alice") for _ in range(3)}
    client = client_factory(sim.url, "codalab")
    await client.login()
    sim.expire_all_tokens()
    parsed = await client.fetch_staged(["state=staged"])
    assert {b.uuid for b in parsed.bundles} == public | private


async def test_a_token_rejected_twice_is_a_transient_error(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    sim.fail_next(2, 401, "/rest/workers/info")
    with pytest.raises(TransientError):
        await client_factory(sim.url, "alice").fetch_staged(STAGED_MINE)
    assert grants(sim) == ["password", "password"]


async def test_malformed_bundles_are_skipped_and_logged(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    good = sim.add_bundle("codalab", cpus=None, memory="")
    sim.add_raw_bundle({"type": "bundles", "id": "0xbad", "attributes": {"metadata": 5}})
    client = client_factory(sim.url)
    with capture_logs() as logs:
        parsed = await client.fetch_staged(["state=staged"])
        again = await client.fetch_staged(["state=staged"])  # warned once, not every poll
    assert again == parsed
    assert [(b.uuid, b.cpus, b.memory_bytes) for b in parsed.bundles] == [(good, 1, 2 * 1024**3)]
    assert [(m.uuid, m.reason) for m in parsed.malformed] == [
        ("0xbad", "metadata is not an object")
    ]
    malformed = [e for e in logs if e["event"] == "codalab.bundles_malformed"]
    assert [(e["count"], e["examples"]) for e in malformed] == [
        (1, [{"uuid": "0xbad", "reason": "metadata is not an object"}])
    ]


@pytest.mark.parametrize("status", [500, 502, 429])
async def test_a_server_error_then_success_is_retried_and_counted(
    sim: CodaLabSimulator, client_factory: ClientFactory, status: int
) -> None:
    uuid = sim.add_bundle("codalab")
    retries: list[tuple[str, BaseException]] = []
    client = client_factory(sim.url, on_retry=lambda source, exc: retries.append((source, exc)))
    sim.fail_next(2, status, "/rest/bundles")
    parsed = await client.fetch_staged(["state=staged"])
    assert [b.uuid for b in parsed.bundles] == [uuid]
    assert [source for source, _ in retries] == ["codalab", "codalab"]
    assert all(isinstance(exc, TransientError) and str(status) in str(exc) for _, exc in retries)


async def test_persistent_server_errors_give_up_after_bounded_attempts(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    client = client_factory(sim.url, "alice")
    sim.fail_next(100, 503, "/rest/bundles")
    with pytest.raises(TransientError) as raised:
        await client.fetch_staged(STAGED_MINE)
    assert "503" in str(raised.value)
    assert len(searches(sim)) == 3
    for secret in {USERS["alice"], *bearer_tokens(sim)}:
        assert secret not in str(raised.value)


async def test_a_login_against_a_failing_server_is_transient(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    sim.fail_next(100, 500, "/rest/oauth2/token")
    with pytest.raises(TransientError):
        await client_factory(sim.url, "alice").login()
    assert len(token_requests(sim)) == 3


async def test_a_slow_answer_times_out_and_is_retried(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    uuid = sim.add_bundle("codalab")
    retries: list[BaseException] = []
    client = client_factory(
        sim.url, request_timeout=0.3, on_retry=lambda _source, exc: retries.append(exc)
    )
    await client.login()
    sim.delay_next(1, 1.0, "/rest/bundles")
    parsed = await client.fetch_staged(["state=staged"])
    assert [b.uuid for b in parsed.bundles] == [uuid]
    assert len(retries) == 1
    assert "timed out" in str(retries[0])


async def test_a_bad_request_is_refused_without_retrying(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    client = client_factory(sim.url)
    sim.fail_next(1, 400, "/rest/bundles")
    with pytest.raises(RefusedError) as raised:
        await client.fetch_staged(["state=staged"])
    assert "400" in str(raised.value)
    assert len(searches(sim)) == 1


async def test_an_unknown_keyword_is_refused(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    with pytest.raises(RefusedError, match="Unknown keyword"):
        await client_factory(sim.url).fetch_staged(["state=staged", ".bogus"])


async def test_connection_refused_is_transient(
    sim_factory: SimFactory, client_factory: ClientFactory
) -> None:
    sim = await sim_factory()
    url = sim.url
    await sim.stop()
    retries: list[BaseException] = []
    client = client_factory(url, on_retry=lambda _source, exc: retries.append(exc))
    with pytest.raises(TransientError):
        await client.fetch_staged(["state=staged"])
    assert len(retries) == 2


async def test_logs_never_carry_the_password_or_a_token(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    sim.add_bundle("alice")
    sim.add_raw_bundle({"id": "0xbad"})
    client = client_factory(sim.url, "alice")
    with capture_logs() as logs:
        await client.fetch_staged(STAGED_MINE)
        sim.expire_all_tokens()
        await client.fetch_staged(STAGED_MINE)
    assert {"codalab.login", "codalab.token_rejected"} <= {e["event"] for e in logs}
    text = repr(logs)
    for secret in {USERS["alice"], *bearer_tokens(sim)}:
        assert secret not in text


async def test_a_borrowed_session_is_left_open(sim: CodaLabSimulator) -> None:
    async with aiohttp.ClientSession() as session:
        client = CodaLabClient(
            sim.url,
            Credentials("codalab", "codalab"),
            session=session,
            request_timeout=30,
            retry=retry_policy(),
        )
        await client.login()
        await client.aclose()
        assert not session.closed


async def test_a_malformed_bundle_is_warned_once_per_search_with_several_pools(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    """One client serves every pool; one pool's search must not reset another's memory."""
    bad = {"type": "bundles", "id": "0xbad", "attributes": {"metadata": 5}}
    sim.add_raw_bundle(bad, only_in="gpu")
    client = client_factory(sim.url)
    with capture_logs() as logs:
        for _ in range(3):  # pool a's search sees the bad bundle, pool b's does not
            assert (await client.fetch_staged(["state=staged", "gpu"])).malformed
            assert not (await client.fetch_staged(["state=staged"])).malformed
    malformed = [e for e in logs if e["event"] == "codalab.bundles_malformed"]
    assert [[x["uuid"] for x in e["examples"]] for e in malformed] == [["0xbad"]]
