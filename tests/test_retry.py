from __future__ import annotations

import asyncio

import pytest

from codalab_scaler.core.errors import RefusedError, TransientError
from codalab_scaler.sources.retry import RetryPolicy, call_with_retry

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
