"""azure-core's exceptions in the scaler's vocabulary: try again, or a refusal.

One table, by HTTP status, of what the Batch service's answers mean:

* 408, 429 and 5xx, and every connection error or timeout (no answer at
  all), are transient; a ``Retry-After`` header travels with the error so
  the retry waits at least that long.
* Any other answer is a refusal: 400 (invalid request, bad property
  value), 401/403 (a wrong key or a missing role), 404 (no such job), 409
  (the job is completed or disabled...).  ``TaskExists`` is handled by the
  launch itself, as success.

Messages carry Batch's error code and message, never the request (whose
headers hold the signature and whose body may hold a password).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from codalab_scaler.core.errors import RefusedError, TransientError
from codalab_scaler.sources.retry import parse_retry_after

TASK_EXISTS = "TaskExists"
TRANSIENT_STATUSES = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS})


def error_code(error: HttpResponseError) -> str | None:
    """Batch's error code (``TaskExists``, ``JobNotFound``...), if the body had one."""
    return None if error.error is None else error.error.code


def is_transient(status: int | None) -> bool:
    return status is not None and (
        status in TRANSIENT_STATUSES or status >= HTTPStatus.INTERNAL_SERVER_ERROR
    )


def retry_after(error: HttpResponseError) -> float | None:
    """The ``Retry-After`` of the answer in seconds (delta or HTTP date), if it has one."""
    headers = getattr(error.response, "headers", None) or {}  # absent when no answer came
    return parse_retry_after(headers.get("Retry-After"))


def describe(error: HttpResponseError) -> str:
    code = error_code(error) or "Unknown"
    message = "" if error.error is None else (error.error.message or "")
    first_line = message.splitlines()[0] if message else ""
    return f"{code} (HTTP {error.status_code}): {first_line}".rstrip(": ")


@contextmanager
def translate(operation: str, refused: type[RefusedError] = RefusedError) -> Iterator[None]:
    """Raise ``TransientError`` or ``refused`` for what ``operation`` raised inside."""
    try:
        yield
    except ClientAuthenticationError as exc:
        # Raised before any request when the credential itself fails (entra-id), or for a 401.
        if exc.status_code is None:
            raise refused(f"Azure Batch {operation}: cannot authenticate: {exc.message}") from exc
        raise refused(f"Azure Batch {operation}: {describe(exc)}") from exc
    except HttpResponseError as exc:
        if is_transient(exc.status_code):
            raise TransientError(
                f"Azure Batch {operation}: {describe(exc)}", retry_after=retry_after(exc)
            ) from exc
        raise refused(f"Azure Batch {operation}: {describe(exc)}") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        # Connection refused or reset, DNS, connect and read timeouts: no answer at all.
        raise TransientError(f"Azure Batch {operation}: {type(exc).__name__}: {exc}") from exc
