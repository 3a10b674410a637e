"""The simulator's OAuth2: the token endpoint's two grants and the bearer tokens it issues.

``POST /rest/oauth2/token`` takes the password grant (client
``codalab_cli_client`` in Basic auth or in a ``client_id`` form field) and
the refresh grant (Basic auth only; a refresh token is good once).  A
refused grant is a 401 JSON ``{"error", "error_description"}``; an unknown
grant type is a 400.  Access tokens expire on the injected clock; past
``TOKEN_RETENTION`` tokens, expired access tokens and the oldest refresh
tokens are forgotten.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable, Mapping

from aiohttp import web

from codalab_scaler.simulator.wire import Answer

CLIENT_ID = "codalab_cli_client"
TOKEN_RETENTION = 10_000  # refresh tokens kept; the oldest unused ones are forgotten


class TokenStore:
    """Access tokens (with their user and expiry) and one-use refresh tokens."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._access: dict[str, tuple[str, float]] = {}
        self._refresh: dict[str, str] = {}

    def bearer_user(self, authorization: str) -> str | None:
        """The user of a ``Bearer`` ``Authorization`` header's unexpired token, else None."""
        scheme, _, token = authorization.partition(" ")
        entry = self._access.get(token) if scheme.lower() == "bearer" else None
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def redeem(self, refresh: str) -> str | None:
        """The user of a refresh token, which is then spent; None if it is unknown."""
        return self._refresh.pop(refresh, None)

    def clear(self) -> None:
        """Forget every access and refresh token issued so far."""
        self._access.clear()
        self._refresh.clear()

    def issue(self, user: str, ttl: float) -> tuple[str, str]:
        """A new access token for ``user``, good for ``ttl`` seconds, and its refresh token."""
        now = self._clock()
        if len(self._access) >= TOKEN_RETENTION:
            self._access = {t: e for t, e in self._access.items() if e[1] > now}
        while len(self._refresh) >= TOKEN_RETENTION:
            del self._refresh[next(iter(self._refresh))]
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self._access[access] = (user, now + ttl)
        self._refresh[refresh] = user
        return access, refresh


async def answer_token_request(
    request: web.Request, tokens: TokenStore, passwords: Mapping[str, str], ttl: float
) -> web.Response:
    """Answer ``POST /rest/oauth2/token``; raises ``Answer`` when the grant is refused."""
    form = await request.post()
    client = _basic_client(request.headers.get("Authorization", ""))
    grant = form.get("grant_type")
    if grant == "password":
        if (client or form.get("client_id")) != CLIENT_ID:
            raise _oauth_error("invalid_client")
        user, password = form.get("username"), form.get("password")
        if not isinstance(user, str) or passwords.get(user) != password:
            raise _oauth_error("invalid_grant", "Invalid credentials given.")
    elif grant == "refresh_token":
        if client != CLIENT_ID:
            raise _oauth_error("invalid_client")
        refresh = form.get("refresh_token")
        user = tokens.redeem(refresh) if isinstance(refresh, str) else None
        if user is None:
            raise _oauth_error("invalid_grant", "Invalid refresh token.")
    else:
        raise Answer(web.json_response({"error": "unsupported_grant_type"}, status=400))
    access, refresh_token = tokens.issue(user, ttl)
    return web.json_response(
        {
            "access_token": access,
            "expires_in": ttl,
            "token_type": "Bearer",
            "scope": "default",
            "refresh_token": refresh_token,
        }
    )


def _oauth_error(error: str, description: str = "") -> Answer:
    body = {"error": error, "error_description": description or error}
    return Answer(web.json_response(body, status=401))


def _basic_client(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0]
