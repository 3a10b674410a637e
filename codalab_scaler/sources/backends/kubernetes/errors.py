"""The client's exceptions in the scaler's vocabulary: try again, or a refusal.

Transient: HTTP 429 and 5xx (``Retry-After`` carried along), connection
errors and timeouts, and 410 Gone (a listing's ``continue`` token expired:
list again from the start).  Refused: 401, 403, 404 (no such namespace),
422 (an invalid object) and every other answer.  409 on create is decided
by the caller (the same worker's pod already exists).  Anything else is a
bug and propagates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from codalab_scaler.core.errors import RefusedError, TransientError
from codalab_scaler.sources.retry import parse_retry_after

TRANSIENT_STATUSES = frozenset({HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.GONE})


def is_transient(status: int) -> bool:
    return status in TRANSIENT_STATUSES or status >= HTTPStatus.INTERNAL_SERVER_ERROR


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """The ``Retry-After`` seconds of an answer (the API server sends seconds, not dates)."""
    return parse_retry_after((headers or {}).get("Retry-After"))


def describe(exc: ApiException) -> str:
    """``HTTP <status> <reason>: <message>`` from the API server's Status object."""
    message = ""
    try:
        body = json.loads(exc.body) if exc.body else {}
        message = str(body.get("message", "")) if isinstance(body, dict) else ""
    except ValueError:
        message = ""
    return f"HTTP {exc.status} {exc.reason or ''}: {message}".rstrip(": ")


def status_of(exc: ApiException) -> int:
    return int(exc.status or 0)


@contextmanager
def translate(operation: str, refused: type[RefusedError] = RefusedError) -> Iterator[None]:
    """Raise ``TransientError`` or ``refused`` for what ``operation`` raised inside."""
    try:
        yield
    except ApiException as exc:
        what = f"Kubernetes {operation}: {describe(exc)}"
        if is_transient(status_of(exc)):
            raise TransientError(what, retry_after=retry_after(exc.headers)) from exc
        raise refused(what) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransientError(f"Kubernetes {operation}: {type(exc).__name__}: {exc}") from exc
