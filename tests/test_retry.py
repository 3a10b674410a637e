from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

import pytest

from codalab_scaler.core.errors import RefusedError, TransientError
from codalab_scaler.sources.retry import RetryPolicy, call_with_retry, parse_retry_after

FAST = RetryPolicy(max_attempts=4, max_seconds=5, initial_backoff=0.001, max_backoff=0.002)


class Flaky:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


async def test_transient_errors_are_retried_and_counted() -> None:
    seen: list[str] = []
    fn = Flaky(2, TransientError("503"))
    assert await call_with_retry("codalab", fn, FAST, lambda s, e: seen.append(f"{s}:{e}")) == "ok"
    assert fn.calls == 3
    assert seen == ["codalab:503", "codalab:503"]


async def test_attempts_are_bounded_and_the_last_error_propagates() -> None:
    fn = Flaky(10, TransientError("still down"))
    with pytest.raises(TransientError, match="still down"):
        await call_with_retry("codalab", fn, FAST)
    assert fn.calls == 4


async def test_total_time_is_bounded() -> None:
    policy = RetryPolicy(
        max_attempts=1000, max_seconds=0.05, initial_backoff=0.01, max_backoff=0.01
    )
    fn = Flaky(10_000, TransientError("down"))
    with pytest.raises(TransientError):
        await call_with_retry("codalab", fn, policy)
    assert 2 <= fn.calls < 100


@pytest.mark.parametrize("error", [RefusedError("no"), ValueError("bug")])
async def test_other_errors_are_not_retried(error: Exception) -> None:
    fn = Flaky(1, error)
    with pytest.raises(type(error)):
        await call_with_retry("codalab", fn, FAST)
    assert fn.calls == 1


async def test_retry_after_is_waited_for() -> None:
    fn = Flaky(1, TransientError("429", retry_after=0.3))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await call_with_retry("azure", fn, FAST) == "ok"
    assert loop.time() - started >= 0.3
    assert fn.calls == 2


async def test_retry_after_past_the_budget_gives_up_at_once() -> None:
    fn = Flaky(1, TransientError("429", retry_after=60))
    with pytest.raises(TransientError, match="429"):
        await call_with_retry("azure", fn, FAST)
    assert fn.calls == 1


# -- Retry-After ------------------------------------------------------------------------

BUDGET = RetryPolicy(max_attempts=5, max_seconds=30, initial_backoff=0.5, max_backoff=1)
NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


class Timed(Flaky):
    """Records the event loop's clock at each call (virtual under looptime)."""

    def __init__(self, failures: int, error: Exception) -> None:
        super().__init__(failures, error)
        self.times: list[float] = []

    async def __call__(self) -> str:
        self.times.append(asyncio.get_running_loop().time())
        return await super().__call__()


@pytest.mark.looptime
async def test_a_pause_asked_for_is_waited_before_the_next_attempt() -> None:
    fn = Timed(2, TransientError("429", retry_after=7))
    assert await call_with_retry("codalab", fn, BUDGET) == "ok"
    gaps = [later - earlier for earlier, later in itertools.pairwise(fn.times)]
    assert len(gaps) == 2
    assert all(7 <= gap < 8 for gap in gaps)  # the pause, not the 0.5-1.5 s backoff


@pytest.mark.looptime
async def test_a_shorter_pause_than_the_backoff_does_not_shorten_it() -> None:
    policy = RetryPolicy(max_attempts=2, max_seconds=30, initial_backoff=4, max_backoff=4)
    fn = Timed(1, TransientError("503", retry_after=1))
    assert await call_with_retry("codalab", fn, policy) == "ok"
    assert fn.times[1] - fn.times[0] >= 4


@pytest.mark.looptime
async def test_a_pause_past_the_budget_gives_up_at_once() -> None:
    fn = Timed(1, TransientError("429", retry_after=31))
    started = asyncio.get_running_loop().time()
    with pytest.raises(TransientError, match="429"):
        await call_with_retry("codalab", fn, BUDGET)
    assert fn.calls == 1
    assert asyncio.get_running_loop().time() - started < 1  # never slept towards it


@pytest.mark.looptime
async def test_pauses_add_up_against_the_budget() -> None:
    fn = Timed(10, TransientError("429", retry_after=12))
    with pytest.raises(TransientError):
        await call_with_retry("codalab", fn, BUDGET)
    assert fn.calls == 3  # at 0, 12, 24; a third pause would end at 36 > 30
    assert fn.times[-1] - fn.times[0] <= BUDGET.max_seconds


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("Sun, 29 Nov 2026 12:00:30 GMT", 30.0),
        ("Sunday, 29-Nov-26 12:01:00 GMT", 60.0),  # RFC 850, still legal to send
        ("Sun, 29 Nov 2026 11:00:00 GMT", 0.0),  # in the past
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("٣", None),  # a digit, but not an ASCII one
    ],
)
def test_retry_after_is_read_as_seconds_or_a_date(
    header: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(header, NOW) == seconds


@pytest.mark.looptime
@pytest.mark.parametrize("budget", [1.0, 2.0, 5.0])
async def test_backoff_never_sleeps_past_the_budget(budget: float) -> None:
    policy = RetryPolicy(max_attempts=10, max_seconds=budget, initial_backoff=0.5, max_backoff=8)
    fn = Timed(100, TransientError("503"))
    started = asyncio.get_running_loop().time()
    with pytest.raises(TransientError):
        await call_with_retry("codalab", fn, policy)
    assert fn.times[-1] - started <= budget  # no attempt starts after the budget
    assert asyncio.get_running_loop().time() - started <= budget
