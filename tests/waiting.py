"""Waiting for something another process, thread or task makes true: polled and bounded."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import pytest


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    what: str = "the condition",
    within: float = 5.0,
    interval: float = 0.02,
) -> None:
    """Call ``check`` (sync or async) every ``interval`` s until it holds; fail after ``within``.

    A check still running at the deadline is cancelled: peers that hang fail the wait too.
    """
    timer = asyncio.timeout(within)
    try:
        async with timer:
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        if not timer.expired():
            raise  # from the check itself, not the deadline
    pytest.fail(f"not within {within:g}s: {what}")
