"""The operator's few calls to the Kubernetes API (kubernetes_asyncio), as plain dicts in and out.

Every call is counted in the operator's metrics by verb and outcome, so API writes per job can be
measured (benchmarks/operator_latency.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
import orjson
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from . import metrics, names

MERGE = "application/merge-patch+json"
CONNECTIONS = 64  # to the API server at most (each TLS connection holds a 128 kB read buffer, and OpenSSL its own)


async def _body(call: Awaitable[object]) -> bytes:
    """The body of a call made with `_preload_content=False`; an ApiException for an error status.

    kubernetes_asyncio checks the status only when it parses the body itself, and its stubs give the
    parsed model as the result either way. Reading the body also hands the connection back to the pool."""
    resp = cast(aiohttp.ClientResponse, await call)
    if not 200 <= resp.status <= 299:
        raise await api_error(resp)
    return await resp.read()


async def api_error(resp: aiohttp.ClientResponse) -> ApiException:
    """The ApiException for an error response (its body read, so the connection goes back to the pool)."""
    error = ApiException(status=resp.status, reason=resp.reason)
    error.body, error.headers = await resp.read(), resp.headers
    return error


THROTTLE_RETRIES = 6  # a call the API server throttles (429) is sent again this many times at most
RETRY_AFTER_CAP = 10.0  # seconds: a longer Retry-After is cut to this (the reconcile's own backoff takes over after)


def retry_after(headers: Any, attempt: int) -> float:
    """How long to wait before sending a throttled call again: the server's Retry-After (API Priority and
    Fairness sends one), else an exponential backoff; with jitter, so throttled calls do not return as one."""
    said = (headers or {}).get("Retry-After")
    try:
        wait = float(said) if said is not None else 0.5 * 2**attempt
    except ValueError:
        wait = 0.5 * 2**attempt
    return min(wait, RETRY_AFTER_CAP) + random.uniform(0, 0.25 + wait / 4)


def obeying_retry_after(send: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The client's request function, sending a call the API server answered 429 again after its
    Retry-After, up to THROTTLE_RETRIES times (as client-go does); kubernetes_asyncio itself never
    retries. Each wait is counted in codex_operator_api_throttled_total."""

    async def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(THROTTLE_RETRIES + 1):
            try:
                resp = await send(method, url, *args, **kwargs)
            except ApiException as e:  # a call made with _preload_content=True: the client raised
                if e.status != 429 or attempt == THROTTLE_RETRIES:
                    raise
                wait = retry_after(e.headers, attempt)
            else:
                if getattr(resp, "status", 200) != 429 or attempt == THROTTLE_RETRIES:
                    return resp
                wait = retry_after(resp.headers, attempt)
                resp.release()
            metrics.API_THROTTLED.inc()
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    return request


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def without_env_lookups(rest: Any) -> None:
    """kubernetes_asyncio's session trusts the environment, so aiohttp looks for a proxy in it and reads
    ~/.netrc, in a thread, on every call: a tenth of the operator's CPU per job. Where no proxy variable
    is set there is nothing to find, so the same connection pool serves a session that does not look."""
    if any(os.environ.get(v) for v in PROXY_VARIABLES) or os.environ.get("NETRC"):
        return
    old: aiohttp.ClientSession = rest.pool_manager
    connector = old.connector
    old.detach()  # closes the old session, not the pool it hands on
    rest.pool_manager = aiohttp.ClientSession(connector=connector, trust_env=False, read_bufsize=2**21)


def plain_bodies(api: client.ApiClient) -> None:
    """The operator's request bodies are plain dicts of JSON values (the builders' manifests, merge patches,
    Events): the client's copy of each, value by value, looking for its model classes and datetimes, is
    skipped for them (py-spy put 5% of the operator's CPU there at 1,000 jobs); the standard library's json
    still encodes them, and would refuse anything else."""
    walk = api.sanitize_for_serialization
    api.sanitize_for_serialization = lambda obj: obj if isinstance(obj, dict) else walk(obj)  # type: ignore[method-assign]


class Kube:
    def __init__(self, api: client.ApiClient):
        self.api = api
        plain_bodies(api)
        without_env_lookups(api.rest_client)
        api.rest_client.request = obeying_retry_after(api.rest_client.request)  # type: ignore[method-assign,assignment]  # one client, wrapped once
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    @classmethod
    async def connect(cls) -> Kube:
        """In a pod: its ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config."""
        cfg = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
            "/var/run/secrets/kubernetes.io/serviceaccount/token"
        ):
            config.load_incluster_config(client_configuration=cfg)
        else:
            await config.load_kube_config(client_configuration=cfg)
        cfg.connection_pool_maxsize = CONNECTIONS
        return cls(client.ApiClient(cfg))

    def watch_client(self) -> client.ApiClient:
        """A client of its own for the watches (informer.py), with the same credentials: each watch holds
        a connection for minutes, which the calls' pool of CONNECTIONS must not lose."""
        cfg = self.api.configuration
        size, cfg.connection_pool_maxsize = cfg.connection_pool_maxsize, 0  # aiohttp: no limit
        try:
            api = client.ApiClient(cfg)
        finally:
            cfg.connection_pool_maxsize = size
        without_env_lookups(api.rest_client)
        api.rest_client.request = obeying_retry_after(api.rest_client.request)  # type: ignore[method-assign,assignment]  # as above
        return api

    async def close(self) -> None:
        await self.api.close()

    # ---------------------------------------------------------------- children

    def _calls(self, kind: str) -> dict[str, Callable[..., Awaitable[object]]]:
        """The client's calls for one kind of child (the stubs type each body as its model class; the
        client serialises plain dicts as they are)."""
        c, b = self.core, self.batch
        calls: dict[str, dict[str, Callable[..., Awaitable[object]]]] = {
            "PersistentVolumeClaim": {
                "create": c.create_namespaced_persistent_volume_claim,
                "get": c.read_namespaced_persistent_volume_claim,
                "patch": c.patch_namespaced_persistent_volume_claim,
            },
            "ConfigMap": {
                "create": c.create_namespaced_config_map,
                "get": c.read_namespaced_config_map,
                "delete": c.delete_namespaced_config_map,
            },
            "Service": {"create": c.create_namespaced_service, "get": c.read_namespaced_service},
            "Job": {
                "create": b.create_namespaced_job,
                "get": b.read_namespaced_job,
                "patch": b.patch_namespaced_job,
                "delete": b.delete_namespaced_job,
            },
        }
        return calls[kind]

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create a child: the object as created (a Job's; of the others only that it was made: the operator
        reads nothing from them), or None when the name exists already (whose it is, `get` tells)."""
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        create = self._calls(kind)["create"]
        try:
            with metrics.api_call("create", kind):
                body = await _body(create(ns, obj, _preload_content=False))
            return orjson.loads(body) if kind == "Job" else obj
        except ApiException as e:
            if e.status == 409:
                return None
            raise

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A child by name (None: there is none)."""
        read = self._calls(kind)["get"]
        try:
            with metrics.api_call("get", kind):
                return orjson.loads(await _body(read(name, namespace, _preload_content=False)))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of a child (a Job's suspend, a volume's ownerReferences); the object as patched."""
        call = self._calls(kind)["patch"]
        with metrics.api_call("patch", kind):
            return orjson.loads(await _body(call(name, namespace, patch, _content_type=MERGE, _preload_content=False)))

    async def delete(self, kind: str, namespace: str, name: str, uid: str) -> None:
        """Delete a child and what it owns (an attempt's pods get their grace period to checkpoint); only the
        object of that UID, and none is fine."""
        delete = self._calls(kind)["delete"]
        body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        try:
            with metrics.api_call("delete", kind):
                await _body(delete(name, namespace, body=body, _preload_content=False))
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        with metrics.api_call("list", "Pod"):
            pods = self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
            body = await _body(pods)
        return orjson.loads(body)["items"]

    async def list_events(self, namespace: str, kind: str, name: str, uid: str) -> list[dict[str, Any]]:
        """The Events about one object (the Job controller's FailedCreate on an attempt, say)."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name},involvedObject.uid={uid}"
        with metrics.api_call("list", "Event"):
            body = await _body(
                self.core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False)
            )
        return orjson.loads(body)["items"]

    async def list_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        """Kueue's Workloads of one attempt Job (Kueue labels each with its Job's UID); none where Kueue is
        not installed or the operator may not read them."""
        try:
            with metrics.api_call("list", "Workload"):
                body = await _body(
                    self.custom.list_namespaced_custom_object(
                        names.KUEUE_GROUP,
                        names.KUEUE_VERSION,
                        namespace,
                        "workloads",
                        label_selector=f"{names.LABEL_KUEUE_JOB_UID}={job_uid}",
                        _preload_content=False,
                    )
                )
        except ApiException as e:
            if e.status in (403, 404):
                return []
            raise
        return orjson.loads(body)["items"]

    async def set_suspend(self, namespace: str, name: str, suspend: bool) -> dict[str, Any]:
        return await self.patch("Job", namespace, name, {"spec": {"suspend": suspend}})

    async def post_event(self, job: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event on the job, as `kubectl describe` shows it."""
        meta = job["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{names.GROUP}/{names.VERSION}",
                "kind": names.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "codex-operator"},
            "reportingComponent": "codex-operator",
            "reportingInstance": "codex-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with metrics.api_call("create", "Event"):
            post = self.core.create_namespaced_event(meta["namespace"], event, _preload_content=False)  # type: ignore[arg-type]  # a dict serialises as the model would
            await _body(post)

    # ---------------------------------------------------------------- the job itself

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with metrics.api_call("get", names.KIND):
                return orjson.loads(
                    await _body(
                        self.custom.get_namespaced_custom_object(
                            names.GROUP, names.VERSION, namespace, names.PLURAL, name, _preload_content=False
                        )
                    )
                )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def serves_jobs(self, namespace: str) -> bool:
        """Whether the API server serves CodexTrainingJobs in `namespace`: its CRD is installed (a list in a
        namespace that does not exist is empty; the resource's absence is a 404)."""
        try:
            with metrics.api_call("list", names.KIND):
                await _body(
                    self.custom.list_namespaced_custom_object(
                        names.GROUP,
                        names.VERSION,
                        namespace,
                        names.PLURAL,
                        limit=1,
                        _preload_content=False,
                        _request_timeout=10,
                    )
                )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
        uid: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the job's status and return the job as written; with `resource_version`, only if the
        job is still that version (409 otherwise: a decision made from an older view must not overwrite a
        newer one); with `uid`, only if it is still that job (not one re-created under its name)."""
        body: dict[str, Any] = {"status": status}
        if resource_version or uid:
            body["metadata"] = {k: v for k, v in (("resourceVersion", resource_version), ("uid", uid)) if v}
        with metrics.api_call("patch", f"{names.KIND}/status"):
            patched = self.custom.patch_namespaced_custom_object_status(  # type: ignore[call-arg]  # _content_type: as above
                names.GROUP,
                names.VERSION,
                namespace,
                names.PLURAL,
                name,
                body,
                _content_type=MERGE,
                _preload_content=False,
            )
            return orjson.loads(await _body(patched))  # the job with its managedFields, decoded by orjson

    async def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete the job of that UID (a job re-created under the same name since is left alone: 409)."""
        body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        try:
            with metrics.api_call("delete", names.KIND):
                await self.custom.delete_namespaced_custom_object(
                    names.GROUP,
                    names.VERSION,
                    namespace,
                    names.PLURAL,
                    name,
                    body=body,  # type: ignore[arg-type]  # a dict serialises as the model would
                )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    # ---------------------------------------------------------------- rank 0's metrics

    async def pod_metrics_via_proxy(self, namespace: str, pod: str, port: int) -> str:
        """GET /metrics of a pod through the API server (for an operator running outside the cluster)."""
        with metrics.api_call("get", "pods/proxy"):
            resp = cast(
                aiohttp.ClientResponse,
                await self.core.connect_get_namespaced_pod_proxy_with_path(
                    f"{pod}:{port}", namespace, "metrics", _preload_content=False, _request_timeout=5
                ),
            )
            try:
                text = await read_limited(resp)
            finally:
                resp.release()
            if resp.status != 200:  # e.g. 503 while the trainer still loads its model: no endpoint yet
                raise ConnectionError(f"pods/proxy answered {resp.status}: {text[:200]}")
        return text


METRICS_LIMIT = 1 << 20  # rank 0's /metrics is a few kB: a pod that serves more is not read


async def read_limited(resp: aiohttp.ClientResponse, limit: int = METRICS_LIMIT) -> str:
    """The body of a response, refused past `limit` bytes (what a job's pod serves cannot fill the
    operator's memory)."""
    chunks, size = [], 0
    while chunk := await resp.content.read(1 << 16):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"the metrics endpoint served more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
