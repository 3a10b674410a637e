"""Pacing of one pool's launches: a token bucket and a jittered exponential backoff.

Pure data and transition functions: the caller passes ``now`` (and, for the
backoff, a random fraction) in and keeps the returned value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """Launch tokens: ``burst`` at most, refilled at ``rate_per_minute``.

    ``updated_at`` None is a bucket never used: it starts full.
    """

    tokens: float
    updated_at: float | None = None

    def refilled(self, now: float, rate_per_minute: float, burst: int) -> TokenBucket:
        if self.updated_at is None:
            return TokenBucket(float(burst), now)
        elapsed = max(now - self.updated_at, 0.0)
        return TokenBucket(min(float(burst), self.tokens + elapsed * rate_per_minute / 60), now)

    def available(self, now: float, rate_per_minute: float, burst: int) -> int:
        return int(self.refilled(now, rate_per_minute, burst).tokens)

    def take(self, n: int, now: float, rate_per_minute: float, burst: int) -> TokenBucket:
        """Spend ``n`` tokens (one per launch attempt); never below zero."""
        full = self.refilled(now, rate_per_minute, burst)
        return TokenBucket(max(full.tokens - n, 0.0), now)


@dataclass(frozen=True, slots=True)
class Backoff:
    """A pool's backoff: consecutive failures and when it may launch again."""

    failures: int = 0
    until: float | None = None

    def active(self, now: float) -> bool:
        return self.until is not None and now < self.until

    def remaining(self, now: float) -> float:
        return 0.0 if self.until is None else max(self.until - now, 0.0)

    def failed(self, now: float, jitter: float, *, initial: float, maximum: float) -> Backoff:
        """One more failure: wait ``min(initial * 2**failures, maximum)``, jittered.

        ``jitter`` in [0, 1) scales the wait into [1/2, 1) of it ("equal
        jitter"): pools that failed together do not retry together, and the
        wait never drops below half the step.
        """
        step = min(initial * 2.0**self.failures, maximum)
        wait = step * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))
        return Backoff(failures=self.failures + 1, until=now + wait)

    def reset(self) -> Backoff:
        """A worker of the pool registered: the pool works again."""
        return Backoff()
