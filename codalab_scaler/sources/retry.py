"""Bounded, jittered, counted retries of transient errors (tenacity).

Only ``TransientError`` is retried: never a bare ``Exception``.  A peer's
``Retry-After`` (``TransientError.retry_after``) is honoured: the next try
waits at least that long, and when that would pass ``max_seconds`` the
error propagates at once instead.  Each retry calls ``on_retry(source)``
so the caller can count it in a metric without this module knowing about
Prometheus.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base

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


async def call_with_retry(
    source: str,
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    on_retry: RetryHook | None = None,
) -> T:
    """Await ``fn()``; on ``TransientError`` wait and try again within ``policy``.

    The last error propagates when attempts or time run out.
    """

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(source, exc)

    backoff = wait_exponential(multiplier=policy.initial_backoff, max=policy.max_backoff) + (
        wait_random(0, policy.initial_backoff)
    )

    def wait(state: RetryCallState) -> float:
        return max(backoff(state), _retry_after(state) or 0.0)

    class PastBudget(stop_base):
        """The peer asks for a wait longer than the time left."""

        def __call__(self, state: RetryCallState) -> bool:
            hint = _retry_after(state)
            elapsed = state.seconds_since_start or 0.0
            return hint is not None and elapsed + hint > policy.max_seconds

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(policy.max_attempts)
        | stop_after_delay(policy.max_seconds)
        | PastBudget(),
        wait=wait,
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover


def _retry_after(state: RetryCallState) -> float | None:
    """The peer's ``Retry-After`` hint carried by the last failure, if any."""
    exc = None if state.outcome is None else state.outcome.exception()
    return exc.retry_after if isinstance(exc, TransientError) else None
