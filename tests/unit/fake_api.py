"""An in-memory Kubernetes API server on localhost, with enough of the real one's behaviour for the
operator's controller: create (409 AlreadyExists), get (404), list by label and field selectors, JSON
merge patch (a resourceVersion precondition: 409 Conflict; the status subresource apart from the rest;
a spec change bumps metadata.generation), delete with a UID precondition and the garbage collector's
cascade (or `orphan`), a record of every change as a watch event, and watches (`?watch=true` from a
resourceVersion, in a namespace or the cluster's, as metadata only when asked).

What it does not do, a test does by hand: the Job controller (`finish`, `pod`), the kubelet, admission.
Refusals are set up with `refuse`: the next matching requests get that status and message, as a quota,
a webhook or an overloaded server would answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client

from codex_operator.kube import Kube

KINDS = {
    "configmaps": "ConfigMap",
    "services": "Service",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "pods": "Pod",
    "events": "Event",
    "jobs": "Job",
    "codextrainingjobs": "CodexTrainingJob",
    "workloads": "Workload",
}
API_VERSIONS = {"jobs": "batch/v1", "codextrainingjobs": "codex.ml/v1alpha1", "workloads": "kueue.x-k8s.io/v1beta2"}


def status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason}
    # a throttled call may come again at once (the real server says 1 s): without the header the client backs
    # off 0.5 s, 1 s, 2 s ... and a test of a refusal that never ends would wait half a minute
    headers = {"Retry-After": "0"} if code == 429 else None
    return web.json_response(body | {"code": code}, status=code, headers=headers)


def merge(base: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


def _labels_match(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k) != v:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        path, want = term.split("=", 1)
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != want:
            return False
    return True


@dataclass
class Rule:
    method: str
    plural: str
    code: int
    message: str
    times: int | None  # None: every time
    name: str | None = None


class FakeAPI:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name)
        self.watch: list[tuple[str, dict[str, Any]]] = []  # (ADDED|MODIFIED|DELETED, object) since last drained
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.rules: list[Rule] = []
        self.metrics_text: dict[str, str] = {}  # pod name -> what its /metrics serves
        self.frozen: set[str] = set()  # pods whose /metrics never answers (a process stopped by SIGSTOP)
        self._rv = itertools.count(1)
        self.version = 0  # the newest resourceVersion
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (version, plural, event, object)
        self.listeners: set[asyncio.Event] = set()  # one per watch being served, set on each change
        self.watches: list[dict[str, str]] = []  # the query of each watch request

    # ---------------------------------------------------------------- for tests

    def refuse(
        self, method: str, plural: str, code: int, message: str, times: int | None = 1, name: str | None = None
    ) -> None:
        self.rules.append(Rule(method, plural, code, message, times, name))

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((plural, namespace, name))

    def names(self, plural: str, namespace: str = "team-a") -> list[str]:
        return sorted(n for (p, ns, n) in self.objects if p == plural and ns == namespace)

    def put(self, plural: str, obj: dict[str, Any], event: str | None = None) -> dict[str, Any]:
        """Create or replace an object as a controller would (no admission, no conflict check)."""
        meta = obj.setdefault("metadata", {})
        key = (plural, meta.get("namespace", "team-a"), meta["name"])
        meta.setdefault("namespace", key[1])
        old = self.objects.get(key)
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta.setdefault("generation", 1)
        else:  # a replacement keeps who the object is
            for k in ("uid", "creationTimestamp", "generation"):
                if k in old["metadata"]:
                    meta.setdefault(k, old["metadata"][k])
        obj.setdefault("kind", KINDS[plural])
        obj.setdefault("apiVersion", API_VERSIONS.get(plural, "v1"))
        meta["resourceVersion"] = str(self._next())
        self.objects[key] = obj
        self._record(plural, event or ("ADDED" if old is None else "MODIFIED"), obj)
        return obj

    def _next(self) -> int:
        self.version = next(self._rv)
        return self.version

    def _record(self, plural: str, event: str, obj: dict[str, Any]) -> None:
        self.watch.append((event, copy.deepcopy(obj)))
        self.history.append((self.version, plural, event, copy.deepcopy(obj)))
        for changed in self.listeners:
            changed.set()

    def delete(self, plural: str, namespace: str, name: str, propagation: str = "Background") -> None:
        """Delete an object; the garbage collector then deletes what it owned (or, orphan, unlinks it)."""
        obj = self.objects.pop((plural, namespace, name))
        obj["metadata"]["resourceVersion"] = str(self._next())
        self._record(plural, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        for (p, ns, n), child in list(self.objects.items()):
            refs = child["metadata"].get("ownerReferences") or []
            if ns != namespace or not any(r.get("uid") == uid for r in refs):
                continue
            if propagation == "Orphan":
                child["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid] or None
                if child["metadata"]["ownerReferences"] is None:
                    del child["metadata"]["ownerReferences"]
                self.put(p, child)
            else:
                self.delete(p, ns, n)

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        out, self.watch = self.watch, []
        return out

    # ---------------------------------------------------------------- HTTP

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        ns, plural, name, sub = _route(request.path)
        for rule in self.rules:
            if rule.method == request.method and rule.plural == plural and rule.name in (None, name):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self.rules.remove(rule)
                return status(rule.code, "Refused", rule.message)
        if plural == "pods" and name and sub == "proxy/metrics":
            pod = name.split(":")[0]
            while pod in self.frozen:  # until the test thaws it
                await asyncio.sleep(0.05)
            if pod not in self.metrics_text:
                return status(503, "ServiceUnavailable", "no endpoints")
            return web.Response(text=self.metrics_text[pod])
        if name is None or ns is None:
            if request.method == "GET" or ns is None:
                return await self._list_or_watch(request, plural, ns)
            return self._create(plural, ns, await request.json())
        key = (plural, ns, name)
        if key not in self.objects:
            return status(404, "NotFound", f'{plural} "{name}" not found')
        if request.method == "GET":
            return web.json_response(self.objects[key])
        if request.method == "PATCH":
            return self._patch(key, await request.json(), sub)
        if request.method == "DELETE":
            body = json.loads(await request.text() or "{}")
            want = (body.get("preconditions") or {}).get("uid")
            if want and want != self.objects[key]["metadata"]["uid"]:
                return status(409, "Conflict", f"Precondition failed: UID in precondition: {want}")
            obj = self.objects[key]
            self.delete(plural, ns, name, body.get("propagationPolicy") or "Background")
            return web.json_response(obj)
        return status(405, "MethodNotAllowed", request.method)

    def _selected(self, obj: dict[str, Any], ns: str | None, query: Any) -> bool:
        return (
            ns in (None, obj["metadata"]["namespace"])
            and _labels_match(obj["metadata"].get("labels") or {}, query.get("labelSelector", ""))
            and _fields_match(obj, query.get("fieldSelector", ""))
        )

    async def _list_or_watch(self, request: web.Request, plural: str, ns: str | None) -> web.StreamResponse:
        accept = request.headers.get("Accept", "")
        as_metadata = "as=PartialObjectMetadata" in accept
        watching = request.query.get("watch") in ("true", "1")
        if as_metadata and ("as=PartialObjectMetadataList" in accept) == watching:  # the real server's answer
            return status(
                406, "NotAcceptable", "you requested PartialObjectMetadata, but the requested object is a list"
            )

        def shown(obj: dict[str, Any]) -> dict[str, Any]:
            if as_metadata:
                return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
            return obj

        if not watching:
            items = [
                {k: v for k, v in shown(o).items() if k not in ("kind", "apiVersion")}  # as a LIST's items
                for (p, _, _), o in sorted(self.objects.items())
                if p == plural and self._selected(o, ns, request.query)
            ]
            return web.json_response(
                {"kind": "List", "items": items, "metadata": {"resourceVersion": str(self.version)}}
            )
        self.watches.append(dict(request.query))
        since = int(request.query.get("resourceVersion") or 0)
        resp = web.StreamResponse()
        await resp.prepare(request)
        deadline = asyncio.get_running_loop().time() + float(request.query.get("timeoutSeconds") or 60)
        seen, changed = 0, asyncio.Event()
        self.listeners.add(changed)
        try:
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                changed.clear()
                new, seen = self.history[seen:], len(self.history)
                for version, p, event, obj in new:
                    if version > since and p == plural and self._selected(obj, ns, request.query):
                        await resp.write(json.dumps({"type": event, "object": shown(obj)}).encode() + b"\n")
                if request.transport is None or request.transport.is_closing():
                    return resp  # the client went away
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(left, 0.2))
            await resp.write_eof()
        finally:
            self.listeners.discard(changed)
        return resp

    def _create(self, plural: str, ns: str, obj: dict[str, Any]) -> web.Response:
        if "name" not in obj["metadata"]:  # generateName
            obj["metadata"]["name"] = f"{obj['metadata'].get('generateName', '')}{next(self._rv):05d}"
        name = obj["metadata"]["name"]
        if (plural, ns, name) in self.objects:
            return status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        obj["metadata"]["namespace"] = ns
        return web.json_response(self.put(plural, copy.deepcopy(obj)), status=201)

    def _patch(self, key: tuple[str, str, str], patch: dict[str, Any], sub: str | None) -> web.Response:
        old = self.objects[key]
        want = (patch.get("metadata") or {}).get("resourceVersion")
        if want and want != old["metadata"]["resourceVersion"]:
            return status(
                409, "Conflict", "the object has been modified; please apply your changes to the latest version"
            )
        uid = (patch.get("metadata") or {}).get("uid")
        if uid and uid != old["metadata"]["uid"]:
            return status(409, "Conflict", f"Precondition failed: UID in precondition: {uid}")
        if sub == "status":
            new = copy.deepcopy(old)
            new["status"] = merge(old.get("status") or {}, patch.get("status") or {})
        else:
            patch = {k: v for k, v in patch.items() if k != "status"}
            if patch.get("metadata"):
                patch["metadata"] = {k: v for k, v in patch["metadata"].items() if k not in ("resourceVersion", "uid")}
            new = merge(old, patch)
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        return web.json_response(self.put(key[0], new))


def _route(path: str) -> tuple[str | None, str, str | None, str | None]:
    """(namespace, plural, name, subresource) of /api/v1/namespaces/NS/PLURAL[/NAME[/SUB...]] or
    /apis/G/V/namespaces/NS/PLURAL[/NAME[/SUB]]; the namespace is None for the cluster's /api/v1/PLURAL."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest[0] != "namespaces":
        return None, rest[0], None, None
    return rest[1], rest[2], rest[3] if len(rest) > 3 else None, "/".join(rest[4:]) if len(rest) > 4 else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def serve(api: FakeAPI, call: Callable[[Kube], Awaitable[Any]]) -> Any:
    """Run `call` with a Kube whose API server is `api`."""
    return await answering(api.answer, call)


async def answering(
    answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
    call: Callable[[Kube], Awaitable[Any]],
    connections: int = 100,
) -> Any:
    """Run `call` with a Kube whose API server answers each request as `answer` does, through a pool of
    `connections` (the client's default 100; the operator's own is kube.CONNECTIONS)."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    cfg = client.Configuration(host=f"http://127.0.0.1:{sock.getsockname()[1]}")
    cfg.connection_pool_maxsize = connections
    kube = Kube(client.ApiClient(cfg))
    try:
        return await call(kube)
    finally:
        await kube.close()
        await runner.cleanup()
        await asyncio.sleep(0)
