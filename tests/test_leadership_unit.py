"""Who counts as leader: elected, named by the Lease record, renewed within the deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from codalab_scaler.sources.leadership import Leadership, LeaseOptions


@dataclass
class Record:
    holder_identity: str


@dataclass
class Elector:
    observed_record: Record
    observed_time_milliseconds: float


def leadership(holder: str, renewed_ago: float, *, leading: bool = True) -> Leadership:
    options = LeaseOptions(
        name="codalab-scaler",
        namespace="default",
        identity="replica-a",
        kubeconfig=None,
        lease_duration=15,
        renew_deadline=10.0,
        retry_period=2.0,
    )
    lead = Leadership(options)
    lead._elector = Elector(Record(holder), (time.time() - renewed_ago) * 1000)
    lead._leading = leading
    return lead


@pytest.mark.parametrize(
    ("holder", "renewed_ago", "leading", "expected"),
    [
        ("replica-a", 1.0, True, True),  # elected, named, renewed
        ("replica-b", 1.0, True, False),  # paused past the Lease: b took it, a just read that
        ("replica-a", 11.0, True, False),  # no renewal within the deadline
        ("replica-a", 1.0, False, False),  # not elected (yet, or any more)
    ],
)
def test_leader_only_while_the_lease_names_it_and_is_fresh(
    holder: str, renewed_ago: float, leading: bool, expected: bool
) -> None:
    assert leadership(holder, renewed_ago, leading=leading).is_leader() is expected
