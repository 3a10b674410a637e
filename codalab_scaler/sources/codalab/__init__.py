"""The CodaLab REST client and the JSON:API reader it uses."""

from codalab_scaler.sources.codalab.client import (
    CodaLabClient,
    Credentials,
    TokenRejected,
    staged_keywords,
)
from codalab_scaler.sources.codalab.jsonapi import (
    MalformedBundle,
    MalformedResponse,
    ParsedBundles,
    parse_bundles,
)

__all__ = [
    "CodaLabClient",
    "Credentials",
    "MalformedBundle",
    "MalformedResponse",
    "ParsedBundles",
    "TokenRejected",
    "parse_bundles",
    "staged_keywords",
]
