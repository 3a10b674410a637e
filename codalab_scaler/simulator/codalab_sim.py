"""An in-process CodaLab server (aiohttp.web) speaking the real wire format, traps included.

It follows ``codalab-rest-contract.md``: the OAuth2 password and refresh
grants, ``GET /rest/bundles`` with its keyword language, JSON:API documents,
the default limit of 10 and the anonymous view served for an unknown token;
``GET /rest/workers/info`` served from the workers' real check-ins (a worker
stays listed until ``worker_timeout``, 60 s, after its last one, exited or
not) and a bundle manager that dispatches to listed workers, exited ones
included, with per-user parallel-run quotas (``run_quotas``; see
``workers.py``).  Errors are plain text with ``Content-Type: text/html``.

Simulator conventions (not in the real server):

* a bundle's run time is carried in ``metadata.request_time`` as seconds with
  an ``s`` suffix (``"5s"``, ``"0.2s"``), which the stand-in worker sleeps;
* ``exit_after_num_runs`` in a check-in is the number of runs the worker will
  still accept; at 0 it is given no more work;
* a worker reports a completed run as ``{"bundle_uuid": ..., "state": "finished"}``
  (``"failed"`` is accepted too);
* ``add_raw_bundle`` resources appear in every search result except the
  anonymous ``.mine`` view, unfiltered by keywords (or only in searches
  with the free-text word ``only_in``);
* a dispatched run is handed over in the worker's next check-in answer (the
  real server pushes it into the check-in the worker holds open);
* ``SimBundle.staged_at`` and ``started_at`` record when a run was staged
  and picked up, ``runs_by_worker`` how many runs each worker picked up and
  ``failed_dispatches`` the runs dispatched to workers that did not;
* ``SimWorker.checkin_time`` is a reading of the injected clock (it drives
  ``worker_timeout``); ``/rest/workers/info`` reports wall-clock epoch
  seconds as the real server does.

It is also the server of ``codalab-scaler demo``, so everything it keeps is
bounded for long runs: ``requests`` keeps the latest ``record_limit``
entries, the oldest finished bundles are dropped past ``FINISHED_RETENTION``
and expired or surplus tokens are forgotten.
"""

from __future__ import annotations

import time
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from codalab_scaler.simulator.documents import SERVER_VERSION, bundle_resource, included_users
from codalab_scaler.simulator.faults import Faults
from codalab_scaler.simulator.model import ROOT_USER, SimBundle, SimWorker
from codalab_scaler.simulator.oauth import (
    CLIENT_ID,
    TOKEN_RETENTION,
    TokenStore,
    answer_token_request,
)
from codalab_scaler.simulator.search import SEARCH_RESULTS_LIMIT, Search, sort_value
from codalab_scaler.simulator.stream import MAX_STREAM_DURATION, run_bundle_stream
from codalab_scaler.simulator.wire import Answer, RecordedRequest, text_response
from codalab_scaler.simulator.workers import FINISHED_RETENTION, WorkerRegistry

__all__ = [
    "CLIENT_ID",
    "FINISHED_RETENTION",
    "MAX_STREAM_DURATION",
    "ROOT_USER",
    "SEARCH_RESULTS_LIMIT",
    "SERVER_VERSION",
    "TOKEN_RETENTION",
    "CodaLabSimulator",
    "RecordedRequest",
    "SimBundle",
    "SimWorker",
    "run_bundle_stream",
]

_NO_RESOURCE: dict[str, object] = {}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        run_quotas: Mapping[str, int] | None = None,
        seed: int = 0,
    ) -> None:
        self.passwords: dict[str, str] = dict(
            users if users is not None else {ROOT_USER: ROOT_USER}
        )
        self.token_ttl = token_ttl
        self.worker_timeout = worker_timeout
        self.protected_mode = protected_mode
        self.requests: list[RecordedRequest] = []
        self.record_limit = record_limit
        self._user_ids: dict[str, str] = {}
        for name in self.passwords:
            self._user_id(name)
        self._bundles: dict[str, SimBundle] = {}
        self._clock = clock
        self._registry = WorkerRegistry(self._bundles, clock, run_quotas=run_quotas, seed=seed)
        self._raw: list[tuple[str | None, dict[str, object]]] = []
        self._tokens = TokenStore(clock)
        self._faults = Faults()
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
        app.router.add_post("/rest/workers/{worker_id}/checkout", self._checkout)
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
    def workers(self) -> dict[str, SimWorker]:
        """The checked-in workers by id."""
        return self._registry.workers

    @property
    def runs_by_worker(self) -> dict[str, int]:
        """Every worker that ever registered (the latest ``WORKER_RECORDS``): runs it picked up."""
        return self._registry.runs_by_worker

    @property
    def failed_dispatches(self) -> int:
        """Runs the bundle manager dispatched to a worker that did not pick them up."""
        return self._registry.failed_dispatches

    @property
    def checkouts(self) -> list[str]:
        """Worker ids checked out through ``POST /rest/workers/<id>/checkout``, in order."""
        return self._registry.checkouts

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
        bundle = SimBundle(
            uuid, owner, "staged", command, fields, public=public, staged_at=self._clock()
        )
        bundle.memory_bytes  # noqa: B018 - raises ValueError now rather than inside a check-in
        self._bundles[uuid] = bundle
        return uuid

    def add_raw_bundle(self, resource: Mapping[str, object], only_in: str | None = None) -> None:
        """Put an arbitrary (possibly malformed) resource into search results.

        With ``only_in``, only searches that have that free-text word see it.
        """
        self._raw.append((only_in, dict(resource)))

    def bundle(self, uuid: str) -> SimBundle:
        return self._bundles[uuid]

    def bundles_in_state(self, state: str) -> list[str]:
        self.expire_silent_workers()
        return [b.uuid for b in self._bundles.values() if b.state == state]

    def fail_next(
        self, count: int, status: int = 500, path_prefix: str = "/rest/", *, echo_body: bool = False
    ) -> None:
        """Answer the next ``count`` requests under ``path_prefix`` with ``status``."""
        self._faults.fail_next(count, status, path_prefix, echo_body=echo_body)

    def delay_next(self, count: int, seconds: float, path_prefix: str = "/rest/") -> None:
        self._faults.delay_next(count, seconds, path_prefix)

    def expire_all_tokens(self) -> None:
        """Forget every access and refresh token issued so far."""
        self._tokens.clear()

    def expire_silent_workers(self) -> None:
        """Forget workers silent for ``worker_timeout`` and restage their runs."""
        self._registry.expire_silent(self.worker_timeout)

    # --- plumbing -------------------------------------------------------------------------

    def _user_id(self, name: str) -> str:
        return self._user_ids.setdefault(name, str(len(self._user_ids)))

    def _caller(self, request: web.Request) -> str | None:
        return self._tokens.bearer_user(request.headers.get("Authorization", ""))

    def _require_caller(self, request: web.Request) -> str:
        caller = self._caller(request)
        if caller is not None:
            return caller
        if "X-Requested-With" not in request.headers:
            raise Answer(web.Response(status=303, headers={"Location": "/account/login"}))
        raise Answer(text_response(401, "Unauthorized: a valid access token is required."))

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
        self._registry.dispatch()
        injected = await self._faults.apply(request.path, body)
        if injected is not None:
            return injected
        try:
            return await handler(request)
        except Answer as answer:
            return answer.response

    # --- OAuth2 ---------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        return await answer_token_request(request, self._tokens, self.passwords, self.token_ttl)

    # --- bundle search --------------------------------------------------------------------

    async def _search(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if caller is None and self.protected_mode:
            self._require_caller(request)
        includes = [n for v in request.query.getall("include", []) for n in v.split(",") if n]
        for name in includes:
            if name != "owner":
                raise Answer(text_response(400, f"Invalid include: {name}"))
        search = Search.parse(request.query.getall("keywords", []))
        # Match and sort on the bundles themselves; render only the requested page.
        rows: list[tuple[SimBundle | None, dict[str, object]]] = []
        if not (search.mine and caller is None):
            rows += [
                (b, _NO_RESOURCE)
                for b in self._bundles.values()
                if self._visible(b, caller) and search.matches(b, caller)
            ]
            rows += [(None, raw) for word, raw in self._raw if word is None or word in search.words]
        if search.sort is not None:
            key, descending = search.sort
            rows.sort(key=lambda row: sort_value(row, key), reverse=descending)
        if search.count:
            return web.json_response({"meta": {"result": len(rows)}})
        page = [
            bundle_resource(bundle, self._user_ids[bundle.owner]) if bundle is not None else raw
            for bundle, raw in rows[search.offset : search.offset + search.limit]
        ]
        document: dict[str, object] = {"data": page, "meta": {"version": SERVER_VERSION}}
        if includes:
            document["included"] = included_users(page, self._user_ids)
        return web.json_response(document)

    @staticmethod
    def _visible(bundle: SimBundle, caller: str | None) -> bool:
        return (
            bundle.public or caller == ROOT_USER or (caller is not None and bundle.owner == caller)
        )

    # --- workers --------------------------------------------------------------------------

    async def _workers_info(self, request: web.Request) -> web.Response:
        caller = self._require_caller(request)
        return web.json_response({"data": self._registry.info(caller)})

    async def _checkout(self, request: web.Request) -> web.Response:
        caller = self._require_caller(request)
        self._registry.checkout(request.match_info["worker_id"], caller)
        return web.Response(status=200)

    async def _checkin(self, request: web.Request) -> web.Response:
        caller = self._require_caller(request)
        try:
            body = await request.json()
        except ValueError:
            raise Answer(text_response(400, "Check-in body is not JSON.")) from None
        if not isinstance(body, dict):
            raise Answer(text_response(400, "Check-in body is not an object."))
        run = self._registry.checkin(request.match_info["worker_id"], caller, body)
        return web.json_response(run)
