"""Bounded, jittered, counted retries of transient errors (tenacity).

Only ``TransientError`` is retried: never a bare ``Exception``.  Each retry
calls ``on_retry(source)`` so the caller can count it in a metric without
this module knowing about Prometheus.

A peer that asks for a pause (``Retry-After`` on a 429 or 503, carried as
``TransientError.retry_after``) gets at least that pause before the next
attempt.  Every wait stays inside the policy's time budget: when the next
wait would end past ``max_seconds`` the last error propagates at once
instead (the view goes stale and the next poll asks again).  Time is read
from the event loop's clock, so virtual-time tests see the real schedule.
"""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from codalab_scaler.core.errors import TransientError

T = TypeVar("T")

RetryHook = Callable[[str, BaseException], None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts and total time both bound the effort.

    Values only: the defaults live once, in the ``retry_*`` settings.
    """

    max_attempts: int
    max_seconds: float
    initial_backoff: float
    max_backoff: float


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or HTTP-date); None if unusable.

    A date in the past is 0; anything that is neither form is ignored.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP-dates are GMT
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _asked_pause(state: RetryCallState) -> float:
    """The pause the failed attempt's peer asked for, 0 if none."""
    exc = None if state.outcome is None else state.outcome.exception()
    if isinstance(exc, TransientError) and exc.retry_after is not None:
        return exc.retry_after
    return 0.0


async def call_with_retry(
    source: str,
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    on_retry: RetryHook | None = None,
) -> T:
    """Await ``fn()``; on ``TransientError`` wait and try again within ``policy``.

    The last error propagates when attempts run out, or when the next wait
    (backoff, or the peer's ``Retry-After`` if longer) would end past the budget.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    backoff = wait_exponential(
        multiplier=policy.initial_backoff, max=policy.max_backoff
    ) + wait_random(0, policy.initial_backoff)

    def wait(state: RetryCallState) -> float:
        return max(backoff(state), _asked_pause(state))

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        return loop.time() - started + state.upcoming_sleep > policy.max_seconds

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(source, exc)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop,
        wait=wait,
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover
