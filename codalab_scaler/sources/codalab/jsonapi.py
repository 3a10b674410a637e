"""Unpack CodaLab's JSON:API bundle documents into ``StagedBundle`` values (pure, no I/O).

The request fields are normalised with the server's own rules (contract
section 3): ``cpus = request_cpus or 1``, ``gpus = request_gpus or 0``,
``memory = parse_size(request_memory or "2g")``, ``tag = request_queue`` with
a leading ``tag=`` stripped.  One bad resource never spoils the document: it
is set aside in ``malformed`` with a short reason.  Only a document whose
shape is wrong as a whole raises ``MalformedResponse``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from codalab_scaler.core.errors import TransientError
from codalab_scaler.core.model import StagedBundle
from codalab_scaler.core.sizes import parse_size

DEFAULT_MEMORY = "2g"


class MalformedResponse(TransientError):
    """The document as a whole is not what the contract promises (a proxy page, a bad deploy...)."""


@dataclass(frozen=True, slots=True)
class MalformedBundle:
    """A resource that could not be read, and why."""

    uuid: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ParsedBundles:
    """Every resource of a document: read (``bundles``) or set aside (``malformed``)."""

    bundles: tuple[StagedBundle, ...] = ()
    malformed: tuple[MalformedBundle, ...] = ()


class _Skip(Exception):
    """One resource is malformed; carries the reason."""


def parse_bundles(document: object) -> ParsedBundles:
    """Read a ``GET /rest/bundles?include=owner`` document."""
    if not isinstance(document, Mapping):
        raise MalformedResponse("bundle search: document is not a JSON object")
    data = document.get("data")
    if not isinstance(data, list):
        raise MalformedResponse("bundle search: 'data' is not a list")
    users = _user_names(document.get("included", []))
    bundles: list[StagedBundle] = []
    malformed: list[MalformedBundle] = []
    for resource in data:
        uuid = _uuid_of(resource)
        try:
            bundles.append(_parse_resource(resource, uuid, users))
        except _Skip as skip:
            malformed.append(MalformedBundle(uuid=uuid, reason=str(skip)))
    return ParsedBundles(bundles=tuple(bundles), malformed=tuple(malformed))


def _user_names(included: object) -> dict[str, str]:
    if not isinstance(included, list):
        raise MalformedResponse("bundle search: 'included' is not a list")
    names: dict[str, str] = {}
    for item in included:
        if not isinstance(item, Mapping) or item.get("type") != "users":
            continue
        user_id, attributes = item.get("id"), item.get("attributes")
        if isinstance(user_id, str) and isinstance(attributes, Mapping):
            name = attributes.get("user_name")
            if isinstance(name, str):
                names[user_id] = name
    return names


def _uuid_of(resource: object) -> str | None:
    if not isinstance(resource, Mapping):
        return None
    attributes = resource.get("attributes")
    if isinstance(attributes, Mapping):
        uuid = attributes.get("uuid")
        if isinstance(uuid, str) and uuid:
            return uuid
    fallback = resource.get("id")
    return fallback if isinstance(fallback, str) and fallback else None


def _parse_resource(resource: object, uuid: str | None, users: Mapping[str, str]) -> StagedBundle:
    if not isinstance(resource, Mapping):
        raise _Skip("resource is not an object")
    if uuid is None:
        raise _Skip("no uuid")
    attributes = resource.get("attributes")
    metadata = attributes.get("metadata") if isinstance(attributes, Mapping) else None
    if not isinstance(metadata, Mapping):
        raise _Skip("metadata is not an object")
    return StagedBundle(
        uuid=uuid,
        cpus=_count(metadata, "request_cpus") or 1,
        gpus=_count(metadata, "request_gpus") or 0,
        memory_bytes=_memory(metadata),
        tag=_tag(metadata),
        owner=_owner(resource, users),
    )


def _count(metadata: Mapping[str, object], key: str) -> int:
    value = metadata.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Skip(f"{key} is not an integer")
    if value < 0:
        raise _Skip(f"{key} is negative")
    return value


def _memory(metadata: Mapping[str, object]) -> int:
    value = metadata.get("request_memory")
    if value is None or value == "":
        value = DEFAULT_MEMORY
    if not isinstance(value, str):
        raise _Skip("request_memory is not a string")
    try:
        return parse_size(value)
    except ValueError:
        raise _Skip("request_memory is not a size") from None


def _tag(metadata: Mapping[str, object]) -> str:
    value = metadata.get("request_queue")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Skip("request_queue is not a string")
    return value.removeprefix("tag=")


def _owner(resource: Mapping[str, object], users: Mapping[str, str]) -> str | None:
    """The owner's user name, or None when hidden (``owner.data`` null) or not included."""
    relationships = resource.get("relationships")
    owner = relationships.get("owner") if isinstance(relationships, Mapping) else None
    data = owner.get("data") if isinstance(owner, Mapping) else None
    user_id = data.get("id") if isinstance(data, Mapping) else None
    return users.get(user_id) if isinstance(user_id, str) else None
