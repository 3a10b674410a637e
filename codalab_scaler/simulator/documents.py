"""The JSON:API pieces of ``GET /rest/bundles``: bundle resources and ``included`` users.

A bundle's owner is a relationship to a ``users`` resource by numeric id
(as text); ``include=owner`` adds those users, each once, in page order.
"""

from __future__ import annotations

from collections.abc import Mapping

from codalab_scaler.simulator.model import SimBundle

SERVER_VERSION = "1.7.5"


def bundle_resource(bundle: SimBundle, owner_id: str) -> dict[str, object]:
    """``bundle`` as a ``bundles`` resource whose owner is the user ``owner_id``."""
    return {
        "type": "bundles",
        "id": bundle.uuid,
        "attributes": {
            "uuid": bundle.uuid,
            "bundle_type": "run",
            "state": bundle.state,
            "command": bundle.command,
            "state_details": "",
            "metadata": dict(bundle.metadata),
        },
        "relationships": {"owner": {"data": {"type": "users", "id": owner_id}}},
    }


def included_users(
    page: list[dict[str, object]], user_ids: Mapping[str, str]
) -> list[dict[str, object]]:
    """The ``users`` resources of the owners in ``page``; ``user_ids`` maps names to ids."""
    names = {user_id: name for name, user_id in user_ids.items()}
    wanted: list[str] = []
    for resource in page:
        relationships = resource.get("relationships")
        owner = relationships.get("owner") if isinstance(relationships, dict) else None
        data = owner.get("data") if isinstance(owner, dict) else None
        user_id = data.get("id") if isinstance(data, dict) else None
        if user_id in names and user_id not in wanted:
            wanted.append(user_id)
    return [
        {
            "type": "users",
            "id": user_id,
            "attributes": {"user_name": names[user_id], "first_name": "", "last_name": ""},
        }
        for user_id in wanted
    ]
