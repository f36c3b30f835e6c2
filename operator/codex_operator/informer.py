"""The CodexTrainingJobs, the operator's children (attempt Jobs, job files, rendezvous Services) and their
pods, watched by the operator itself rather than by kopf.

kopf hands each watch event to a worker task of its object, with its causes, loggers and handler machinery,
decoded by the standard library's json; the operator needs none of that: a job's event only queues its job
(workqueue.py), an attempt Job's few fields are kept (watched.seen), of a pod what the timer reads
(watched.pod_kept: rank 0's IP, why it waits) instead of a LIST each time, and of a job file or a Service
only that it was deleted. So they are read here, as client-go's informers read: LIST, then
WATCH from the list's resourceVersion with bookmarks; after the server ends a watch (every
SERVER_TIMEOUT) it starts again from the last version seen, and when that version is too old (410
Gone) it lists again and says DELETED for each object the new list lacks, so no deletion is missed.
Job files and Services are watched as metadata only (PartialObjectMetadata): the server sends no job
file. Of the children only objects labelled with a job's name are asked for; jobs and children only in the
namespaces the operator watches (a glob pattern is matched here, with kopf's rules for `--namespace`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from . import metrics, names, watched
from .kube import api_error

log = logging.getLogger("codex_operator")

SERVER_TIMEOUT = 300  # s: the API server ends each watch after this; it starts again from the last version
PAGE = 500  # objects per LIST page (a LIST of 10,000 Jobs at once is tens of MB to decode)
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"  # a watch's objects
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"  # a LIST (else 406)

Deliver = Callable[[str, dict[str, Any]], None]  # (ADDED | MODIFIED | DELETED, the object)


@dataclass(frozen=True)
class Source:
    kind: str
    prefix: str  # /apis/GROUP/VERSION or /api/v1
    plural: str
    metadata_only: bool  # only its deletion matters to the operator
    selector: str | None = names.LABEL_JOB  # a label selector: a child names its job

    @property
    def api_version(self) -> str:
        return self.prefix.split("/", 2)[2]  # /apis/GROUP/VERSION -> GROUP/VERSION, /api/v1 -> v1


JOBS = Source(names.KIND, f"/apis/{names.GROUP}/{names.VERSION}", names.PLURAL, False, selector=None)
CHILDREN = (
    Source("Job", "/apis/batch/v1", "jobs", False),
    Source("ConfigMap", "/api/v1", "configmaps", True),
    Source("Service", "/api/v1", "services", True),
    Source("Pod", "/api/v1", "pods", False),  # the timer's: rank 0, and why a pod waits (watched.Pods)
)


class Gone(Exception):
    """The version to watch from is older than the API server keeps: list again."""

    status = 410  # an answer, not a failure (metrics.api_call)


def is_pattern(namespace: str) -> bool:
    return any(c in namespace for c in "*?!,")


def namespace_matches(namespace: str, patterns: Iterable[str]) -> bool:
    """Whether a namespace is watched, with kopf's rules for `--namespace` patterns: comma-separated globs,
    `!` excluding, a first exclusion implying `*` before it; any one pattern matching is enough."""
    for pattern in patterns:
        globs = [g.strip() for g in pattern.split(",")]
        if not globs or globs[0].startswith("!"):
            globs.insert(0, "*")
        matched = first = fnmatch.fnmatch(namespace, globs[0])
        for glob in globs[1:]:
            if glob.startswith("!"):
                matched = matched and not fnmatch.fnmatch(namespace, glob[1:])
            else:
                matched = matched or (first and fnmatch.fnmatch(namespace, glob))
        if matched:
            return True
    return False


def cluster_wide(namespaces: Iterable[str]) -> bool:
    """Whether the cluster's collections are watched (every namespace, or patterns matched here), not named ones."""
    given = list(namespaces)
    return not given or any(is_pattern(n) for n in given)


def collections(source: Source, namespaces: Sequence[str]) -> list[str]:
    """The collection paths to watch: one per namespace named, else the cluster's (matched here)."""
    if not cluster_wide(namespaces):
        return [f"{source.prefix}/namespaces/{ns}/{source.plural}" for ns in namespaces]
    return [f"{source.prefix}/{source.plural}"]


def skeleton(obj: dict[str, Any]) -> dict[str, Any]:
    """What is kept of an object to say later that it was deleted (what take_child_event reads of a
    deletion: its kind, name, namespace, UID, owners, and the labels that name its job and attempt)."""
    meta = obj["metadata"]
    kept = {k: meta[k] for k in ("name", "namespace", "uid", "ownerReferences") if k in meta}
    labels = meta.get("labels") or {}
    kept["labels"] = {k: labels[k] for k in (names.LABEL_JOB, watched.POD_JOB) if k in labels}
    return {"kind": obj["kind"], "metadata": kept}


class Informer:
    """One collection's labelled objects, delivered as watch events and kept current through restarts of
    the watch; `listed` is set once the first LIST has been delivered."""

    def __init__(
        self, api: client.ApiClient, source: Source, path: str, deliver: Deliver, patterns: Sequence[str] = ()
    ):
        self.api, self.source, self.path, self.deliver = api, source, path, deliver
        self.patterns = list(patterns) if "/namespaces/" not in path else []  # the cluster's: keep the matching
        self.known: dict[str, dict[str, Any]] = {}  # UID -> skeleton, to say what a new LIST lacks
        self.version: str | None = None
        self.listed = asyncio.Event()

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                if self.version is None:
                    await self._list()
                    self.listed.set()
                    backoff = 1.0
                await self._watch()
                backoff = 1.0
            except Gone:
                log.info("watching %s: version too old, listing again", self.path)
                self.version = None
            except (ApiException, aiohttp.ClientError, TimeoutError, ValueError) as e:
                why = f"HTTP {e.status}: {_message(e)}" if isinstance(e, ApiException) else repr(e)
                if isinstance(e, ApiException) and e.status == 404 and self.source == JOBS:
                    why += f"; is the CodexTrainingJob CRD installed? kubectl apply -f crds/{names.CRD_NAME}.yaml"
                log.warning("watching %s failed (%s); trying again in %.0f s", self.path, why, backoff)
                await asyncio.sleep(backoff + random.uniform(0, backoff / 4))
                backoff = min(backoff * 2, 60.0)

    def _take(self, event_type: str, obj: dict[str, Any]) -> None:
        obj["kind"] = self.source.kind  # a LIST's items name no kind; metadata-only ones say PartialObjectMetadata
        obj.setdefault("apiVersion", self.source.api_version)
        meta = obj.get("metadata") or {}
        if self.patterns and not namespace_matches(meta.get("namespace", ""), self.patterns):
            return
        uid = meta.get("uid", "")
        if event_type == "DELETED":
            self.known.pop(uid, None)
        else:
            self.known[uid] = skeleton(obj)
        try:
            self.deliver(event_type, obj)
        except Exception:  # one object the operator cannot take must not end the watch of all the others
            log.exception("%s %s/%s: its %s event could not be taken", self.source.kind,
                          meta.get("namespace"), meta.get("name"), event_type)  # fmt: skip

    async def _list(self) -> None:
        listed: set[str] = set()
        query: dict[str, Any] = {"limit": PAGE, **self._selector()}
        while True:  # page by page, each delivered before the next is read
            with metrics.api_call("list", self.source.kind):
                page = orjson.loads(await self._get(query))
            for obj in page.get("items") or []:
                uid = obj["metadata"]["uid"]
                listed.add(uid)
                self._take("MODIFIED" if uid in self.known else "ADDED", obj)
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                break
            query["continue"] = meta["continue"]
        for uid, old in list(self.known.items()):
            if uid not in listed:  # deleted while no watch was open
                self._take("DELETED", old)
        self.version = meta.get("resourceVersion") or "0"

    async def _watch(self) -> None:
        query = {
            **self._selector(),
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.version,
            "timeoutSeconds": SERVER_TIMEOUT,
        }
        with metrics.api_call("watch", self.source.kind):
            resp = await self._open(query)
        try:
            pending = bytearray()
            async for chunk in resp.content.iter_any():
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:end])
                    del pending[: end + 1]
                    if line.strip():
                        self._event(orjson.loads(line))
        finally:
            resp.release()

    def _selector(self) -> dict[str, str]:
        return {"labelSelector": self.source.selector} if self.source.selector else {}

    def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":  # a Status: 410 when the version is too old
            if obj.get("code") == 410:
                raise Gone()
            raise ValueError(f"the watch said {obj.get('code')}: {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._take(cast(str, kind), obj)
        if version:
            self.version = version  # BOOKMARK: nothing changed here up to this version

    async def _open(self, query: dict[str, Any]) -> aiohttp.ClientResponse:
        accept = "application/json"
        if self.source.metadata_only:
            accept = METADATA_ONLY if query.get("watch") else METADATA_LIST
        resp = cast(
            aiohttp.ClientResponse,
            await self.api.call_api(
                self.path,
                "GET",
                query_params=list(query.items()),
                header_params={"Accept": accept},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(connect=30, sock_read=SERVER_TIMEOUT + 60),
            ),
        )
        if resp.status == 410:
            resp.release()
            raise Gone()
        if not 200 <= resp.status <= 299:
            raise await api_error(resp)
        return resp

    async def _get(self, query: dict[str, Any]) -> bytes:
        resp = await self._open(query)
        try:
            return await resp.read()
        finally:
            resp.release()


def _message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or b"").get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)


class Watches:
    """The informers of the jobs and of every kind of child in every watched namespace: the jobs' events are
    delivered to one function, the children's to another."""

    def __init__(self, api: client.ApiClient, namespaces: Sequence[str], jobs: Deliver, children: Deliver):
        self.api = api
        self.informers = [Informer(api, JOBS, path, jobs, namespaces) for path in collections(JOBS, namespaces)]
        self.informers += [
            Informer(api, source, path, children, namespaces)
            for source in CHILDREN
            for path in collections(source, namespaces)
        ]
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(i.run(), name=f"codex-operator watches {i.path}") for i in self.informers]

    async def listed(self) -> None:
        """Until the attempt Jobs have been listed once (a reconcile never sees a job without its attempts).
        Not the pods: until they are listed the timer finds no rank 0 to read and no pod that waits, which only
        delays what it says, and a pods' watch the API server refuses must not stop every job from starting."""
        await asyncio.gather(*(i.listed.wait() for i in self.informers if i.source.kind == "Job"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
