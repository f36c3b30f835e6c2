"""kopf handlers: observe, call the pure builders and the status function, apply, patch status.

One level-triggered `reconcile` per CodexTrainingJob, run on each event of the job and of its attempt
Jobs, and again after an operator restart (kopf lists every object at start). It derives everything
from what exists (attempt numbers from the Jobs, restarts from their count), so running it twice, or
after a SIGKILL halfway, creates nothing twice: children have fixed names and "already exists" means
adopt. One timer task (not one per job) reads rank 0's progress while a job runs, says why pods wait,
retries failed reconciles and deletes finished jobs after their TTL.

kopf persistence: these are event handlers only, which keep no handler progress and no diff-base, so
kopf writes nothing to the objects: no annotations, no status.kopf, and no finalizer (kopf puts one on
every object that has a kopf timer or daemon, which would block `kubectl delete` while the operator
is down; hence the one timer task of our own).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from codex_trainer.errors import SpecError
from codex_trainer.manifest import parse_manifest

from . import builders, metrics, names
from .builders import Job, Settings
from .kube import Kube
from .status import (
    TERMINAL,
    Attempt,
    Plan,
    PodFailure,
    attempt_from_job,
    deadline_left,
    final_numbers,
    plan,
    pod_failure,
    progress_changed,
    progress_from_metrics,
    set_condition,
    waiting_reason,
)

log = logging.getLogger("codex_operator")
WAIT_EXPLAIN_SECONDS = 30.0

# status keys the reconcile owns; progress and checkpoint belong to the progress timer (merge patches
# of disjoint keys cannot undo each other)
OWNED = ("phase", "message", "conditions", "attempt", "restarts", "startTime", "completionTime", "observedGeneration")


@dataclass
class Options:
    settings: Settings = field(default_factory=Settings)
    progress_interval: float = 10.0
    progress_via: str = "auto"  # auto | pod-ip | proxy


@dataclass
class Operator:
    options: Options
    kube: Kube | None = None
    http: aiohttp.ClientSession | None = None
    ticker: asyncio.Task | None = None
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    dirty: set[tuple[str, str]] = field(default_factory=set)  # reconciles that failed: the timer retries
    bodies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # the jobs as last watched
    written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # the status we last wrote
    explained: dict[tuple[str, str], float] = field(default_factory=dict)  # when we last asked why pods wait

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    @property
    def in_cluster(self) -> bool:
        if self.options.progress_via != "auto":
            return self.options.progress_via == "pod-ip"
        return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))

    # ---------------------------------------------------------------- reconcile

    async def reconcile(self, namespace: str, name: str, body: dict[str, Any] | None = None) -> None:
        key = (namespace, name)
        lock = self.lock(key)
        async with lock:
            try:
                with metrics.reconcile_timer():
                    await self._reconcile(namespace, name, body)
                self.dirty.discard(key)
            except Exception:
                self.dirty.add(key)
                log.exception("reconcile of %s/%s failed; retrying on the next tick", namespace, name)
        if key not in self.bodies and key not in self.dirty and not lock.locked():
            self.locks.pop(key, None)  # a job that is gone (an attempt's event came after its deletion)

    def current(self, key: tuple[str, str], body: dict[str, Any] | None) -> bool:
        """Whether a watched body can be trusted as the job's present state: its status is the one this
        operator last wrote (or it is brand new). Otherwise another write may have passed it: read afresh."""
        if body is None:
            return False
        if key in self.written:
            return self.written[key] == (body.get("status") or {})
        return not body.get("status")

    async def patch_status(
        self,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        base: dict[str, Any],
        resource_version: str | None = None,
    ) -> None:
        assert self.kube is not None
        await self.kube.patch_status(namespace, name, patch, resource_version)
        self.written[(namespace, name)] = _merged(base, patch)

    async def timer_patch(self, body: dict[str, Any], patch: dict[str, Any]) -> None:
        """A write the timer decided from the watched body: only if the job is still what it saw."""
        meta, status = body["metadata"], body.get("status") or {}
        async with self.lock((meta["namespace"], meta["name"])):
            try:
                await self.patch_status(
                    meta["namespace"], meta["name"], _deleting(status, patch), status, meta.get("resourceVersion")
                )
            except ApiException as e:
                if e.status != 409:
                    raise
                log.debug("%s/%s changed since the timer looked; its write is dropped", meta["namespace"], meta["name"])

    async def _reconcile(self, namespace: str, name: str, watched: dict[str, Any] | None) -> None:
        assert self.kube is not None
        log.debug("reconcile %s/%s", namespace, name)
        body = watched if self.current((namespace, name), watched) else await self.kube.get_job(namespace, name)
        if body is None:
            metrics.set_phase(namespace, name, None)
            return
        status = body.get("status") or {}
        if body["metadata"].get("deletionTimestamp"):
            return  # being deleted: the garbage collector takes the children; nothing to create or write
        if status.get("phase") in TERMINAL:
            metrics.set_phase(namespace, name, status["phase"])
            return
        now = datetime.now(UTC)
        job = _job_or_problem(body)
        if isinstance(job, str):
            await self._finish_invalid(body, job, now)
            return
        refused = "a child of the job"
        try:
            if not _children_current(status, job.generation):
                await self.ensure_children(job)
            attempts = [attempt_from_job(j) for j in await self.kube.list_jobs(namespace, name)]
            latest = max(attempts, key=lambda a: a.number, default=None)
            p = plan(job, status, attempts, now, *await self._how_it_ended(namespace, latest))
            if p.create_attempt is not None:
                await self._start_attempt(job, p, now)
            if p.set_suspend is not None and latest is not None:
                refused = f"{'suspending' if p.set_suspend else 'resuming'} attempt {latest.name}"
                await self.kube.set_suspend(namespace, latest.name, p.set_suspend)
        except ApiException as e:
            if e.status not in (400, 422):
                raise
            # a pass-through field the CRD takes as free-form (affinity, env) that a Job or Pod refuses, or an
            # admission webhook or policy that refuses a child or its suspension: retrying would not change it
            await self._finish_invalid(body, f"the API server refused {refused}: {_api_reason(e)}", now)
            return
        await self._write(body, p)

    async def _start_attempt(self, job: Job, p: Plan, now: datetime) -> None:
        assert self.kube is not None and p.create_attempt is not None
        left = deadline_left(job, p.status, now)
        if await self.kube.create(builders.attempt_job(job, p.create_attempt, self.options.settings, left)):
            metrics.ATTEMPTS.inc()
            if p.create_attempt > 1:
                metrics.RESTARTS.labels(_condition_reason(p.status, "Restarting")).inc()

    async def _write(self, body: dict[str, Any], p: Plan) -> None:
        """The status keys that changed, then the Events."""
        meta, status = body["metadata"], body.get("status") or {}
        patch = {k: p.status[k] for k in OWNED if k in p.status and p.status.get(k) != status.get(k)}
        for key in ("progress", "checkpoint"):  # the final numbers on success
            if key in p.status and p.status[key] != status.get(key):
                patch[key] = p.status[key]
        if patch:
            await self.patch_status(meta["namespace"], meta["name"], _deleting(status, patch), status)
        for kind, reason, message in p.events:
            _post_event(body, kind, reason, message)
            log.info("%s/%s %s: %s", meta["namespace"], meta["name"], reason, message)
        metrics.set_phase(meta["namespace"], meta["name"], p.status.get("phase"))

    async def ensure_children(self, job: Job) -> None:
        """The volume, the job file and the rendezvous Service: create, or adopt what exists."""
        assert self.kube is not None
        claim, cm = builders.checkpoint_claim(job), builders.config_map(job)
        children = [c for c in (claim, cm, builders.headless_service(job)) if c is not None]
        results = await asyncio.gather(*map(self.kube.create, children))
        created = {c["kind"]: r for c, r in zip(children, results, strict=True)}
        if not created["ConfigMap"]:
            current = await self.kube.get_config_map(job.namespace, cm["metadata"]["name"])
            if current is not None and current.get("data") != cm["data"]:
                # a changed spec (maxSteps raised, say) applies from the next attempt on
                await self.kube.patch_config_map(job.namespace, cm["metadata"]["name"], cm["data"])

    async def _how_it_ended(self, namespace: str, latest: Attempt | None) -> tuple[PodFailure | None, dict | None]:
        """For an attempt that ended: the pod to blame for a failure, or rank 0's final numbers."""
        assert self.kube is not None
        if latest is not None and latest.outcome == "Failed":
            return await self._failed_pod(namespace, latest.name), None
        if latest is not None and latest.outcome == "Complete":
            rank0 = f"batch.kubernetes.io/job-name={latest.name},batch.kubernetes.io/job-completion-index=0"
            return None, next(filter(None, map(final_numbers, await self.kube.list_pods(namespace, rank0))), None)
        return None, None

    async def _failed_pod(self, namespace: str, attempt: str) -> PodFailure | None:
        assert self.kube is not None
        pods = await self.kube.list_pods(namespace, f"batch.kubernetes.io/job-name={attempt}")
        ended = [f for f in (pod_failure(p) for p in pods) if f is not None and f.exit_code != 0]
        return min(ended, key=lambda f: f.blame_order, default=None)

    async def _finish_invalid(self, body: dict[str, Any], problem: str, now: datetime) -> None:
        assert self.kube is not None
        meta = body["metadata"]
        conditions = set_condition(
            (body.get("status") or {}).get("conditions") or [], "Failed", "InvalidJob", problem, now, meta["generation"]
        )
        await self.patch_status(
            meta["namespace"],
            meta["name"],
            {"phase": "Failed", "message": problem, "conditions": conditions, "completionTime": _ts(now)},
            body.get("status") or {},
        )
        _post_event(body, "Warning", "InvalidJob", problem)
        metrics.set_phase(meta["namespace"], meta["name"], "Failed")

    # ---------------------------------------------------------------- the timer: progress, TTL, retries

    async def tick(self, body: dict[str, Any]) -> None:
        meta, status = body["metadata"], body.get("status") or {}
        key = (meta["namespace"], meta["name"])
        phase = status.get("phase")
        log.debug("tick %s/%s %s", *key, phase)
        try:
            if key in self.dirty:
                await self.reconcile(*key)
            elif phase == "Running":
                await self.read_progress(body)
            elif phase in ("Pending", "Restarting"):
                await self.explain_wait(body)
            elif phase in TERMINAL:
                await self._expire(body)
        except Exception:  # kopf would back a failed timer off for a minute: log it and tick on time instead
            log.exception("timer of %s/%s failed", *key)

    async def tick_all(self) -> None:
        """One timer for all jobs (kopf's per-object timers would put a finalizer on every job, which
        blocks its deletion whenever the operator is down)."""
        gate = asyncio.Semaphore(32)

        async def one(body: dict[str, Any]) -> None:
            async with gate:
                try:  # one slow job (a rank 0 that does not answer) must not hold up the others' ticks
                    await asyncio.wait_for(self.tick(body), timeout=max(self.options.progress_interval, 5.0))
                except TimeoutError:
                    log.warning("tick of %s/%s took too long", body["metadata"]["namespace"], body["metadata"]["name"])

        while True:
            await asyncio.sleep(self.options.progress_interval)
            await asyncio.gather(*(one(b) for b in list(self.bodies.values())))

    async def read_progress(self, body: dict[str, Any]) -> None:
        assert self.kube is not None
        meta, status = body["metadata"], body.get("status") or {}
        ns, name = meta["namespace"], meta["name"]
        attempt = names.attempt_name(name, status.get("attempt") or 1)
        port = ((body.get("spec") or {}).get("metrics") or {}).get("port") or names.METRICS_PORT
        try:
            pods = await self.kube.list_pods(
                ns, f"batch.kubernetes.io/job-name={attempt},batch.kubernetes.io/job-completion-index=0"
            )
            pod = next((p for p in pods if (p.get("status") or {}).get("phase") == "Running"), None)
            if pod is None:
                return
            if self.in_cluster:
                ip = pod["status"]["podIP"]
                text = await self._get_text(f"http://{f'[{ip}]' if ':' in ip else ip}:{port}/metrics")
            else:
                text = await self.kube.pod_metrics_via_proxy(ns, pod["metadata"]["name"], port)
            samples = _samples(text)
        except Exception as e:  # a trainer still loading its model has no endpoint yet: not an error worth a trace
            metrics.PROGRESS_ERRORS.inc()
            log.debug("progress of %s/%s not readable yet: %s", ns, name, e)
            return
        progress, checkpoint = progress_from_metrics(samples, datetime.now(UTC), status.get("progress"))
        if not progress.get("totalSteps"):
            return  # the endpoint is up but training has not started
        patch: dict[str, Any] = {}
        if progress_changed(status.get("progress"), progress):
            patch["progress"] = progress
        if checkpoint and checkpoint.get("step") != (status.get("checkpoint") or {}).get("step"):
            patch["checkpoint"] = checkpoint
        if patch:
            await self.timer_patch(body, patch)

    async def explain_wait(self, body: dict[str, Any]) -> None:
        """Say in status.message why the pods are not running yet (an image that cannot be pulled, say)."""
        assert self.kube is not None
        meta, status = body["metadata"], body.get("status") or {}
        ns, name = meta["namespace"], meta["name"]
        attempt = names.attempt_name(name, status.get("attempt") or 1)
        now = time.monotonic()
        if now - self.explained.get((ns, name), -WAIT_EXPLAIN_SECONDS) < WAIT_EXPLAIN_SECONDS:
            return  # pods that wait for a reason keep waiting a while: look again later, not every tick
        self.explained[(ns, name)] = now
        why = waiting_reason(await self.kube.list_pods(ns, f"batch.kubernetes.io/job-name={attempt}"))
        if why is None:
            return
        message = f"attempt {status.get('attempt') or 1} waiting: {why}"
        if message != status.get("message"):
            await self.timer_patch(body, {"message": message})

    async def _get_text(self, url: str) -> str:
        if self.http is None:
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        async with self.http.get(url) as resp:
            resp.raise_for_status()
            return await resp.text()

    async def _expire(self, body: dict[str, Any]) -> None:
        ttl = ((body.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
        done = (body.get("status") or {}).get("completionTime")
        if ttl is None or not done:
            return
        finished = datetime.strptime(done, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if (datetime.now(UTC) - finished).total_seconds() >= ttl:
            assert self.kube is not None
            meta = body["metadata"]
            log.info("deleting %s/%s: ttlSecondsAfterFinished (%d s) passed", meta["namespace"], meta["name"], ttl)
            await self.kube.delete_job(meta["namespace"], meta["name"])


def _deleting(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A merge patch merges nested objects: say null for what a new progress or checkpoint leaves out
    (an ETA at the end, say), or the old value would stay."""
    out = dict(patch)
    for key in ("progress", "checkpoint"):
        if isinstance(patch.get(key), dict) and isinstance(old.get(key), dict):
            out[key] = {**{k: None for k in old[key] if k not in patch[key]}, **patch[key]}
    return out


def _post_event(body: dict[str, Any], kind: str, reason: str, message: str) -> None:
    """An Event on the job (kopf posts it in the background)."""
    kopf.event(body, type=kind, reason=reason, message=message)  # type: ignore[arg-type]  # kopf takes raw dicts too


def _api_reason(e: ApiException) -> str:
    try:
        return json.loads(e.body or "").get("message") or str(e.reason)
    except (TypeError, ValueError):
        return str(e.reason)


def _merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """What a JSON merge patch makes of `base` (RFC 7386): objects merge, null deletes."""
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merged(out[k], v)
        else:
            out[k] = v
    return out


def _job_or_problem(body: dict[str, Any]) -> Job | str:
    """The typed job, or one line on what the trainer would refuse (the API server let it through)."""
    meta = body["metadata"]
    raw = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {"name": meta["name"]}}
    try:
        manifest = parse_manifest({**raw, "spec": body.get("spec") or {}})
    except SpecError as e:
        return "invalid job: " + "; ".join(f"{p}: {m}" if p else m for p, m in e.problems)
    return Job(meta["name"], meta["namespace"], meta["uid"], manifest.spec, meta.get("generation", 1))


def _children_current(status: dict[str, Any], generation: int) -> bool:
    created = any(c.get("type") == "Created" and c.get("status") == "True" for c in status.get("conditions") or [])
    return created and status.get("observedGeneration") == generation


def _condition_reason(status: dict[str, Any], ctype: str) -> str:
    return next((c.get("reason", "") for c in status.get("conditions") or [] if c.get("type") == ctype), "")


def _samples(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = s.value
    return out


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- registration


def register(op: Operator, registry: kopf.OperatorRegistry) -> None:
    """Register the handlers with kopf (the interval comes from the command line, so not at import)."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=names.GROUP)
        settings.posting.level = logging.WARNING  # Events are ours (kopf.event); log lines are not Events
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        op.kube = await Kube.connect()

        op.ticker = asyncio.create_task(op.tick_all(), name="codex-operator ticks")

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if op.ticker is not None:
            op.ticker.cancel()
        if op.http is not None:
            await op.http.close()
        if op.kube is not None:
            await op.kube.close()

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # the same client library as the operator's own calls: in-cluster ServiceAccount, else kubeconfig
        return await kopf.login_via_async_client(**kwargs)

    @kopf.on.event(group=names.GROUP, version=names.VERSION, plural=names.PLURAL, registry=registry)
    async def job_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event.get("type") == "DELETED":
            metrics.set_phase(*key, None)
            op.locks.pop(key, None)
            op.dirty.discard(key)
            op.bodies.pop(key, None)
            op.written.pop(key, None)
            op.explained.pop(key, None)
            return
        op.bodies[key] = dict(body)
        await op.reconcile(*key, op.bodies[key])

    @kopf.on.event("batch", "v1", "jobs", labels={names.LABEL_JOB: kopf.PRESENT}, registry=registry)
    async def attempt_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event.get("type") == "DELETED":
            return
        owner = body["metadata"]["labels"][names.LABEL_JOB]
        await op.reconcile(body["metadata"]["namespace"], owner)
