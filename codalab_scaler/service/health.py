"""Liveness: every root loop ran recently, none died (``/healthz``).

A loop *beats* each time it finishes an iteration, whether its poll
succeeded or failed in an expected way: a CodaLab outage makes the view
stale (visible in metrics and ``/status``) but does not make the process
unhealthy, because restarting it would not help.  A loop that stopped
beating (stuck) or ended (crashed) does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HealthReport:
    ok: bool
    problems: tuple[str, ...]
    loops: dict[str, float | None]  # seconds since each loop's last beat


class Liveness:
    def __init__(self, clock: Callable[[], float], *, grace: float, stall: float) -> None:
        self._clock = clock
        self._started = clock()
        self._grace = grace
        self._stall = stall
        self._beats: dict[str, float | None] = {}
        self._dead: dict[str, str] = {}

    def register(self, loop: str) -> None:
        self._beats.setdefault(loop, None)

    def beat(self, loop: str) -> None:
        self._beats[loop] = self._clock()

    def died(self, loop: str, reason: str) -> None:
        self._dead[loop] = reason

    def last_beat(self, loop: str) -> float | None:
        return self._beats.get(loop)

    def check(self) -> HealthReport:
        now = self._clock()
        problems: list[str] = []
        for loop, reason in sorted(self._dead.items()):
            problems.append(f"{loop}: died ({reason})")
        ages: dict[str, float | None] = {}
        for loop, beat in sorted(self._beats.items()):
            ages[loop] = None if beat is None else round(now - beat, 3)
            if loop in self._dead:
                continue
            if beat is None:
                if now - self._started > self._grace:
                    problems.append(f"{loop}: never completed an iteration")
            elif now - beat > self._stall:
                problems.append(f"{loop}: no iteration for {now - beat:.0f}s")
        return HealthReport(ok=not problems, problems=tuple(problems), loops=ages)
