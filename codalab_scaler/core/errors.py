"""The error vocabulary shared by clients, backends and loops.

Two kinds matter to the loops: *transient* errors (the peer may answer next
time: connection refused, timeout, 5xx, throttling) are retried and then
leave the view stale; *refusals* (wrong password, invalid job definition)
will not get better by retrying and are reported as such.
"""

from __future__ import annotations

# Exit statuses of the codalab-scaler process.
EXIT_OK = 0
EXIT_FAILURE = 1  # a root loop died, too many failed starts, --once could not decide
EXIT_CONFIG = 2  # bad configuration, wrong password, port in use: a restart will not help


class ScalerError(Exception):
    """Base of every error the scaler raises on purpose."""


class TransientError(ScalerError):
    """The peer may succeed if asked again; retried with backoff.

    ``retry_after``: seconds the peer asked us to wait (``Retry-After``), if it did.
    """

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RefusedError(ScalerError):
    """The peer understood and said no; retrying will not help."""


class LoginRefused(RefusedError):
    """CodaLab rejected the credentials (``invalid_grant``)."""


class LaunchRefused(RefusedError):
    """A backend refused to start a worker (bad queue, invalid definition...)."""


class ConfigError(ScalerError):
    """The configuration is invalid; ``lines`` name each bad field."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines
