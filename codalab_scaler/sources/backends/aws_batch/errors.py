"""botocore's exceptions in the scaler's vocabulary: try again, or a refusal.

Transient: throttling, HTTP 429 and 5xx (with the pause a ``Retry-After``
header asks for), connection errors and timeouts,
credentials that could not be fetched *this time* (instance metadata).
Refused: any other answer of AWS (4xx: unknown queue, invalid definition,
access denied), no credentials at all, or parameters botocore rejects
before sending.  Anything else is a bug and propagates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from codalab_scaler.core.errors import RefusedError, TransientError
from codalab_scaler.sources.retry import parse_retry_after

THROTTLING = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
    }
)


def is_transient(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return (
        code in THROTTLING
        or status == HTTPStatus.TOO_MANY_REQUESTS
        or status >= HTTPStatus.INTERNAL_SERVER_ERROR
    )


def retry_after(error: ClientError) -> float | None:
    """The pause AWS asked for in a ``Retry-After`` header (botocore lower-cases names)."""
    headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return parse_retry_after(headers.get("retry-after"))


def describe(error: ClientError) -> str:
    info = error.response.get("Error", {})
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
    return f"{info.get('Code', 'Unknown')} (HTTP {status}): {info.get('Message', '')}".rstrip(": ")


@contextmanager
def translate(operation: str, refused: type[RefusedError] = RefusedError) -> Iterator[None]:
    """Raise ``TransientError`` or ``refused`` for what ``operation`` raised inside."""
    try:
        yield
    except ClientError as exc:
        message = f"AWS Batch {operation}: {describe(exc)}"
        if is_transient(exc):
            raise TransientError(message, retry_after=retry_after(exc)) from exc
        raise refused(message) from exc
    except (BotoConnectionError, HTTPClientError, CredentialRetrievalError) as exc:
        # botocore's ConnectionError covers EndpointConnectionError and ConnectTimeoutError;
        # HTTPClientError covers ReadTimeoutError and ConnectionClosedError.
        raise TransientError(f"AWS Batch {operation}: {type(exc).__name__}: {exc}") from exc
    except (NoCredentialsError, PartialCredentialsError, ParamValidationError) as exc:
        raise refused(f"AWS Batch {operation}: {type(exc).__name__}: {exc}") from exc
