"""The operator's few calls to the Kubernetes API (kubernetes_asyncio), as plain dicts in and out.

Every call is counted in the operator's metrics by verb and outcome, so API writes per job can be
measured (benchmarks/operator_latency.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from . import metrics, names

MERGE = "application/merge-patch+json"


async def _body(call: Awaitable[object]) -> bytes:
    """The body of a call made with `_preload_content=False`; an ApiException for an error status.

    kubernetes_asyncio checks the status only when it parses the body itself, and its stubs give the
    parsed model as the result either way. Reading the body also hands the connection back to the pool."""
    resp = cast(aiohttp.ClientResponse, await call)
    body = await resp.read()
    if not 200 <= resp.status <= 299:
        error = ApiException(status=resp.status, reason=resp.reason)
        error.body, error.headers = body, resp.headers
        raise error
    return body


class Kube:
    def __init__(self, api: client.ApiClient):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    @classmethod
    async def connect(cls) -> Kube:
        """In a pod: its ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config."""
        if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
            "/var/run/secrets/kubernetes.io/serviceaccount/token"
        ):
            config.load_incluster_config()
            return cls(client.ApiClient())
        cfg = client.Configuration()
        await config.load_kube_config(client_configuration=cfg)
        cfg.connection_pool_maxsize = 64
        return cls(client.ApiClient(cfg))

    async def close(self) -> None:
        await self.api.close()

    # ---------------------------------------------------------------- children

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create a child; False when it exists already (a rerun after a restart adopts it)."""
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        # the stubs type each body as its model class; the client serialises plain dicts as they are
        creators: dict[str, Callable[..., Awaitable[object]]] = {
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "Job": self.batch.create_namespaced_job,
        }
        create = creators[kind]
        try:
            with metrics.api_call("create", kind):
                await _body(create(ns, obj, _preload_content=False))
            return True
        except ApiException as e:
            if e.status == 409:
                return False
            raise

    async def list_jobs(self, namespace: str, job: str) -> list[dict[str, Any]]:
        with metrics.api_call("list", "Job"):
            body = await _body(
                self.batch.list_namespaced_job(
                    namespace, label_selector=f"{names.LABEL_JOB}={job}", _preload_content=False
                )
            )
        return json.loads(body)["items"]

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        with metrics.api_call("list", "Pod"):
            pods = self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
            body = await _body(pods)
        return json.loads(body)["items"]

    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with metrics.api_call("get", "ConfigMap"):
                body = await _body(self.core.read_namespaced_config_map(name, namespace, _preload_content=False))
            return json.loads(body)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def patch_config_map(self, namespace: str, name: str, data: dict[str, str]) -> None:
        with metrics.api_call("patch", "ConfigMap"):
            await _body(
                self.core.patch_namespaced_config_map(  # type: ignore[call-arg]  # _content_type: missing from the stubs
                    name, namespace, {"data": data}, _content_type=MERGE, _preload_content=False
                )
            )

    async def set_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        with metrics.api_call("patch", "Job"):
            await _body(
                self.batch.patch_namespaced_job(  # type: ignore[call-arg]  # _content_type: missing from the stubs
                    name, namespace, {"spec": {"suspend": suspend}}, _content_type=MERGE, _preload_content=False
                )
            )

    # ---------------------------------------------------------------- the job itself

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with metrics.api_call("get", names.KIND):
                return await self.custom.get_namespaced_custom_object(
                    names.GROUP, names.VERSION, namespace, names.PLURAL, name
                )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> None:
        """Merge-patch the job's status; with `resource_version`, only if the job is still that version
        (409 otherwise: a decision made from an older view must not overwrite a newer one)."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        with metrics.api_call("patch", f"{names.KIND}/status"):
            await self.custom.patch_namespaced_custom_object_status(  # type: ignore[call-arg]  # _content_type: as above
                names.GROUP, names.VERSION, namespace, names.PLURAL, name, body, _content_type=MERGE
            )

    async def delete_job(self, namespace: str, name: str) -> None:
        try:
            with metrics.api_call("delete", names.KIND):
                await self.custom.delete_namespaced_custom_object(
                    names.GROUP, names.VERSION, namespace, names.PLURAL, name, propagation_policy="Background"
                )
        except ApiException as e:
            if e.status != 404:
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
            text = (await resp.read()).decode()
            if resp.status != 200:  # e.g. 503 while the trainer still loads its model: no endpoint yet
                raise ConnectionError(f"pods/proxy answered {resp.status}: {text[:200]}")
        return text
