"""Issue 10's two-burst workload over real HTTP, a `fast` pool (see ``tests/two_bursts.py``).

20 bundles of 10 s, then 10 more 60 s later; workers of one cpu (one bundle
at a time, as the issue's measurement: 142 worker jobs for 30 bundles) that
exit after 20 s idle and stay listed by CodaLab for 60 s after.  One run of
about 100 s serves every test here; the figures come from the simulator's
records, and ``benchmarks/two_bursts.py`` records them for both policies.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests import two_bursts
from tests.two_bursts import FIRST, SECOND, Outcome

pytestmark = pytest.mark.timeout(two_bursts.DEADLINE_SECONDS + 120)

TARGET_MEAN_WAIT = 10.0  # seconds, staged -> started, over both bursts (issue 10)
TARGET_NEVER_RAN = 2  # workers that never run a bundle (issue 10)


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    directory: Path = tmp_path_factory.mktemp("two-bursts")
    return asyncio.run(two_bursts.run(directory, two_bursts.FAST))


def test_the_first_burst_starts_within_the_target_on_exactly_the_workers_it_needs(
    fast: Outcome,
) -> None:
    assert len(fast.waits) == FIRST + SECOND
    assert fast.mean_wait_first_burst <= TARGET_MEAN_WAIT, fast
    # One worker per bundle of the first burst, no more, and each of them ran one.
    assert fast.launched_first_burst == fast.ran_first_burst == FIRST, fast
    assert fast.registered <= fast.launched, fast


def test_both_bursts_meet_the_issue_target(fast: Outcome) -> None:
    # The first burst's workers exit idle and CodaLab keeps listing them for 60 s; the
    # scaler checks them out, so the second burst's runs are not dispatched to them.
    assert fast.mean_wait_seconds <= TARGET_MEAN_WAIT, fast
    assert fast.never_ran <= TARGET_NEVER_RAN, fast
