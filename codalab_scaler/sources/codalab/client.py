"""The CodaLab REST client: OAuth2 password grant, token refresh, paged staged-bundle search.

Wire rules follow ``codalab-rest-contract.md``.  Every request carries
``X-Requested-With: XMLHttpRequest`` (without it an auth failure is a 303 to
the login page, not a 401).  Every request goes through ``call_with_retry``:
connection errors, timeouts, 5xx and 429 are ``TransientError`` and retried
(after at least the pause a ``Retry-After`` header asks for, within the
retry budget); other 4xx are ``RefusedError`` and are not.

The expired-token trap: ``GET /rest/bundles`` with a bad token answers 200
as the anonymous user (``data: []`` with ``.mine``).  So after the pages are
fetched the token is confirmed on ``GET /rest/workers/info``, which does
answer 401; a rejected token means the view was anonymous and is fetched
again after a fresh login.  Tokens and the password never appear in logs or
error messages: the token endpoint's answer body is never quoted (a server
may echo the posted form), and every other excerpt is scrubbed of each
secret in every spelling a server may echo (plain, form- and URL-encoded,
JSON-escaped).

At start-up a token endpoint that refuses with anything but "wrong
password" (403 from an auth proxy, 404 from a wrong ``--server``) is a
``LoginRefused`` that names the answer and what to check, so the process
exits 2 with one line instead of a traceback.  Later in the run the same
refusal is a failed view like any other.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import aiohttp
import structlog

from codalab_scaler.core.errors import LoginRefused, RefusedError, TransientError
from codalab_scaler.core.model import StagedBundle
from codalab_scaler.sources.codalab.jsonapi import (
    MalformedBundle,
    MalformedResponse,
    ParsedBundles,
    parse_bundles,
)
from codalab_scaler.sources.codalab.workers import ParsedWorkers, parse_workers
from codalab_scaler.sources.retry import (
    RetryHook,
    RetryPolicy,
    call_with_retry,
    parse_retry_after,
)

log = structlog.get_logger()

CLIENT_ID = "codalab_cli_client"
BASIC_CLIENT_AUTH = "Basic " + base64.b64encode(f"{CLIENT_ID}:".encode()).decode()
ROOT_USER = "codalab"
REFRESH_MARGIN_MAX = 600.0  # the original refreshes when fewer than 10 minutes remain
MAX_PAGES = 1000  # 500 000 staged bundles at the default page size: far past any real queue
_SNIPPET = 120
TOKEN_PATH = "/rest/oauth2/token"  # noqa: S105 - an endpoint's path, not a token
MALFORMED_EXAMPLES = 5  # bundles named in the one warning per poll; the rest go to debug
# What to check when the token endpoint refuses for a reason other than the password.
_LOGIN_HINTS = {
    403: "an auth proxy or firewall in front of CodaLab refuses the scaler; "
    "check its rules for this path",
    404: "there is no CodaLab token endpoint at this address; check --server "
    "(the CodaLab base URL, e.g. https://worksheets.codalab.org)",
}
_LOGIN_HINT_OTHER = "check --server: it must be the base URL of a CodaLab server"


@dataclass(frozen=True)
class Credentials:
    """A CodaLab user name and password; the password never shows in repr/str."""

    username: str
    password: str = field(repr=False)


class HttpRefused(RefusedError):
    """The server answered a 4xx that retrying will not change."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TokenRejected(HttpRefused):
    """The server answered 401 to a bearer-authenticated request."""


def staged_keywords(
    username: str, search: Sequence[str], worker_tag: str | None, *, tag_exclusive: bool
) -> list[str]:
    """The search keywords exactly as the original worker manager builds them."""
    keywords = ["state=staged", *search]
    if username != ROOT_USER:
        # Workers of the root user serve everybody; anyone else only sees their own.
        keywords.append(".mine")
    if tag_exclusive and worker_tag:
        # A comma value is an SQL IN: matches both stored spellings of the tag.
        keywords.append(f"request_queue={worker_tag},tag={worker_tag}")
    return keywords


@dataclass(frozen=True, slots=True)
class _Token:
    access: str
    refresh: str | None
    expires_at: float
    expires_in: float


class CodaLabClient:
    """Talks to one CodaLab server as one user."""

    def __init__(
        self,
        server: str,
        credentials: Credentials,
        *,
        session: aiohttp.ClientSession | None = None,
        request_timeout: float,
        retry: RetryPolicy,
        on_retry: RetryHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        page_size: int = 500,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._server = server.rstrip("/")
        self._credentials = credentials
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._retry = retry
        self._on_retry = on_retry
        self._clock = clock
        self._page_size = page_size
        # Per search (each pool has its own): the malformed bundles already warned about.
        self._malformed_seen: dict[tuple[str, ...], set[tuple[str | None, str]]] = {}
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        # Tokens rejected since the last good fetch: past the first, an outage, not news.
        self._rejections = 0

    @property
    def username(self) -> str:
        return self._credentials.username

    async def aclose(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # --- authentication -------------------------------------------------------------------

    async def login(self) -> None:
        """Password grant.  ``LoginRefused`` on bad credentials, ``TransientError`` otherwise."""
        async with self._token_lock:
            await self._password_grant()

    async def _password_grant(self) -> None:
        form = {
            "grant_type": "password",
            "username": self._credentials.username,
            "password": self._credentials.password,
        }
        try:
            self._token = await self._token_request(form)
        except TokenRejected as exc:
            raise LoginRefused(f"CodaLab refused the login of {self.username!r}: {exc}") from None
        except HttpRefused as exc:
            hint = _LOGIN_HINTS.get(exc.status, _LOGIN_HINT_OTHER)
            raise LoginRefused(
                f"POST {self._server}{TOKEN_PATH} answered {exc.status}: {hint}"
            ) from None
        log.info("codalab.login", server=self._server, username=self.username)

    async def _refresh_grant(self, refresh_token: str) -> None:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        self._token = await self._token_request(form)
        log.info("codalab.token_refreshed", server=self._server, username=self.username)

    async def _token_request(self, form: dict[str, str]) -> _Token:
        headers = {"Authorization": BASIC_CLIENT_AUTH}
        body = await self._request("POST", TOKEN_PATH, headers=headers, data=form)
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise MalformedResponse("token endpoint: no access_token in the answer")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        refresh = body.get("refresh_token")
        return _Token(
            access=body["access_token"],
            refresh=refresh if isinstance(refresh, str) else None,
            expires_at=self._clock() + lifetime,
            expires_in=lifetime,
        )

    async def _ensure_token(self) -> str:
        """A token with enough life left: refreshed near expiry, re-logged in if refresh fails."""
        async with self._token_lock:
            token = self._token
            if token is None:
                await self._password_grant()
            elif token.expires_at - self._clock() < min(REFRESH_MARGIN_MAX, token.expires_in / 2):
                await self._renew(token)
            if self._token is None:  # pragma: no cover - both grants set it or raise
                raise TransientError("no token after a successful grant")
            return self._token.access

    async def _renew(self, token: _Token) -> None:
        if token.refresh is None:
            await self._password_grant()
            return
        try:
            await self._refresh_grant(token.refresh)
        except RefusedError as exc:
            log.info("codalab.token_refresh_refused", username=self.username, error=str(exc))
            await self._password_grant()
        except TransientError as exc:
            if token.expires_at <= self._clock():
                raise
            # The old token is still good for a while: use it and try again next time.
            log.warning("codalab.token_refresh_failed", username=self.username, error=str(exc))

    async def _forget_token(self, rejected: str) -> None:
        async with self._token_lock:
            if self._token is not None and self._token.access == rejected:
                self._token = None

    # --- staged bundles -------------------------------------------------------------------

    async def fetch_staged(self, keywords: Sequence[str]) -> ParsedBundles:
        """Every bundle matching ``keywords``, all pages, read with a token the server accepted."""
        for attempt in (1, 2):
            token = await self._ensure_token()
            try:
                parsed, pages = await self._fetch_pages(keywords, token)
                await self._get_json("/rest/workers/info", token)
            except TokenRejected:
                emit = log.warning if self._rejections == 0 else log.debug
                self._rejections += 1
                emit("codalab.token_rejected", username=self.username, attempt=attempt)
                await self._forget_token(token)
                continue
            self._rejections = 0
            # Warn once per bad bundle, not on every poll while it stays staged.
            current = {(bad.uuid, bad.reason) for bad in parsed.malformed}
            search = tuple(keywords)
            _log_malformed(sorted(current - self._malformed_seen.get(search, set()), key=str))
            self._malformed_seen[search] = current
            log.debug(
                "codalab.staged_fetched",
                bundles=len(parsed.bundles),
                malformed=len(parsed.malformed),
                pages=pages,
            )
            return parsed
        raise TransientError("CodaLab rejected a freshly issued token (401 on /rest/workers/info)")

    # --- registered workers -----------------------------------------------------------------

    async def fetch_workers(self) -> ParsedWorkers:
        """The workers the user has checked in with CodaLab; malformed entries set aside, warned."""
        for attempt in (1, 2):
            token = await self._ensure_token()
            try:
                parsed = parse_workers(await self._get_json("/rest/workers/info", token))
            except TokenRejected:
                log.warning("codalab.token_rejected", username=self.username, attempt=attempt)
                await self._forget_token(token)
                continue
            for bad in parsed.malformed:
                log.warning("codalab.worker_malformed", worker_id=bad.worker_id, reason=bad.reason)
            log.debug(
                "codalab.workers_fetched",
                workers=len(parsed.workers),
                malformed=len(parsed.malformed),
            )
            return parsed
        raise TransientError("CodaLab rejected a freshly issued token (401 on /rest/workers/info)")

    # --- checking out an exited worker ----------------------------------------------------

    async def checkout_worker(self, worker_id: str) -> None:
        """Make CodaLab forget a worker whose job has ended: ``POST /rest/workers/<id>/checkout``.

        As if it had checked out itself (a ``cl-worker`` that exits idle does
        not), so the bundle manager stops dispatching runs to it.  Checking
        out a worker the server no longer lists is a no-op there.
        """
        path = f"/rest/workers/{urllib.parse.quote(worker_id, safe='')}/checkout"
        for attempt in (1, 2):
            token = await self._ensure_token()
            try:
                await self._request("POST", path, headers={"Authorization": f"Bearer {token}"},
                                    json_answer=False)  # fmt: skip
            except TokenRejected:
                log.warning("codalab.token_rejected", username=self.username, attempt=attempt)
                await self._forget_token(token)
                continue
            return
        raise TransientError(f"CodaLab rejected a freshly issued token (401 on {path})")

    async def _fetch_pages(self, keywords: Sequence[str], token: str) -> tuple[ParsedBundles, int]:
        bundles: dict[str, StagedBundle] = {}
        malformed: list[MalformedBundle] = []
        for page in range(MAX_PAGES):
            offset = page * self._page_size
            # The original also sends worksheet=None; the server ignores it (contract 2).
            params = [("include", "owner")]
            params += [("keywords", keyword) for keyword in keywords]
            params += [
                ("keywords", "id=.sort"),
                ("keywords", f".limit={self._page_size}"),
                ("keywords", f".offset={offset}"),
            ]
            parsed = parse_bundles(await self._get_json("/rest/bundles", token, params))
            new = [bundle for bundle in parsed.bundles if bundle.uuid not in bundles]
            bundles.update((bundle.uuid, bundle) for bundle in new)
            malformed.extend(parsed.malformed)
            if len(parsed.bundles) + len(parsed.malformed) < self._page_size:
                return ParsedBundles(tuple(bundles.values()), tuple(malformed)), page + 1
            if not new and not parsed.malformed:
                # A full page of bundles already seen: the server ignores .offset.
                log.warning("codalab.paging_stalled", offset=offset)
                return ParsedBundles(tuple(bundles.values()), tuple(malformed)), page + 1
        raise MalformedResponse(f"bundle search: more than {MAX_PAGES} full pages")

    # --- HTTP -----------------------------------------------------------------------------

    async def _get_json(
        self, path: str, token: str, params: Sequence[tuple[str, str]] = ()
    ) -> object:
        headers = {"Authorization": f"Bearer {token}"}
        return await self._request("GET", path, headers=headers, params=params)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        params: Sequence[tuple[str, str]] = (),
        data: dict[str, str] | None = None,
        json_answer: bool = True,
    ) -> object:
        async def attempt() -> object:
            return await self._attempt(method, path, headers=headers, params=params, data=data,
                                       json_answer=json_answer)  # fmt: skip

        return await call_with_retry("codalab", attempt, self._retry, self._on_retry)

    async def _attempt(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        params: Sequence[tuple[str, str]],
        data: dict[str, str] | None,
        json_answer: bool = True,
    ) -> object:
        session = self._session
        if session is None:
            session = self._session = aiohttp.ClientSession()
        try:
            async with session.request(
                method,
                self._server + path,
                params=list(params),
                data=data,
                headers={**headers, "X-Requested-With": "XMLHttpRequest"},
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                text = await response.text(errors="replace")
        # An unreachable or silent server is one failure whichever request met it
        # (a poll makes several): the message names the server, not the request, so
        # one outage reads as one error and is warned once.
        except TimeoutError:
            raise TransientError(f"CodaLab at {self._server}: timed out") from None
        except aiohttp.ClientConnectionError as exc:
            raise TransientError(f"CodaLab at {self._server}: {type(exc).__name__}") from None
        except aiohttp.ClientPayloadError as exc:
            raise TransientError(f"{method} {path}: {type(exc).__name__}") from None
        if HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES:
            return _decode_json(text, path) if json_answer else None
        message = f"{method} {path} answered {status}"
        if path != TOKEN_PATH:
            # The token endpoint's body may repeat the posted form: never quoted.
            message += f": {self._scrub(text)}"
        if status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            # The pause asked for is not in the message: one outage, one message.
            raise TransientError(message, retry_after=parse_retry_after(retry_after))
        if status == HTTPStatus.UNAUTHORIZED or (
            path == TOKEN_PATH and _oauth_error(text) == "invalid_grant"
        ):
            raise TokenRejected(message, status)
        raise HttpRefused(message, status)

    def _scrub(self, text: str) -> str:
        """A short one-line excerpt of an error body, with any secret of ours blanked out."""
        secrets = [self._credentials.password]
        if self._token is not None:
            secrets += [self._token.access, self._token.refresh or ""]
        return " ".join(scrub(text, secrets).split())[:_SNIPPET]


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every spelling of every secret (longest first) replaced by ``***``."""
    for spelling in sorted(set(_spellings(secrets)), key=len, reverse=True):
        text = text.replace(spelling, "***")
    return text


def _spellings(secrets: Sequence[str]) -> Iterator[str]:
    """Each secret as a server may echo it: plain, form- and URL-encoded, JSON-escaped."""
    for secret in secrets:
        if not secret:
            continue
        yield secret
        yield urllib.parse.quote_plus(secret)
        yield urllib.parse.quote(secret, safe="")
        yield urllib.parse.quote(secret)
        yield json.dumps(secret)[1:-1]
        yield json.dumps(secret, ensure_ascii=False)[1:-1]


def _log_malformed(new: Sequence[tuple[str | None, str]]) -> None:
    """One warning for the bundles newly found malformed in a poll; each one at debug."""
    if not new:
        return
    reasons = Counter(reason for _uuid, reason in new)
    log.warning(
        "codalab.bundles_malformed",
        count=len(new),
        examples=[{"uuid": uuid, "reason": reason} for uuid, reason in new[:MALFORMED_EXAMPLES]],
        reasons=dict(reasons.most_common(MALFORMED_EXAMPLES)),
    )
    for uuid, reason in new:
        log.debug("codalab.bundle_malformed", uuid=uuid, reason=reason)


def _decode_json(text: str, path: str) -> object:
    try:
        decoded: object = json.loads(text)
    except ValueError:
        raise MalformedResponse(f"{path}: the answer is not JSON") from None
    return decoded


def _oauth_error(text: str) -> object:
    """The ``error`` field of an OAuth2 JSON error body, if there is one."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None
