"""One active operator among replicas: a coordination.k8s.io/v1 Lease, as Kubernetes' own controllers use.

The replica that holds the Lease runs the operator; the others stand by, ready (their /healthz answers),
and try again every `retry` seconds. A holder renews every `renew` seconds; one that has not renewed
within `deadline` seconds of its last successful renewal was sent (every call is bounded in time) has
lost it: the process exits at once (cli._elected), as Kubernetes' own controllers do, so that none of
its handlers acts afterwards. A standby takes over only after the record went unrenewed for a whole
`duration`, longer than `deadline`, so two replicas never act at once. A holder that shuts down
cleanly hands the Lease back, so a rolling update or a deleted pod costs a standby one retry period.

Expiry is judged by the standby's own monotonic clock — the time since it last saw the record change —
never by comparing the holder's timestamps with its own wall clock (the nodes' clocks may differ). A
Lease that is missing counts as a record of its own: a standby creates one only after seeing it absent
for a whole duration (it may have been deleted by hand under a holder, which recreates it at once).
The chart creates the Lease with the release, so a first start does not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from . import metrics
from .kube import Kube, _body

log = logging.getLogger("codex_operator.leader")
# what a call to the API server may raise besides an error status: a timeout, a refused or dropped connection
ERRORS = (TimeoutError, ApiException, OSError, aiohttp.ClientError)
SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass(frozen=True)
class Timing:
    duration: float = 15.0  # a record unrenewed this long is free to take
    renew: float = 3.0  # how often the holder renews
    deadline: float = 8.0  # a holder that could not renew for this long gives up (well below duration)
    retry: float = 2.0  # how often a standby tries
    request: float = 3.0  # the longest one call to the API server may take


@dataclass
class Seen:
    """The record as a standby last saw it, and when (monotonic) it last changed."""

    record: tuple[str, str] | None = None  # (holder, renewTime)
    since: float = 0.0


def decide(lease: dict[str, Any] | None, me: str, seen: Seen, now: float, timing: Timing, holding: bool = False) -> str:
    """What to do with the Lease as read: 'create' (there is none, and it has been absent for a whole
    duration), 'renew' (ours), 'take' (free, handed back, or unrenewed for a whole duration) or 'wait'
    (someone else may hold it). Updates `seen`. A holder whose Lease is gone has lost it ('wait'): it stops
    acting at once, well before a standby may create a new one, and it never recreates the Lease itself
    (`helm uninstall` deletes the Lease while the old pod is still stopping: a recreated one would be left
    behind, without the release's labels, and refuse the next `helm install`)."""
    if lease is None:
        if holding:
            return "wait"
        record = ("", "absent")
        if record != seen.record:
            seen.record, seen.since = record, now
            return "wait"
        return "create" if now - seen.since > timing.duration else "wait"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder == me:
        return "renew"
    if not holder:
        return "take"
    record = (holder, spec.get("renewTime") or "")
    if record != seen.record:
        seen.record, seen.since = record, now
        return "wait"
    duration = float(spec.get("leaseDurationSeconds") or timing.duration)
    return "take" if now - seen.since > duration else "wait"


def identity() -> str:
    """This replica's name in the Lease: its pod's name in the cluster (CODEX_POD_NAME, from the downward
    API), else host, pid and a random part — two operators on one laptop must not share a name."""
    return os.environ.get("CODEX_POD_NAME") or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def default_namespace() -> str:
    try:
        with open(SA_NAMESPACE) as f:
            return f.read().strip()
    except OSError:
        return "default"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    def __init__(self, kube: Kube, namespace: str, name: str, me: str, timing: Timing = Timing()):
        # Any: the stubs type each body as V1Lease; the client sends plain dicts as they are
        self.api: Any = client.CoordinationV1Api(kube.api)
        self.ns, self.name, self.me, self.timing = namespace, name, me, timing
        self.seen = Seen()
        self._call = {"_preload_content": False, "_request_timeout": timing.request}

    async def _read(self) -> dict[str, Any] | None:
        try:
            with metrics.api_call("get", "Lease"):
                return json.loads(await _body(self.api.read_namespaced_lease(self.name, self.ns, **self._call)))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def try_once(self, holding: bool = False) -> str:
        """One look at the Lease: 'held' when this replica holds it afterwards, 'other' when another one
        may, 'conflict' when another replica wrote first. Any other API error is raised."""
        lease = await self._read()
        action = decide(lease, self.me, self.seen, time.monotonic(), self.timing, holding)
        if action == "wait":
            return "other"
        now = _now()
        spec = {"holderIdentity": self.me, "leaseDurationSeconds": int(self.timing.duration), "renewTime": now}
        try:
            if action == "create":
                body = {"metadata": {"name": self.name, "namespace": self.ns}, "spec": spec | {"acquireTime": now}}
                with metrics.api_call("create", "Lease"):
                    await _body(self.api.create_namespaced_lease(self.ns, body, **self._call))
            else:
                assert lease is not None
                old = lease.get("spec") or {}
                if action == "take":
                    spec |= {"acquireTime": now, "leaseTransitions": int(old.get("leaseTransitions") or 0) + 1}
                lease["spec"] = old | spec  # metadata.resourceVersion stays: a concurrent writer gets 409
                with metrics.api_call("update", "Lease"):
                    await _body(self.api.replace_namespaced_lease(self.name, self.ns, lease, **self._call))
        except ApiException as e:
            if e.status == 409:
                return "conflict"
            raise
        if action != "renew":
            log.info("leading: took the Lease %s/%s as %s", self.ns, self.name, self.me)
            self.seen = Seen()
        return "held"

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Stand by until this replica holds the Lease (True) or `stopping` is set (False)."""
        log.info("standing by for the Lease %s/%s as %s", self.ns, self.name, self.me)
        while not stopping.is_set():
            try:
                if await asyncio.wait_for(self.try_once(), self.timing.request * 2) == "held":
                    return True
            except ERRORS as e:
                log.warning("could not read the Lease %s/%s: %r", self.ns, self.name, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.timing.retry)
        return False

    async def keep(self) -> None:
        """Renew until no renewal has succeeded within `deadline` of the last good one being sent, or the
        Lease is another replica's; then return: leadership is lost. Each renewal is cut off at the
        deadline, so a call that hangs cannot keep a lost leader acting."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.timing.renew)
            sent = time.monotonic()
            try:
                left = last_ok + self.timing.deadline - sent
                outcome = await asyncio.wait_for(self.try_once(holding=True), max(left, 0.1))
            except ERRORS as e:
                log.warning("could not renew the Lease %s/%s: %r", self.ns, self.name, e)
                outcome = "error"
            if outcome == "held":
                last_ok = sent
            elif outcome == "other" or time.monotonic() - last_ok >= self.timing.deadline:
                log.error("lost the Lease %s/%s (%s)", self.ns, self.name, outcome)
                return
            # a conflict (someone wrote the Lease between our read and write) or an error: try again soon

    async def release(self) -> None:
        """Hand the Lease back (a clean shutdown), so a standby takes it at its next try."""
        try:
            lease = await asyncio.wait_for(self._read(), self.timing.request)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.me:
                return
            lease["spec"] |= {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _now()}
            with metrics.api_call("update", "Lease"):
                await _body(self.api.replace_namespaced_lease(self.name, self.ns, lease, **self._call))
            log.info("released the Lease %s/%s", self.ns, self.name)
        except ERRORS as e:
            log.warning("could not release the Lease %s/%s: %s", self.ns, self.name, e)
