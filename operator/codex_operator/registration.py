"""The controller registered with kopf: what kopf sets up at start (its settings, the API client, the children's
informers), tears down at stop, and hands the controller (each CodexTrainingJob watch event, as a key to
reconcile). Everything else, the children included, is the controller's own (handlers.Operator)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.config import ConfigException

from . import informer, names
from .handlers import Operator
from .kube import Kube

log = logging.getLogger("codex_operator")


NO_CRD = (
    f"the API server does not serve {names.PLURAL}.{names.GROUP}/{names.VERSION}: the CodexTrainingJob CRD is not"
    f" installed. Install it (kubectl apply -f crds/{names.CRD_NAME}.yaml, or the chart with its CRDs); with exact"
    " namespaces to watch, the operator looks for it only when it starts: it stops here, and serves the jobs once"
    " it is started again with the CRD in place"
)


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff-base: it serves change handlers (on.create, on.update, on.field), and this operator has
    none; kopf would otherwise copy every object's essence on every watch event only to compare it."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def kopf_scans(namespaces: Iterable[str]) -> bool:
    """Whether kopf should watch the cluster's namespaces (and the CRD): for all of them, or patterns. For exact
    names (the chart's watchNamespaces) there is nothing to discover, and a namespaced install may not list
    namespaces: kopf would try nine times (about a minute of ERROR lines, no job served) at every start before
    falling back to the names. Without the scan, a new version of the CRD is served after a restart."""
    names_given = list(namespaces)
    return not names_given or any(informer.is_pattern(n) for n in names_given)


CRD_TRIES = 4  # a CRD installed a moment ago (by the same helm install) is served within a few seconds
CRD_PAUSE = 2.0  # seconds between them


async def crd_missing(namespace: str) -> bool:
    """Whether the API server says it serves no CodexTrainingJobs, asked CRD_TRIES times (False where it cannot
    be asked: kopf's own retries take it from there). With exact namespaces kopf looks for the CRD only at start:
    without it, it would serve nothing, say only a WARNING, and the pod would look healthy."""
    try:
        kube = await Kube.connect()
    except (OSError, ValueError, ConfigException):
        return False
    try:
        for attempt in range(CRD_TRIES):
            if await kube.serves_jobs(namespace):
                return False
            if attempt < CRD_TRIES - 1:
                await asyncio.sleep(CRD_PAUSE)
        return True
    except (ApiException, aiohttp.ClientError, OSError, TimeoutError):
        return False
    finally:
        await kube.close()


def register(op: Operator, registry: kopf.OperatorRegistry, namespaces: Iterable[str] = ()) -> None:
    """Register the handlers with kopf (the interval comes from the command line, so not at import); the
    children are watched in `namespaces` (all when none), as kopf watches the jobs."""
    namespaces = list(namespaces)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.posting.level = logging.WARNING  # Events are ours (Kube.post_event); log lines are not Events
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        settings.scanning.disabled = not kopf_scans(namespaces)
        op.kube = await Kube.connect()
        op.watch_children(namespaces)  # then the reconciles and the timer, once the children are listed

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if op.ticker is not None:
            op.ticker.cancel()
        op.queue.stop()
        await op.stop_watching()
        try:  # the Events already asked for, before the client closes (a stop mid-burst may have hundreds)
            await asyncio.wait_for(op.events.posted(), 5)
        except TimeoutError:
            log.warning("stopping with %d Event(s) not posted", len(op.events.waiting))
        if op.http is not None:
            await op.http.close()
        if op.kube is not None:
            await op.kube.close()

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # the same client library as the operator's own calls: in-cluster ServiceAccount, else kubeconfig
        return await kopf.login_via_async_client(**kwargs)

    @kopf.on.event(group=names.GROUP, version=names.VERSION, plural=names.PLURAL, registry=registry)
    async def job_event(event: kopf.RawEvent, **_: Any) -> None:
        if (key := op.take_job_event(event.get("type"), dict(event["object"]))) is not None:
            op.queue.put(key)
