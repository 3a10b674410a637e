"""An in-process CodaLab server (aiohttp.web) speaking the real wire format, traps included.

It follows ``codalab-rest-contract.md``: the OAuth2 password and refresh
grants, ``GET /rest/bundles`` with its keyword language, JSON:API documents,
the default limit of 10 and the anonymous view served for an unknown token;
``GET /rest/workers/info`` and worker check-ins with the bundle manager's
assignment rules.  Errors are plain text with ``Content-Type: text/html``.

Simulator conventions (not in the real server):

* a bundle's run time is carried in ``metadata.request_time`` as seconds with
  an ``s`` suffix (``"5s"``, ``"0.2s"``), which the stand-in worker sleeps;
* ``exit_after_num_runs`` in a check-in is the number of runs the worker will
  still accept; at 0 it is given no more work;
* a worker reports a completed run as ``{"bundle_uuid": ..., "state": "finished"}``
  (``"failed"`` is accepted too);
* ``add_raw_bundle`` resources appear in every search result except the
  anonymous ``.mine`` view, unfiltered by keywords;
* ``SimWorker.checkin_time`` is a reading of the injected clock (it drives
  ``worker_timeout``); ``/rest/workers/info`` reports wall-clock epoch
  seconds as the real server does.

It is also the server of ``codalab-scaler demo``, so everything it keeps is
bounded for long runs: ``requests`` keeps the latest ``record_limit``
entries, the oldest finished bundles are dropped past ``FINISHED_RETENTION``
and expired or surplus tokens are forgotten.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import random
import re
import secrets
import time
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from codalab_scaler.sizes import parse_size

ROOT_USER = "codalab"
CLIENT_ID = "codalab_cli_client"
SEARCH_RESULTS_LIMIT = 10
SERVER_VERSION = "1.7.5"
MAX_STREAM_DURATION = 600.0
FINISHED_RETENTION = 5000  # finished bundles kept for searches; older ones are dropped
TOKEN_RETENTION = 10_000  # refresh tokens kept; the oldest unused ones are forgotten

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the simulator received it (header names lower-cased)."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: str = ""

    @property
    def keywords(self) -> list[str]:
        return [value for key, value in self.query if key == "keywords"]


@dataclass(slots=True)
class SimBundle:
    uuid: str
    owner: str
    state: str
    command: str
    metadata: dict[str, object]
    public: bool = False
    worker_id: str | None = None

    @property
    def cpus(self) -> int:
        return _int_or_zero(self.metadata.get("request_cpus")) or 1

    @property
    def gpus(self) -> int:
        return _int_or_zero(self.metadata.get("request_gpus"))

    @property
    def memory_bytes(self) -> int:
        return parse_size(str(self.metadata.get("request_memory") or "2g"))

    @property
    def tag(self) -> str:
        return str(self.metadata.get("request_queue") or "").removeprefix("tag=")


@dataclass(slots=True)
class SimWorker:
    worker_id: str
    user: str
    checkin_time: float
    tag: str = ""
    cpus: int = 1
    gpus: int = 0
    memory_bytes: int = 2 * 1024**3
    free_disk_bytes: int = 100 * 1024**3
    hostname: str = ""
    tag_exclusive: bool = False
    exit_after_num_runs: int = 999999999
    is_terminating: bool = False
    preemptible: bool = False
    run_uuids: list[str] = field(default_factory=list)
    checkin_epoch: float = 0.0


@dataclass(slots=True)
class _Rule:
    remaining: int
    path_prefix: str
    status: int = 500
    seconds: float = 0.0


class _Answer(Exception):
    """Raised by a handler to answer early with ``response``."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, content_type="text/html")


def _oauth_error(error: str, description: str = "") -> _Answer:
    body = {"error": error, "error_description": description or error}
    return _Answer(web.json_response(body, status=401))


def _int_or_zero(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class CodaLabSimulator:
    """A CodaLab REST server in this process; ``start()`` binds it to a free port."""

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        token_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        worker_timeout: float = 60.0,
        *,
        protected_mode: bool = False,
        record_limit: int = 10_000,
    ) -> None:
        self.passwords: dict[str, str] = dict(
            users if users is not None else {ROOT_USER: ROOT_USER}
        )
        self.token_ttl = token_ttl
        self.worker_timeout = worker_timeout
        self.protected_mode = protected_mode
        self.requests: list[RecordedRequest] = []
        self.record_limit = record_limit
        self.workers: dict[str, SimWorker] = {}
        self._clock = clock
        self._user_ids: dict[str, str] = {}
        for name in self.passwords:
            self._user_id(name)
        self._bundles: dict[str, SimBundle] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._raw: list[dict[str, object]] = []
        self._access: dict[str, tuple[str, float]] = {}
        self._refresh: dict[str, str] = {}
        self._failures: list[_Rule] = []
        self._delays: list[_Rule] = []
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None:
            raise RuntimeError("the simulator is already started")
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/rest/oauth2/token", self._token)
        app.router.add_get("/rest/bundles", self._search)
        app.router.add_get("/rest/workers/info", self._workers_info)
        app.router.add_post("/rest/workers/{worker_id}/checkin", self._checkin)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._url = f"http://{bound_host}:{bound_port}"
        return self._url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the simulator is not started")
        return self._url

    # --- test and demo controls -----------------------------------------------------------

    def add_bundle(
        self,
        owner: str = ROOT_USER,
        *,
        cpus: int | None = 1,
        gpus: int | None = 0,
        memory: str = "2g",
        queue: str = "",
        duration: float = 5.0,
        metadata: Mapping[str, object] | None = None,
        public: bool = False,
    ) -> str:
        """Stage a run bundle owned by ``owner``; returns its uuid."""
        uuid = "0x" + uuid_module.uuid4().hex
        self._user_id(owner)
        fields: dict[str, object] = {
            "name": f"run-{len(self._bundles) + 1}",
            "request_cpus": cpus,
            "request_gpus": gpus,
            "request_memory": memory,
            "request_queue": queue,
            "request_priority": 0,
            "request_time": f"{max(duration, 0.0):g}s",
            "request_disk": "",
            "request_docker_image": "",
            "request_network": True,
            "created": int(time.time()),
            "staged_status": "Waiting for a worker.",
        }
        fields.update(metadata or {})
        command = f"sleep {max(duration, 0.0):g}"
        bundle = SimBundle(uuid, owner, "staged", command, fields, public=public)
        bundle.memory_bytes  # noqa: B018 - raises ValueError now rather than inside a check-in
        self._bundles[uuid] = bundle
        return uuid

    def add_raw_bundle(self, resource: Mapping[str, object]) -> None:
        """Put an arbitrary (possibly malformed) resource into search results."""
        self._raw.append(dict(resource))

    def bundle(self, uuid: str) -> SimBundle:
        return self._bundles[uuid]

    def bundles_in_state(self, state: str) -> list[str]:
        self.expire_silent_workers()
        return [b.uuid for b in self._bundles.values() if b.state == state]

    def fail_next(self, count: int, status: int = 500, path_prefix: str = "/rest/") -> None:
        self._failures.append(_Rule(count, path_prefix, status=status))

    def delay_next(self, count: int, seconds: float, path_prefix: str = "/rest/") -> None:
        self._delays.append(_Rule(count, path_prefix, seconds=seconds))

    def expire_all_tokens(self) -> None:
        """Forget every access and refresh token issued so far."""
        self._access.clear()
        self._refresh.clear()

    def expire_silent_workers(self) -> None:
        """Forget workers silent for ``worker_timeout`` and restage their runs."""
        now = self._clock()
        for worker in list(self.workers.values()):
            if now - worker.checkin_time > self.worker_timeout:
                self._forget(worker)

    # --- plumbing -------------------------------------------------------------------------

    def _user_id(self, name: str) -> str:
        return self._user_ids.setdefault(name, str(len(self._user_ids)))

    def _caller(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        entry = self._access.get(token) if scheme.lower() == "bearer" else None
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def _require_caller(self, request: web.Request) -> str:
        caller = self._caller(request)
        if caller is not None:
            return caller
        if "X-Requested-With" not in request.headers:
            raise _Answer(web.Response(status=303, headers={"Location": "/account/login"}))
        raise _Answer(_text(401, "Unauthorized: a valid access token is required."))

    @staticmethod
    def _take(rules: list[_Rule], path: str) -> _Rule | None:
        for rule in rules:
            if rule.remaining > 0 and path.startswith(rule.path_prefix):
                rule.remaining -= 1
                return rule
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.text() if request.can_read_body else ""
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=list(request.query.items()),
                headers={key.lower(): value for key, value in request.headers.items()},
                body=body,
            )
        )
        if len(self.requests) > self.record_limit:
            # Bounded for long demo runs: drop the oldest half at once (amortised O(1)).
            del self.requests[: len(self.requests) - self.record_limit // 2]
        self.expire_silent_workers()
        delay = self._take(self._delays, request.path)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        failure = self._take(self._failures, request.path)
        if failure is not None:
            return _text(failure.status, f"Unexpected Internal Error (simulated {failure.status})")
        try:
            return await handler(request)
        except _Answer as answer:
            return answer.response

    # --- OAuth2 ---------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client = _basic_client(request.headers.get("Authorization", ""))
        grant = form.get("grant_type")
        if grant == "password":
            if (client or form.get("client_id")) != CLIENT_ID:
                raise _oauth_error("invalid_client")
            user, password = form.get("username"), form.get("password")
            if not isinstance(user, str) or self.passwords.get(user) != password:
                raise _oauth_error("invalid_grant", "Invalid credentials given.")
        elif grant == "refresh_token":
            if client != CLIENT_ID:
                raise _oauth_error("invalid_client")
            refresh = form.get("refresh_token")
            user = self._refresh.pop(refresh, None) if isinstance(refresh, str) else None
            if user is None:
                raise _oauth_error("invalid_grant", "Invalid refresh token.")
        else:
            raise _Answer(web.json_response({"error": "unsupported_grant_type"}, status=400))
        access, refresh_token = self._issue(user)
        return web.json_response(
            {
                "access_token": access,
                "expires_in": self.token_ttl,
                "token_type": "Bearer",
                "scope": "default",
                "refresh_token": refresh_token,
            }
        )

    def _issue(self, user: str) -> tuple[str, str]:
        now = self._clock()
        if len(self._access) >= TOKEN_RETENTION:
            self._access = {t: e for t, e in self._access.items() if e[1] > now}
        while len(self._refresh) >= TOKEN_RETENTION:
            del self._refresh[next(iter(self._refresh))]
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self._access[access] = (user, now + self.token_ttl)
        self._refresh[refresh] = user
        return access, refresh

    # --- bundle search --------------------------------------------------------------------

    async def _search(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if caller is None and self.protected_mode:
            self._require_caller(request)
        includes = [n for v in request.query.getall("include", []) for n in v.split(",") if n]
        for name in includes:
            if name != "owner":
                raise _Answer(_text(400, f"Invalid include: {name}"))
        search = _Search.parse(request.query.getall("keywords", []))
        # Match and sort on the bundles themselves; render only the requested page.
        rows: list[tuple[SimBundle | None, dict[str, object]]] = []
        if not (search.mine and caller is None):
            rows += [
                (b, _NO_RESOURCE)
                for b in self._bundles.values()
                if self._visible(b, caller) and search.matches(b, caller)
            ]
            rows += [(None, raw) for raw in self._raw]
        if search.sort is not None:
            key, descending = search.sort
            rows.sort(key=lambda row: _sort_value(row, key), reverse=descending)
        if search.count:
            return web.json_response({"meta": {"result": len(rows)}})
        page = [
            self._resource(bundle) if bundle is not None else raw
            for bundle, raw in rows[search.offset : search.offset + search.limit]
        ]
        document: dict[str, object] = {"data": page, "meta": {"version": SERVER_VERSION}}
        if includes:
            document["included"] = self._included_users(page)
        return web.json_response(document)

    @staticmethod
    def _visible(bundle: SimBundle, caller: str | None) -> bool:
        return (
            bundle.public or caller == ROOT_USER or (caller is not None and bundle.owner == caller)
        )

    def _resource(self, bundle: SimBundle) -> dict[str, object]:
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
            "relationships": {
                "owner": {"data": {"type": "users", "id": self._user_ids[bundle.owner]}}
            },
        }

    def _included_users(self, page: list[dict[str, object]]) -> list[dict[str, object]]:
        names = {user_id: name for name, user_id in self._user_ids.items()}
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

    # --- workers --------------------------------------------------------------------------

    async def _workers_info(self, request: web.Request) -> web.Response:
        caller = self._require_caller(request)
        data = [
            self._worker_view(worker)
            for worker in self.workers.values()
            if caller == ROOT_USER or worker.user == caller
        ]
        return web.json_response({"data": data})

    def _worker_view(self, worker: SimWorker) -> dict[str, object]:
        running = [self._bundles[u] for u in worker.run_uuids if u in self._bundles]
        return {
            "worker_id": worker.worker_id,
            "tag": worker.tag,
            "cpus": worker.cpus,
            "gpus": worker.gpus,
            "memory_bytes": worker.memory_bytes,
            "free_disk_bytes": worker.free_disk_bytes,
            "checkin_time": int(worker.checkin_epoch),
            "run_uuids": list(worker.run_uuids),
            "tag_exclusive": worker.tag_exclusive,
            "exit_after_num_runs": worker.exit_after_num_runs,
            "is_terminating": worker.is_terminating,
            "preemptible": worker.preemptible,
            "cpus_in_use": sum(b.cpus for b in running),
            "gpus_in_use": sum(b.gpus for b in running),
        }

    async def _checkin(self, request: web.Request) -> web.Response:
        caller = self._require_caller(request)
        worker_id = request.match_info["worker_id"]
        try:
            body = await request.json()
        except ValueError:
            raise _Answer(_text(400, "Check-in body is not JSON.")) from None
        if not isinstance(body, dict):
            raise _Answer(_text(400, "Check-in body is not an object."))
        worker = self.workers.get(worker_id)
        if worker is not None and worker.user != caller:
            self._forget(worker)
            worker = None
        if worker is None:
            worker = SimWorker(worker_id=worker_id, user=caller, checkin_time=self._clock())
            self.workers[worker_id] = worker
        _update_worker(worker, body)
        worker.checkin_time, worker.checkin_epoch = self._clock(), time.time()
        self._record_runs(worker, body.get("runs"))
        if worker.is_terminating:
            self._forget(worker)
            return web.json_response(None)
        bundle = self._assignable(worker)
        if bundle is None:
            return web.json_response(None)
        bundle.state, bundle.worker_id = "running", worker.worker_id
        worker.run_uuids.append(bundle.uuid)
        return web.json_response(
            {
                "type": "run",
                "bundle": {
                    "uuid": bundle.uuid,
                    "command": bundle.command,
                    "metadata": dict(bundle.metadata),
                },
                "resources": {
                    "cpus": bundle.cpus,
                    "gpus": bundle.gpus,
                    "memory": bundle.memory_bytes,
                },
            }
        )

    def _record_runs(self, worker: SimWorker, runs: object) -> None:
        outcomes = {"finished": "ready", "failed": "failed"}
        for run in runs if isinstance(runs, list) else []:
            if not isinstance(run, dict):
                continue
            bundle = self._bundles.get(str(run.get("bundle_uuid")))
            final = outcomes.get(str(run.get("state")))
            if bundle is None or final is None or bundle.worker_id != worker.worker_id:
                continue
            bundle.state, bundle.worker_id = final, None
            if bundle.uuid in worker.run_uuids:
                worker.run_uuids.remove(bundle.uuid)
            self._finished.append(bundle.uuid)
        while len(self._finished) > FINISHED_RETENTION:
            self._bundles.pop(self._finished.popleft(), None)

    def _assignable(self, worker: SimWorker) -> SimBundle | None:
        """The bundle manager's choice for ``worker``: highest priority, then oldest."""
        if worker.exit_after_num_runs <= 0:
            return None
        running = [self._bundles[u] for u in worker.run_uuids if u in self._bundles]
        free_cpus = worker.cpus - sum(b.cpus for b in running)
        free_gpus = worker.gpus - sum(b.gpus for b in running)
        free_memory = worker.memory_bytes - sum(b.memory_bytes for b in running)
        staged = [b for b in self._bundles.values() if b.state == "staged"]
        staged.sort(key=lambda b: -_int_or_zero(b.metadata.get("request_priority")))
        for bundle in staged:
            if bundle.tag:
                if bundle.tag != worker.tag:
                    continue
            elif worker.tag_exclusive:
                continue
            if worker.user != ROOT_USER and bundle.owner != worker.user:
                continue
            if (
                bundle.cpus <= free_cpus
                and bundle.gpus <= free_gpus
                and bundle.memory_bytes <= free_memory
                and _disk(bundle) <= worker.free_disk_bytes
            ):
                return bundle
        return None

    def _forget(self, worker: SimWorker) -> None:
        for uuid in worker.run_uuids:
            bundle = self._bundles.get(uuid)
            if bundle is not None and bundle.state == "running":
                bundle.state, bundle.worker_id = "staged", None
        worker.run_uuids.clear()
        self.workers.pop(worker.worker_id, None)


@dataclass(slots=True)
class _Search:
    """The keyword language of ``GET /rest/bundles``, the parts a worker manager uses."""

    mine: bool = False
    count: bool = False
    limit: int = SEARCH_RESULTS_LIMIT
    offset: int = 0
    sort: tuple[str, bool] | None = None
    filters: list[tuple[str, list[str]]] = field(default_factory=list)
    words: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, keywords: list[str]) -> _Search:
        search = cls()
        for keyword in keywords:
            key, has_value, value = keyword.partition("=")
            if key == ".mine" and not has_value:
                search.mine = True
            elif key == ".count" and not has_value:
                search.count = True
            elif key in (".limit", ".offset") and has_value:
                if not value.isdigit():
                    raise _Answer(_text(400, f"Invalid value for {key}: {value}"))
                setattr(search, key[1:], int(value))
            elif key.startswith("."):
                raise _Answer(_text(400, f"Unknown keyword: {keyword}"))
            elif has_value and value in (".sort", ".sort-"):
                search.sort = (key, value == ".sort-")
            elif has_value:
                search.filters.append((key, value.split(",")))
            elif keyword:
                search.words.append(keyword)
        return search

    def matches(self, bundle: SimBundle, caller: str | None) -> bool:
        if self.mine and bundle.owner != caller:
            return False
        for key, patterns in self.filters:
            value = _field(bundle, key)
            if value is None or not any(_like(value, pattern) for pattern in patterns):
                return False
        name = str(bundle.metadata.get("name", ""))
        return all(bundle.uuid.startswith(word) or word in name for word in self.words)


def _field(bundle: SimBundle, key: str) -> str | None:
    """A bundle field or metadata value as the text the database compares."""
    top = {"uuid": bundle.uuid, "id": bundle.uuid, "state": bundle.state, "owner": bundle.owner}
    top |= {"command": bundle.command, "bundle_type": "run"}
    if key in top:
        return top[key]
    if key not in bundle.metadata:
        return None
    value = bundle.metadata[key]
    return "" if value is None else str(value)


def _like(value: str, pattern: str) -> bool:
    if ".*" not in pattern:
        return value == pattern
    regex = ".*".join(re.escape(part) for part in pattern.split(".*"))
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


_NO_RESOURCE: dict[str, object] = {}


def _sort_value(row: tuple[SimBundle | None, dict[str, object]], key: str) -> str:
    bundle, resource = row
    if bundle is not None:
        return _field(bundle, key) or ""
    raw_id = resource.get("id")
    return raw_id if key in ("id", "uuid") and isinstance(raw_id, str) else ""


def _disk(bundle: SimBundle) -> int:
    try:
        return parse_size(str(bundle.metadata.get("request_disk") or "0"))
    except ValueError:
        return 0


def _basic_client(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0]


def _update_worker(worker: SimWorker, body: Mapping[str, object]) -> None:
    """Copy the check-in fields; a field of the wrong type is a 400, like a schema error."""
    for name, kind in (
        ("tag", str),
        ("hostname", str),
        ("cpus", int),
        ("gpus", int),
        ("memory_bytes", int),
        ("free_disk_bytes", int),
        ("exit_after_num_runs", int),
        ("tag_exclusive", bool),
        ("is_terminating", bool),
        ("preemptible", bool),
    ):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _Answer(_text(400, f"Check-in field {name} has the wrong type."))
        setattr(worker, name, value)


async def run_bundle_stream(
    sim: CodaLabSimulator,
    *,
    rate_per_minute: float,
    total: int | None,
    rng: random.Random,
    owner: str = ROOT_USER,
    duration_range: tuple[float, float] = (1.0, 10.0),
) -> None:
    """Stage bundles at random (Poisson) times, ``rate_per_minute`` on average, until ``total``."""
    if rate_per_minute <= 0:
        raise ValueError("rate_per_minute must be positive")
    mean_gap = 60.0 / rate_per_minute
    low, high = (min(max(x, 0.0), MAX_STREAM_DURATION) for x in duration_range)
    added = 0
    while total is None or added < total:
        await asyncio.sleep(min(rng.expovariate(1.0 / mean_gap), 5 * mean_gap))
        sim.add_bundle(owner, duration=round(rng.uniform(low, high), 2))
        added += 1
