"""A fake Kubernetes API server over real HTTP: exactly the calls the scaler makes.

Speaks the wire format (JSON objects, ``Status`` errors, ``resourceVersion``,
``labelSelector``, ``limit``/``continue``) so the real kubernetes_asyncio
client talks to it through a real kubeconfig file.  Pods never run: a test
moves them (``set_phase``).  ``fail`` makes the next matching calls answer
an error, with ``Retry-After`` when given.  Every request is recorded.

Run by hand: ``python -m tests.kube_fake --port 6443 --kubeconfig FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

TOKEN = "fake-cluster-token"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
KINDS = {
    "pods": ("v1", "Pod"),
    "secrets": ("v1", "Secret"),
    "leases": ("coordination.k8s.io/v1", "Lease"),
}


@dataclass
class Fault:
    method: str
    resource: str
    status: int
    times: int = 1
    retry_after: str | None = None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class KubeFake:
    namespaces: set[str] = field(default_factory=lambda: {"default"})
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    url: str = ""
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    # -- control ----------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def write_kubeconfig(self, path: Path, namespace: str = "default", token: str = TOKEN) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    def fail(
        self,
        method: str,
        resource: str,
        status: int,
        times: int = 1,
        retry_after: str | None = None,
    ) -> None:
        self.faults.append(Fault(method, resource, status, times, retry_after))

    def pods(self, namespace: str = "default") -> list[dict[str, Any]]:
        return self.list("pods", namespace)

    def list(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        return [
            obj
            for (res, ns, _), obj in sorted(self.objects.items())
            if res == resource and ns == namespace
        ]

    def set_phase(self, name: str, phase: str, namespace: str = "default", **status: Any) -> None:
        pod = self.objects[("pods", namespace, name)]
        pod["status"] = {"phase": phase, **status}
        pod["metadata"]["resourceVersion"] = str(next(self._versions))

    def waiting(
        self, name: str, reason: str, message: str = "", namespace: str = "default"
    ) -> None:
        self.set_phase(name, "Pending", namespace, containerStatuses=[
            {"name": "cl-worker", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
             "state": {"waiting": {"reason": reason, "message": message}}}
        ])  # fmt: skip

    def terminated(
        self, name: str, phase: str, exit_code: int, finished_at: str, namespace: str = "default"
    ) -> None:
        reason = "Error" if exit_code else "Completed"
        ended = {"exitCode": exit_code, "reason": reason, "finishedAt": finished_at}
        self.set_phase(name, phase, namespace, containerStatuses=[
            {"name": "cl-worker", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
             "state": {"terminated": ended}}
        ])  # fmt: skip

    def dump(self) -> str:
        """Every stored object, as JSON: what a test searches for a leaked secret."""
        return json.dumps(list(self.objects.values()))

    # -- the API ----------------------------------------------------------------------

    # One dispatcher reads like the API's routing table: a branch per verb and shape.
    async def _handle(self, request: web.Request) -> web.StreamResponse:  # noqa: C901, PLR0911
        body = await request.json() if request.can_read_body else None
        self.requests.append(Request(request.method, request.path, dict(request.query), body))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized", "Unauthorized")
        match = re.fullmatch(
            r"/(?:api/v1|apis/coordination\.k8s\.io/v1)/namespaces/([^/]+)/(pods|secrets|leases)(?:/([^/]+))?",
            request.path,
        )
        if match is None:
            return _status(404, "NotFound", f"the server could not find {request.path}")
        namespace, resource, name = match.groups()
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and fault.resource == resource:
                fault.times -= 1
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return _status(fault.status, "Injected", f"injected {fault.status}", headers)
        if namespace not in self.namespaces:
            return _status(404, "NotFound", f'namespaces "{namespace}" not found')
        key = (resource, namespace, name or "")
        if request.method == "GET" and name is None:
            return self._list(resource, namespace, request.query)
        if request.method == "GET":
            found = self.objects.get(key)
            if found is None:
                return _status(404, "NotFound", f'{resource} "{name}" not found')
            return web.json_response(found)
        if request.method == "POST" and name is None:
            return self._create(resource, namespace, body)
        if request.method == "PUT" and name is not None:
            return self._replace(key, body)
        if request.method == "DELETE" and name is not None:
            gone = self.objects.pop(key, None)
            if gone is None:
                return _status(404, "NotFound", f'{resource} "{name}" not found')
            return web.json_response(gone)
        return _status(405, "MethodNotAllowed", "method not allowed")

    def _list(self, resource: str, namespace: str, query: Mapping[str, str]) -> web.Response:
        wanted = _selector(query.get("labelSelector", ""))
        items = [
            obj for obj in self.list(resource, namespace)
            if all(test(obj["metadata"].get("labels") or {}) for test in wanted)
        ]  # fmt: skip
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        more = start + limit < len(items)
        api, kind = KINDS[resource]
        meta: dict[str, Any] = {"resourceVersion": str(next(self._versions))}
        if more:
            meta["continue"] = str(start + limit)
            meta["remainingItemCount"] = len(items) - start - limit
        return web.json_response(
            {"apiVersion": api, "kind": kind + "List", "metadata": meta, "items": page}
        )

    def _create(self, resource: str, namespace: str, body: Any) -> web.Response:
        meta = body.get("metadata") or {} if isinstance(body, dict) else {}
        name = meta.get("name")
        if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
            return _status(422, "Invalid", f"metadata.name: Invalid value: {name!r}")
        key = (resource, namespace, name)
        if key in self.objects:
            return _status(409, "AlreadyExists", f'{resource} "{name}" already exists')
        obj = copy.deepcopy(body)
        api, kind = KINDS[resource]
        obj.update(apiVersion=api, kind=kind)
        version = str(next(self._versions))
        obj["metadata"].update(namespace=namespace, resourceVersion=version, uid=f"uid-{name}",
                               creationTimestamp="2026-01-01T00:00:00Z")  # fmt: skip
        if resource == "pods":
            obj["status"] = {"phase": "Pending"}
        self.objects[key] = obj
        return web.json_response(obj, status=201)

    def _replace(self, key: tuple[str, str, str], body: Any) -> web.Response:
        current = self.objects.get(key)
        if current is None:
            return _status(404, "NotFound", f'{key[0]} "{key[2]}" not found')
        given = (body.get("metadata") or {}).get("resourceVersion")
        if given != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified; please apply your "
                           "changes to the latest version and try again")  # fmt: skip
        obj = copy.deepcopy(body)
        obj["metadata"] = {**current["metadata"], **obj["metadata"],
                           "resourceVersion": str(next(self._versions))}  # fmt: skip
        self.objects[key] = obj
        return web.json_response(obj)


def _selector(text: str) -> list[Any]:
    tests: list[Any] = []
    for term in filter(None, text.split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            tests.append(lambda labels, k=k, v=v: labels.get(k) != v)
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            tests.append(lambda labels, k=k, v=v: labels.get(k) == v)
        else:
            tests.append(lambda labels, k=term: k in labels)
    return tests


def _status(
    code: int, reason: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip
    return web.json_response(body, status=code, headers=dict(headers or {}))


async def _main(port: int, kubeconfig: Path) -> None:
    fake = KubeFake()
    print("fake Kubernetes API at", await fake.start(port), flush=True)  # noqa: T201
    fake.write_kubeconfig(kubeconfig)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_main(args.port, args.kubeconfig))
