"""Readers of what peers send, fuzzed: any input gives a value or a clear skip, never a stray
exception.  CodaLab's JSON:API documents, squeue's lines, Retry-After headers.

There is no workers/info reader to fuzz: the client asks ``/rest/workers/info``
only to learn whether CodaLab accepts its token and never reads the body.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codalab_scaler.sources.backends.slurm import squeue
from codalab_scaler.sources.codalab.jsonapi import MalformedResponse, parse_bundles
from codalab_scaler.sources.retry import parse_retry_after

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
sizes = st.builds(
    "{}{}".format,
    st.floats(min_value=0, allow_nan=False),
    st.sampled_from(["", "k", "m", "g", "t", "p", "GiB"]),
)
# Values a server could put in a request field: right, wrong type, wrong size, out of range.
field_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["2g", "512m", "1.5t", "0", "-1g", "1e400g", "nan", "inf", "tag=gpu", ""])
    | sizes
    | json_values
)
metadata = st.dictionaries(
    st.sampled_from(["request_cpus", "request_gpus", "request_memory", "request_queue", "name"]),
    field_values,
)
resources = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"id": st.one_of(st.text(max_size=8), json_values)},
        optional={
            "attributes": st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {},
                    optional={"uuid": st.one_of(st.text(max_size=8), json_values),
                              "metadata": st.one_of(metadata, json_values)},
                ),
            ),
            "relationships": json_values,
        },
    ),
)  # fmt: skip
documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"data": st.one_of(st.lists(resources, max_size=6), json_values)},
        optional={"included": st.one_of(st.lists(json_values, max_size=3), json_values)},
    ),
)


@FUZZ
@given(documents)
def test_any_search_answer_is_bundles_malformed_ones_or_a_malformed_response(
    document: Any,
) -> None:
    try:
        parsed = parse_bundles(document)
    except MalformedResponse:
        return  # the clear skip: the view fails, nothing is launched on it
    data = document["data"]
    assert len(parsed.bundles) + len(parsed.malformed) == len(data)
    for bundle in parsed.bundles:
        assert bundle.cpus >= 1
        assert bundle.gpus >= 0
        assert bundle.memory_bytes >= 0


@FUZZ
@given(sizes)
def test_any_requested_memory_is_a_size_or_a_malformed_bundle(memory: str) -> None:
    resource = {"id": "u", "attributes": {"uuid": "u", "metadata": {"request_memory": memory}}}
    parsed = parse_bundles({"data": [resource]})
    assert len(parsed.bundles) + len(parsed.malformed) == 1


squeue_lines = st.one_of(
    st.text(max_size=60),
    st.builds(
        "|".join,
        st.lists(
            st.one_of(
                st.text(max_size=10),
                st.sampled_from([*squeue.PHASES, "12", "7_3", "RUNNING+", "²", "١٢"]),
            ),
            min_size=1,
            max_size=6,
        ),
    ),
)


@FUZZ
@given(st.lists(squeue_lines, max_size=8).map("\n".join), st.text(max_size=10))
def test_any_squeue_output_is_rows_or_malformed_lines(text: str, prefix: str) -> None:
    rows, malformed = squeue.parse(text)
    assert len(rows) + len(malformed) == len([line for line in text.splitlines() if line.strip()])
    for row in rows:
        assert row.phase is None or isinstance(row.phase, squeue.Phase)
        assert row.job_id.split("_")[0].isascii()  # an id Slurm could have printed
    for _row, worker_id in squeue.ours(rows, prefix).values():
        assert worker_id.isalnum()


@FUZZ
@given(
    st.one_of(
        st.none(),
        st.text(max_size=40),
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.datetimes(timezones=st.just(UTC)).map(
            lambda when: when.strftime("%a, %d %b %Y %H:%M:%S GMT")
        ),
    )
)
def test_any_retry_after_is_a_pause_or_nothing(header: str | None) -> None:
    pause = parse_retry_after(header, datetime(2026, 1, 1, tzinfo=UTC))
    assert pause is None or pause >= 0
