"""A synthetic workload for the demo: bundles staged at random (Poisson) times."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from codalab_scaler.simulator.model import ROOT_USER

MAX_STREAM_DURATION = 600.0


class BundleStager(Protocol):
    """What the stream needs of a server: ``CodaLabSimulator.add_bundle``."""

    def add_bundle(
        self, owner: str = ..., *, cpus: int | None = ..., memory: str = ..., duration: float = ...
    ) -> str: ...


@dataclass(frozen=True, slots=True)
class BundleShape:
    """What a bundle of the stream requests; ``weight`` is its share among the shapes."""

    cpus: int = 1
    memory: str = "2g"
    weight: float = 1.0


DEFAULT_SHAPES = (BundleShape(),)


async def run_bundle_stream(
    sim: BundleStager,
    *,
    rate_per_minute: float,
    total: int | None,
    rng: random.Random,
    owner: str = ROOT_USER,
    duration_range: tuple[float, float] = (1.0, 10.0),
    shapes: Sequence[BundleShape] = DEFAULT_SHAPES,
) -> None:
    """Stage bundles at random (Poisson) times, ``rate_per_minute`` on average, until ``total``.

    Each requests one of ``shapes``, drawn by weight (a single shape draws
    nothing, so a seed stages the same stream as before shapes existed).
    """
    if rate_per_minute <= 0:
        raise ValueError("rate_per_minute must be positive")
    mean_gap = 60.0 / rate_per_minute
    low, high = (min(max(x, 0.0), MAX_STREAM_DURATION) for x in duration_range)
    added = 0
    while total is None or added < total:
        await asyncio.sleep(min(rng.expovariate(1.0 / mean_gap), 5 * mean_gap))
        weights = [x.weight for x in shapes]
        shape = shapes[0] if len(shapes) == 1 else rng.choices(shapes, weights)[0]
        duration = round(rng.uniform(low, high), 2)
        sim.add_bundle(owner, cpus=shape.cpus, memory=shape.memory, duration=duration)
        added += 1
