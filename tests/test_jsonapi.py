"""JSON:API bundle documents: the server's normalisation rules, and bad items set aside."""

from __future__ import annotations

import pytest

from codalab_scaler.core.model import StagedBundle
from codalab_scaler.sources.codalab.jsonapi import (
    MalformedBundle,
    MalformedResponse,
    ParsedBundles,
    parse_bundles,
)

GIB = 1024**3


def resource(
    uuid: str = "0xaa", owner_id: str | None = "0", /, **metadata: object
) -> dict[str, object]:
    meta: dict[str, object] = {"request_cpus": 1, "request_gpus": 0, "request_memory": "2g"}
    meta["request_queue"] = ""
    meta.update(metadata)
    owner = None if owner_id is None else {"type": "users", "id": owner_id}
    return {
        "type": "bundles",
        "id": uuid,
        "attributes": {"uuid": uuid, "state": "staged", "metadata": meta},
        "relationships": {"owner": {"data": owner}},
    }


def document(*resources: object) -> dict[str, object]:
    users = [
        {"type": "users", "id": "0", "attributes": {"user_name": "codalab"}},
        {"type": "users", "id": "1", "attributes": {"user_name": "alice"}},
    ]
    return {"data": list(resources), "included": users, "meta": {"version": "1.7.3"}}


def one(**metadata: object) -> StagedBundle:
    parsed = parse_bundles(document(resource(**metadata)))
    assert parsed.malformed == ()
    (bundle,) = parsed.bundles
    return bundle


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, (1, 0, 2 * GIB, "")),
        ({"request_cpus": 0}, (1, 0, 2 * GIB, "")),
        ({"request_cpus": None, "request_gpus": None}, (1, 0, 2 * GIB, "")),
        ({"request_cpus": 4, "request_gpus": 2}, (4, 2, 2 * GIB, "")),
        ({"request_memory": ""}, (1, 0, 2 * GIB, "")),
        ({"request_memory": None}, (1, 0, 2 * GIB, "")),
        ({"request_memory": "512m"}, (1, 0, 512 * 1024**2, "")),
        ({"request_memory": "3"}, (1, 0, 3, "")),
        ({"request_memory": "1t"}, (1, 0, 1024**4, "")),
        ({"request_queue": "cpuq"}, (1, 0, 2 * GIB, "cpuq")),
        ({"request_queue": "tag=x"}, (1, 0, 2 * GIB, "x")),
        ({"request_queue": None}, (1, 0, 2 * GIB, "")),
    ],
)
def test_normalised_like_the_server(
    metadata: dict[str, object], expected: tuple[int, int, int, str]
) -> None:
    bundle = one(**metadata)
    assert (bundle.cpus, bundle.gpus, bundle.memory_bytes, bundle.tag) == expected


def test_absent_request_fields_take_the_server_defaults() -> None:
    doc = {"data": [{"type": "bundles", "id": "0x1", "attributes": {"metadata": {}}}]}
    assert parse_bundles(doc) == ParsedBundles(
        bundles=(StagedBundle("0x1", 1, 0, 2 * GIB, "", None),)
    )


def test_owner_comes_from_included_users() -> None:
    parsed = parse_bundles(document(resource("0x1", "1"), resource("0x2", None)))
    assert [b.owner for b in parsed.bundles] == ["alice", None]


def test_owner_missing_from_included_is_none() -> None:
    assert parse_bundles(document(resource("0x1", "77"))).bundles[0].owner is None


def test_uuid_falls_back_to_the_resource_id() -> None:
    item = resource("0xfeed")
    item["attributes"] = {"metadata": {}}
    assert parse_bundles(document(item)).bundles[0].uuid == "0xfeed"


def _without_uuid() -> dict[str, object]:
    item = resource()
    item["id"] = None
    item["attributes"] = {"metadata": {}}
    return item


def _metadata(value: object) -> dict[str, object]:
    item = resource("0xbad")
    item["attributes"] = {"uuid": "0xbad", "metadata": value}
    return item


@pytest.mark.parametrize(
    ("bad", "uuid", "reason"),
    [
        ("not a dict", None, "resource is not an object"),
        (_without_uuid(), None, "no uuid"),
        (_metadata(None), "0xbad", "metadata is not an object"),
        (_metadata([1]), "0xbad", "metadata is not an object"),
        (resource("0xbad", request_cpus="2"), "0xbad", "request_cpus is not an integer"),
        (resource("0xbad", request_cpus=1.5), "0xbad", "request_cpus is not an integer"),
        (resource("0xbad", request_cpus=True), "0xbad", "request_cpus is not an integer"),
        (resource("0xbad", request_cpus=-1), "0xbad", "request_cpus is negative"),
        (resource("0xbad", request_gpus=False), "0xbad", "request_gpus is not an integer"),
        (resource("0xbad", request_gpus=-2), "0xbad", "request_gpus is negative"),
        (resource("0xbad", request_memory=2048), "0xbad", "request_memory is not a string"),
        (resource("0xbad", request_memory="lots"), "0xbad", "request_memory is not a size"),
        (resource("0xbad", request_queue=5), "0xbad", "request_queue is not a string"),
    ],
)
def test_a_malformed_item_is_set_aside_and_the_good_ones_survive(
    bad: object, uuid: str | None, reason: str
) -> None:
    parsed = parse_bundles(document(resource("0x1"), bad, resource("0x2")))
    assert [b.uuid for b in parsed.bundles] == ["0x1", "0x2"]
    assert parsed.malformed == (MalformedBundle(uuid=uuid, reason=reason),)


@pytest.mark.parametrize(
    "doc",
    [None, [], "html", {"data": None}, {"meta": {"result": 3}}, {"data": [], "included": {}}],
)
def test_a_document_of_the_wrong_shape_is_a_transient_error(doc: object) -> None:
    with pytest.raises(MalformedResponse):
        parse_bundles(doc)


def test_empty_document() -> None:
    assert parse_bundles({"data": [], "included": []}) == ParsedBundles()


def test_a_memory_request_too_big_for_any_machine_is_a_malformed_bundle() -> None:
    # 1e308 is a finite float; times 1024**5 it is not: an OverflowError escaped the poll.
    resource = {"id": "u", "attributes": {"uuid": "u", "metadata": {"request_memory": "1e308p"}}}
    parsed = parse_bundles({"data": [resource]})
    assert parsed.malformed == (MalformedBundle("u", "request_memory is not a size"),)
