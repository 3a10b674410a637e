"""Faults an outside run found: a refusing token endpoint, a body that echoes the password,
and a flood of malformed bundles.  The client against the simulator, and the executable."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from codalab_scaler.core.errors import LoginRefused, RefusedError, TransientError
from codalab_scaler.simulator import CodaLabSimulator
from codalab_scaler.sources.codalab.client import TOKEN_PATH, scrub
from tests.scaler_process import Launcher, launcher
from tests.simulator_fixtures import (  # noqa: F401 - pytest finds the fixtures by name
    ClientFactory,
    SimFactory,
    client_factory_fixture,
    sim_factory_fixture,
    sim_fixture,
)

__all__ = ["launcher"]  # fixture

# Each changes under form encoding (space, &, +, %, @) or JSON escaping (", \).
AWKWARD_PASSWORDS = ["pass word", "a&b=c", "x+y", "100%sure", "me@host", 'quo"te\\slash']


def spellings(secret: str) -> set[str]:
    return {
        secret,
        urllib.parse.quote_plus(secret),
        urllib.parse.quote(secret, safe=""),
        json.dumps(secret)[1:-1],
    }


def leaked(text: str, secret: str) -> list[str]:
    return [spelling for spelling in spellings(secret) if spelling in text]


# -- 1. a token endpoint that refuses for a reason other than the password ----------------


@pytest.mark.parametrize(
    ("status", "hint"), [(403, "auth proxy or firewall"), (404, "check --server")]
)
async def test_a_refusing_token_endpoint_is_a_login_refusal_that_says_what_to_check(
    sim: CodaLabSimulator, client_factory: ClientFactory, status: int, hint: str
) -> None:
    sim.fail_next(100, status, TOKEN_PATH)
    with pytest.raises(LoginRefused) as raised:
        await client_factory(sim.url).login()
    message = str(raised.value)
    assert f"POST {sim.url}{TOKEN_PATH} answered {status}" in message
    assert hint in message
    assert "\n" not in message


async def test_the_same_refusal_later_in_the_run_is_a_failed_view(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    client = client_factory(sim.url)
    await client.fetch_staged(["state=staged"])
    sim.expire_all_tokens()
    sim.fail_next(100, 403, TOKEN_PATH)
    with pytest.raises(RefusedError):  # what the bundle poller turns into a failed view
        await client.fetch_staged(["state=staged"])


@pytest.mark.process
@pytest.mark.parametrize("status", [403, 404])
async def test_the_executable_exits_2_with_one_line_when_the_token_endpoint_refuses(
    sim: CodaLabSimulator, tmp_path: Path, launcher: Launcher, status: int
) -> None:
    sim.fail_next(100, status, TOKEN_PATH)
    scaler = await launcher(
        "--server", sim.url, "--http-port", "0", "--http-host", "127.0.0.1",
        "local", "--state-dir", str(tmp_path),
        env={"CODALAB_USERNAME": "codalab", "CODALAB_PASSWORD": "pw-for-process-tests"},
    )  # fmt: skip
    assert await scaler.exit_code() == 2
    output = "\n".join(scaler.raw)
    assert "Traceback" not in output
    errors = [line for line in scaler.lines if line.get("level") == "error"]
    assert [line["event"] for line in errors] == ["codalab.login_refused"]
    assert f"answered {status}" in errors[0]["error"]


# -- 2. a server that echoes the login form in an error body ------------------------------


def test_scrub_blanks_every_spelling_of_a_secret() -> None:
    for secret in AWKWARD_PASSWORDS:
        text = " | ".join(sorted(spellings(secret)))
        assert leaked(scrub(text, [secret]), secret) == []


@pytest.mark.parametrize("password", AWKWARD_PASSWORDS)
async def test_an_echoed_login_form_never_reaches_an_error_message(
    sim_factory: SimFactory, client_factory: ClientFactory, password: str
) -> None:
    sim = await sim_factory(users={"alice": password})
    sim.fail_next(100, 500, TOKEN_PATH, echo_body=True)
    client = client_factory(sim.url, "alice", password)
    with capture_logs() as logs, pytest.raises(TransientError) as raised:
        await client.fetch_staged(["state=staged"])
    # The server did echo it: the test would catch a leak.
    assert any(urllib.parse.quote_plus(password) in r.body for r in sim.requests)
    assert leaked(str(raised.value), password) == []
    assert leaked(repr(logs), password) == []


@pytest.mark.process
async def test_an_echoed_password_stays_out_of_the_logs_and_status(
    sim_factory: SimFactory, tmp_path: Path, launcher: Launcher
) -> None:
    password = "p@ss w+rd&100%"
    sim = await sim_factory(users={"codalab": password})
    sim.fail_next(10_000, 500, TOKEN_PATH, echo_body=True)
    scaler = await launcher(
        "--server", sim.url, "--sleep-time", "0.2", "--http-port", "0",
        "--http-host", "127.0.0.1", "--request-timeout-seconds", "2",
        "local", "--state-dir", str(tmp_path),
        env={"CODALAB_USERNAME": "codalab", "CODALAB_PASSWORD": password},
    )  # fmt: skip
    port = (await scaler.event("http.listening", within=60))["port"]
    await scaler.event("poll.failed", within=60, source="bundles")
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/status") as r:
        status = await r.text()
    assert "answered 500" in status
    assert {"codalab.login_deferred", "poll.failed"} <= {line.get("event") for line in scaler.lines}
    assert leaked(status, password) == []
    assert leaked("\n".join(scaler.raw), password) == []


# -- 3. a flood of malformed bundles ------------------------------------------------------


async def test_thousands_of_malformed_bundles_log_one_summary_per_poll(
    sim: CodaLabSimulator, client_factory: ClientFactory
) -> None:
    for i in range(996):
        sim.add_raw_bundle({"type": "bundles", "id": f"0xbad{i:04d}", "attributes": {}})
    for _ in range(10_000 - 996):
        sim.add_bundle("codalab")
    client = client_factory(sim.url)
    with capture_logs() as logs:
        parsed = await client.fetch_staged(["state=staged"])
        again = await client.fetch_staged(["state=staged"])
    assert (len(parsed.bundles), len(parsed.malformed)) == (9004, 996)
    assert len(again.malformed) == 996  # the poller's counter counts every poll exactly
    warnings = [e for e in logs if e["log_level"] in {"warning", "error"}]
    assert [e["event"] for e in warnings] == ["codalab.bundles_malformed"]
    (summary,) = warnings
    assert summary["count"] == 996
    assert len(summary["examples"]) == 5
    assert sum(summary["reasons"].values()) <= 996
