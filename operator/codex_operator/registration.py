"""The controller registered with kopf: what kopf sets up at start (its settings, the API client, the informers
of the jobs and their children), and tears down at stop. kopf runs the operator (start-up and clean-up, the
login, signals, the liveness probe); it watches nothing: the jobs and their children are the controller's own
informers' (informer.py), each event only queueing its job (handlers.Operator), with none of kopf's per-object
worker tasks and handler machinery."""

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
    " namespaces to watch, the operator stops here rather than wait with nothing to serve (its pod restarts until the"
    " CRD is in place)"
)


watches_patterns = informer.cluster_wide  # every namespace, or patterns: no named namespace to look for the CRD in


CRD_TRIES = 4  # a CRD installed a moment ago (by the same helm install) is served within a few seconds
CRD_PAUSE = 2.0  # seconds between them


async def crd_missing(namespace: str) -> bool:
    """Whether the API server says it serves no CodexTrainingJobs, asked CRD_TRIES times (False where it cannot
    be asked: the informers' retries take it from there). Without it, the operator would serve nothing while its
    pod looked healthy, its only word a WARNING each time the jobs' informer tries again."""
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
    """Register the activities with kopf (the interval comes from the command line, so not at import); the jobs
    and their children are watched in `namespaces` (all when none; glob patterns matched as kopf would)."""
    namespaces = list(namespaces)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # Events are ours (Kube.post_event); log lines are not Events
        settings.networking.request_timeout = 60
        settings.scanning.disabled = True  # kopf watches no resource: it need not discover CRDs or namespaces
        op.kube = await Kube.connect()
        op.watch(namespaces)  # then the reconciles and the timer, once the attempt Jobs are listed

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
