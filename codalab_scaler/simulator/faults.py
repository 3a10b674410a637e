"""Injected faults for tests and the demo: the next requests under a path fail or are slow.

Rules are consumed one matching request at a time, the oldest rule first.  A
delayed request is then handled as usual; a failed one is answered with the
real server's plain-text ``Unexpected Internal Error`` and the rule's status;
with ``echo_body`` the answer repeats the request's body, as a debugging
proxy or a careless error page may (a test that secrets never leak from it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from codalab_scaler.simulator.wire import text_response


@dataclass(slots=True)
class _Rule:
    remaining: int
    path_prefix: str
    status: int = 500
    seconds: float = 0.0
    echo_body: bool = False


class Faults:
    """The pending failure and delay rules of one server."""

    def __init__(self) -> None:
        self._failures: list[_Rule] = []
        self._delays: list[_Rule] = []

    def fail_next(
        self, count: int, status: int, path_prefix: str, *, echo_body: bool = False
    ) -> None:
        self._failures.append(_Rule(count, path_prefix, status=status, echo_body=echo_body))

    def delay_next(self, count: int, seconds: float, path_prefix: str) -> None:
        self._delays.append(_Rule(count, path_prefix, seconds=seconds))

    async def apply(self, path: str, body: str = "") -> web.Response | None:
        """Sleep if a delay rule matches ``path``; the error to send if a failure rule does."""
        delay = _take(self._delays, path)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        failure = _take(self._failures, path)
        if failure is not None:
            message = f"Unexpected Internal Error (simulated {failure.status})"
            if failure.echo_body:
                message = f"While handling {body}: {message}"
            return text_response(failure.status, message)
        return None


def _take(rules: list[_Rule], path: str) -> _Rule | None:
    for rule in rules:
        if rule.remaining > 0 and path.startswith(rule.path_prefix):
            rule.remaining -= 1
            return rule
    return None
