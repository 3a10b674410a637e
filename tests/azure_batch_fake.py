"""A fake Azure Batch service over real HTTP: the documented REST calls this project makes.

Project-owned, for tests (no Azure emulator exists).  It speaks API version
2025-06-01 as the Batch REST reference documents it:

* Every request must carry ``api-version=2025-06-01``, an ``ocp-date`` and
  ``Authorization: SharedKey <account>:<signature>``.  The signature is
  recomputed from the documented canonical string (verb; the eleven
  standard headers; the ``ocp-*`` headers, lower-cased and sorted; then
  ``/<account><path>`` and each query parameter as ``\\nname:value``, names
  lower-cased and sorted, values decoded) with HMAC-SHA256 under the
  base64-decoded key.  A mismatch is ``403 AuthenticationFailed``, as Batch
  answers.
* ``POST /jobs/{job}/tasks``: 201, or ``409 TaskExists``; ``404 JobNotFound``.
* ``GET /jobs/{job}/tasks``: ``$filter`` (``startswith(id,'...')``,
  ``<property> eq '...'``, ``and``/``or``, parentheses), ``$select``,
  ``maxresults``; pages linked by ``odata.nextLink`` (``$skiptoken``).
* ``GET /jobs/{job}/tasks/{task}``, ``GET /jobs/{job}/taskcounts``,
  ``POST /jobs/{job}/tasks/{task}/terminate`` (204; ``409 TaskCompleted``).

Errors use Batch's JSON body (``code``, ``message.value``).  The test
drives state changes (``set_state``, ``complete``) and injects failures
(``fail_next``).  Every request is recorded (method, path, query,
headers) for assertions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web

API_VERSION = "2025-06-01"
ACCOUNT = "codalabtest"
KEY = base64.b64encode(b"fake-batch-account-key-0123456789abcdef").decode()
JOB = "codalab-workers"
SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)
_TOKEN = re.compile(r"\s*(\(|\)|'(?:[^']|'')*'|[A-Za-z_][A-Za-z0-9_/]*|,)")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: str


@dataclass
class Failure:
    status: int
    code: str
    retry_after: str | None = None
    hang: bool = False


def string_to_sign(
    method: str, path: str, query: str, headers: dict[str, str], account: str
) -> str:
    """The documented SharedKey canonical string of a request (headers lower-cased)."""
    values = [headers.get(name, "") for name in SIGNED_HEADERS]
    if method not in ("GET", "HEAD") and not values[2]:
        values[2] = "0"  # a body-less POST signs Content-Length 0
    lines = [method, *values]
    ocp = sorted((k, v) for k, v in headers.items() if k.startswith("ocp-"))
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in ocp)
    resource = f"/{account}{path}"
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=False):
        params.setdefault(name.lower(), []).append(value)
    for name in sorted(params):
        resource += f"\n{name}:{','.join(sorted(params[name]))}"
    return "\n".join(lines) + "\n" + canonical_headers + resource


def sign(key: str, text: str) -> str:
    digest = hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "odata.metadata": "https://fake.batch/$metadata#Microsoft.Azure.Batch.Protocol"
        ".Entities.Container.errors/@Element",
        "code": code,
        "message": {"lang": "en-US", "value": f"{message}\nRequestId:fake\nTime:now"},
    }
    return web.json_response(body, status=status, headers=headers)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class FakeBatch:
    """The service's state: jobs with their tasks, and what the test asked to go wrong."""

    account: str = ACCOUNT
    key: str = KEY
    jobs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {JOB: {}})
    page_size: int = 1000
    requests: list[Recorded] = field(default_factory=list)
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    url: str = ""

    # -- what a test drives -------------------------------------------------------------

    def fail_next(self, operation: str, failure: Failure, times: int = 1) -> None:
        """The next ``times`` calls of ``operation`` (create, list, get, counts, terminate) fail."""
        self.failures.setdefault(operation, []).extend([failure] * times)

    def tasks(self, job: str = JOB) -> dict[str, dict[str, Any]]:
        return self.jobs[job]

    def set_state(self, task_id: str, state: str, job: str = JOB) -> None:
        task = self.jobs[job][task_id]
        task["previousState"], task["state"] = task["state"], state
        task["stateTransitionTime"] = _now()
        if state == "running":
            task["executionInfo"] = {**task.get("executionInfo", {}), "startTime": _now()}

    def complete(
        self,
        task_id: str,
        exit_code: int | None,
        failure: dict[str, Any] | None = None,
        job: str = JOB,
    ) -> None:
        self.set_state(task_id, "completed", job)
        info = self.jobs[job][task_id].setdefault("executionInfo", {"retryCount": 0})
        info.update({"endTime": _now(), "result": "failure" if failure or exit_code else "success"})
        if exit_code is not None:
            info["exitCode"] = exit_code
        if failure is not None:
            info["failureInfo"] = failure

    # -- the HTTP side --------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._protocol])
        app.router.add_post("/jobs/{job}/tasks", self._create)
        app.router.add_get("/jobs/{job}/tasks", self._list)
        app.router.add_get("/jobs/{job}/tasks/{task}", self._get)
        app.router.add_post("/jobs/{job}/tasks/{task}/terminate", self._terminate)
        app.router.add_get("/jobs/{job}/taskcounts", self._counts)
        return app

    @web.middleware
    async def _protocol(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.text()
        headers = {k.lower(): v for k, v in request.headers.items()}
        raw = urlsplit(request.raw_path)
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), headers, body)
        )
        echo = {"client-request-id": headers.get("client-request-id", ""), "request-id": "fake"}
        if request.query.get("api-version") != API_VERSION:
            return _error(400, "MissingRequiredQueryParameter", "api-version", echo)
        if "ocp-date" not in headers:
            return _error(400, "MissingRequiredHeader", "ocp-date", echo)
        expected = f"SharedKey {self.account}:" + sign(
            self.key, string_to_sign(request.method, raw.path, raw.query, headers, self.account)
        )
        if not hmac.compare_digest(headers.get("authorization", ""), expected):
            return _error(403, "AuthenticationFailed", "Server failed to authenticate", echo)
        operation = request.match_info.route.handler.__name__.strip("_")
        queued = self.failures.get(operation)
        if queued:
            failure = queued.pop(0)
            if failure.hang:
                await asyncio.sleep(3600)
            extra = {} if failure.retry_after is None else {"Retry-After": failure.retry_after}
            return _error(failure.status, failure.code, "injected", {**echo, **extra})
        response: web.StreamResponse = await handler(request)
        response.headers.update(echo)
        return response

    def _job(self, request: web.Request) -> dict[str, dict[str, Any]] | None:
        return self.jobs.get(request.match_info["job"])

    async def _create(self, request: web.Request) -> web.StreamResponse:
        tasks = self._job(request)
        if tasks is None:
            return _error(404, "JobNotFound", "The specified job does not exist.")
        if not request.content_type.startswith("application/json"):
            return _error(400, "InvalidHeaderValue", "Content-Type")
        task = json.loads(await request.text())
        if not isinstance(task.get("id"), str) or not isinstance(task.get("commandLine"), str):
            return _error(400, "MissingRequiredProperty", "id and commandLine are required")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", task["id"]):
            return _error(400, "InvalidPropertyValue", "id")
        if task["id"] in tasks:
            return _error(409, "TaskExists", "The specified task already exists.")
        stored = copy.deepcopy(task)
        stored.update(
            url=f"{self.url}/jobs/{request.match_info['job']}/tasks/{task['id']}",
            eTag="0x1",
            creationTime=_now(),
            lastModified=_now(),
            state="active",
            stateTransitionTime=_now(),
        )
        tasks[task["id"]] = stored
        return web.Response(status=201, headers={"ETag": "0x1", "DataServiceId": stored["url"]})

    async def _list(self, request: web.Request) -> web.StreamResponse:
        tasks = self._job(request)
        if tasks is None:
            return _error(404, "JobNotFound", "The specified job does not exist.")
        try:
            matches = parse_filter(request.query.get("$filter", ""))
        except ValueError as exc:
            return _error(400, "InvalidQueryParameterValue", f"$filter: {exc}")
        selected = [t for t in tasks.values() if matches(t)]
        size = min(int(request.query.get("maxresults", 1000)), self.page_size)
        start = int(request.query.get("$skiptoken", 0))
        page = selected[start : start + size]
        body: dict[str, Any] = {
            "odata.metadata": f"{self.url}/$metadata#tasks",
            "value": [_select(t, request.query.get("$select")) for t in page],
        }
        if start + size < len(selected):
            query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
            query["$skiptoken"] = str(start + size)
            body["odata.nextLink"] = f"{self.url}{request.path}?{urlencode(query)}"
        return web.json_response(body)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        tasks = self._job(request)
        if tasks is None:
            return _error(404, "JobNotFound", "The specified job does not exist.")
        task = tasks.get(request.match_info["task"])
        if task is None:
            return _error(404, "TaskNotFound", "The specified task does not exist.")
        return web.json_response(_select(task, request.query.get("$select")))

    async def _terminate(self, request: web.Request) -> web.StreamResponse:
        tasks = self._job(request)
        if tasks is None:
            return _error(404, "JobNotFound", "The specified job does not exist.")
        task = tasks.get(request.match_info["task"])
        if task is None:
            return _error(404, "TaskNotFound", "The specified task does not exist.")
        if task["state"] == "completed":
            return _error(409, "TaskCompleted", "The specified task is already completed.")
        self.set_state(task["id"], "completed", request.match_info["job"])
        task.setdefault("executionInfo", {})["result"] = "failure"
        return web.Response(status=204)

    async def _counts(self, request: web.Request) -> web.StreamResponse:
        tasks = self._job(request)
        if tasks is None:
            return _error(404, "JobNotFound", "The specified job does not exist.")
        counts = dict.fromkeys(("active", "running", "completed", "succeeded", "failed"), 0)
        for task in tasks.values():
            state = "running" if task["state"] == "preparing" else task["state"]
            counts[state] += 1
            if task["state"] == "completed":
                result = task.get("executionInfo", {}).get("result")
                counts["succeeded" if result == "success" else "failed"] += 1
        return web.json_response({"taskCounts": counts, "taskSlotCounts": counts})


def _select(task: dict[str, Any], select: str | None) -> dict[str, Any]:
    if not select:
        return copy.deepcopy(task)
    names = [name.strip() for name in select.split(",")]
    return {name: copy.deepcopy(task[name]) for name in names if name in task}


Predicate = Callable[[dict[str, Any]], bool]


def parse_filter(text: str) -> Predicate:
    """A predicate for a Batch OData ``$filter`` (the subset this project's calls use)."""
    if not text.strip():
        return lambda _task: True
    tokens = list(_TOKEN.findall(text))
    if "".join(tokens).replace(" ", "") != re.sub(r"\s+", "", text):
        raise ValueError("unsupported syntax")
    parser = _FilterParser(tokens)
    predicate = parser.expression()
    if parser.peek() is not None:
        raise ValueError(f"unexpected {parser.peek()}")
    return predicate


def _both(a: Predicate, b: Predicate) -> Predicate:
    return lambda task: a(task) and b(task)


def _either(a: Predicate, b: Predicate) -> Predicate:
    return lambda task: a(task) or b(task)


@dataclass
class _FilterParser:
    """Recursive descent over ``expr := term (('and'|'or') term)*``, left to right."""

    tokens: list[str]
    position: int = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise ValueError(f"expected {expected or 'more'}, found {token}")
        self.position += 1
        return token

    def literal(self) -> str:
        token = self.take()
        if not token.startswith("'"):
            raise ValueError(f"expected a string, found {token}")
        return token[1:-1].replace("''", "'")

    def term(self) -> Predicate:
        token = self.take()
        if token == "(":
            inner = self.expression()
            self.take(")")
            return inner
        if token == "startswith":
            self.take("(")
            name = self.take()
            self.take(",")
            prefix = self.literal()
            self.take(")")
            return lambda task: str(task.get(name, "")).startswith(prefix)
        self.take("eq")
        value = self.literal()
        return lambda task: str(task.get(token)) == value

    def expression(self) -> Predicate:
        left = self.term()
        while self.peek() in ("and", "or"):
            combine = _both if self.take() == "and" else _either
            left = combine(left, self.term())
        return left


@contextlib.asynccontextmanager
async def running(fake: FakeBatch | None = None) -> AsyncIterator[FakeBatch]:
    """The fake served on 127.0.0.1 on a free port; ``fake.url`` is its service URL."""
    fake = fake or FakeBatch()
    runner = web.AppRunner(
        fake.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def serve(port: int) -> None:
    """Serve the fake until interrupted (``python -m tests.azure_batch_fake [port]``)."""
    fake = FakeBatch()
    runner = web.AppRunner(
        fake.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"http://127.0.0.1:{port}"
    print(f"fake Azure Batch at {fake.url} account {ACCOUNT} job {JOB}", flush=True)  # noqa: T201 - a command that says where it listens
    print(f"AZURE_BATCH_ACCESS_KEY={KEY}", flush=True)  # noqa: T201 - the fake's fixed test key
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    import sys

    asyncio.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
