"""The controller: observe, call the pure builders and the status function, apply, patch status.

One level-triggered `reconcile` per CodexTrainingJob, run after events of the job and of its attempt
Jobs, and again after an operator restart (the jobs' informer lists every job at start). The jobs and
their children are watched by the operator's own informers (informer.py), which cost a fraction of
kopf's per-event work. A watch event only keeps what it says and queues its job; a fixed set of workers
reconciles the queued jobs, each once however many events it had meanwhile, from the newest body
(workqueue.py). It derives everything
from what exists (attempt numbers from the Jobs, restarts from their count), so running it twice, or
after a SIGKILL halfway, creates nothing twice: children have fixed names and "already exists" means
adopt. One timer task (timer.py; not one per job) reads rank 0's progress while a job runs, says why
pods wait, retries failed reconciles and deletes finished jobs after their TTL.

kopf only runs the operator (registration.py): it has no resource handler, so it writes nothing to the
objects: no annotations, no status.kopf, and no finalizer (kopf puts one on every object that has a kopf
timer or daemon, which would block `kubectl delete` while the operator is down; hence the one timer task
of our own).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio.client.rest import ApiException

from . import bodies, builders, informer, metrics, names, watched
from .attempts import Attempt, PodFailure, blame, final_numbers
from .builders import Job
from .conditions import set_condition
from .eventline import EventLine
from .jobstate import JobState, Options
from .kube import CONNECTIONS, Kube
from .progress import parse_ts, ts
from .refusals import Leftover, Refused, Taken, holder, next_backoff, server_message
from .status import (
    TERMINAL,
    Plan,
    QueueSaid,
    Stall,
    deadline_left,
    finished_edit,
    plan,
    queue_words,
    volume_lost_message,
)
from .timer import Timer
from .watched import Key
from .workqueue import WorkQueue

T = TypeVar("T")

log = logging.getLogger("codex_operator")
# status keys the reconcile owns; progress and checkpoint belong to the progress timer (merge patches
# of disjoint keys cannot undo each other)
OWNED = (
    "phase",
    "message",
    "conditions",
    "attempt",
    "restarts",
    "crashes",
    "disruptions",
    "preemptions",
    "ranAttempt",
    "stoppedAttempt",
    "nextAttemptAt",
    "startTime",
    "completionTime",
    "observedGeneration",
)

# reconciles in flight at once, and the workers that run the queued ones: as many as the API client has
# connections (kube.CONNECTIONS), since more could get no further; a job waiting its turn is a key in the
# queue, not a watch event held or a half-done reconcile's parsed spec, manifests and request bodies
# (10,000 jobs created at once)
RECONCILES_AT_ONCE = CONNECTIONS

EventPoster = Callable[[dict[str, Any], str, str, str], None]


class Operator(Timer):
    """The controller: one reconcile per job event, one timer for all jobs. The API client and the Event
    poster are passed in, so the whole controller runs in-process against a fake API server."""

    def __init__(self, options: Options, kube: Kube | None = None, post_event: EventPoster | None = None):
        self.options = options
        self.kube = kube
        self.events = EventLine(self._send_event)
        self.post_event = post_event or self.events.post
        self.jobs: dict[Key, JobState] = {}
        self.index = watched.Local()  # the attempt Jobs by job, fed by their watch events
        self.pods = watched.Pods()  # their pods, by attempt, fed by theirs
        self.watches: informer.Watches | None = None  # the informers, on the cluster (started at startup)
        self.http: aiohttp.ClientSession | None = None
        self.ticker: asyncio.Task | None = None
        self.gate = asyncio.Semaphore(RECONCILES_AT_ONCE)
        # the jobs due a reconcile, in the order their events came, each once (on the cluster)
        self.queue = WorkQueue(lambda key, afresh: self.reconcile(*key, None if afresh else self._known(key)))

    @property
    def in_cluster(self) -> bool:
        if self.options.progress_via != "auto":
            return self.options.progress_via == "pod-ip"
        return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))

    def state(self, key: Key) -> JobState:
        st = self.jobs.get(key)  # not setdefault: that would build a JobState (and its lock) on every call
        if st is None:
            st = self.jobs[key] = JobState()
        return st

    def watch(self, namespaces: Iterable[str]) -> None:
        """Start the informers of the jobs and their children; the workers and the timer start once the
        attempt Jobs have been listed, so that a reconcile never sees a job without the attempts it has
        (restarts included). A job's events before then only queue it."""
        assert self.kube is not None
        self.watches = informer.Watches(
            self.kube.watch_client(), list(namespaces), jobs=self.take_job_watched, children=self.take_watched
        )
        self.watches.start()
        self.ticker = asyncio.create_task(self._after_listing(), name="codex-operator ticks")

    async def _after_listing(self) -> None:
        assert self.watches is not None
        await self.watches.listed()
        self.queue.start(RECONCILES_AT_ONCE)
        await self.tick_all()

    async def stop_watching(self) -> None:
        if self.watches is not None:
            await self.watches.stop()
            await self.watches.api.close()

    async def _send_event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """An Event on the job, through the operator's API client (the EventLine posts it in the background)."""
        assert self.kube is not None
        await self.kube.post_event(body, kind, reason, message)

    # ---------------------------------------------------------------- watch events

    def take_job_event(self, event_type: str | None, body: dict[str, Any]) -> Key | None:
        """Keep what a watch event of the job says; its key when a reconcile is due, None when nothing the
        last reconcile saw has changed (the operator's own status write coming back, say)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            kept = (self.jobs[key].body or {}).get("metadata", {}) if key in self.jobs else {}
            if kept.get("uid") not in (None, meta.get("uid")):
                return None  # an earlier job of that name, its deletion seen after the new one (a LIST after 410)
            metrics.set_phase(*key, None)
            self.jobs.pop(key, None)
            return None
        st = self.state(key)
        st.body = body = bodies.kept(body)
        if st.retry_at is not None and self.current(st, body) and meta.get("generation") == st.failed_generation:
            return None  # our own write of why it failed: the timer retries when the backoff says, not now
        if st.retry_at is None and self.current(st, body) and st.settled == (meta.get("generation"), st.children):
            return None  # our own write coming back: nothing the last reconcile saw has changed since
        return key

    def take_child_event(self, event_type: str | None, body: dict[str, Any]) -> tuple[Key, bool] | None:
        """Keep what an attempt Job's event says, or that a child was deleted; (the job's key, whether the
        job must be read afresh) when its job is due a reconcile."""
        meta = body["metadata"]
        if body.get("kind") == "Pod":  # read by the timer; the pod's Job changes too when it matters
            self.pods.feed(event_type, body)
            return None
        job = (meta.get("labels") or {}).get(names.LABEL_JOB)
        if not job:
            return None
        key = (meta["namespace"], job)
        if body.get("kind") == "Job":
            self.index.feed(event_type, body)
            if key in self.jobs:
                st = self.jobs[key]
                st.pending.shown(event_type, meta.get("uid", ""))
                st.children += 1
        if event_type == "DELETED":
            known = (self.jobs[key].body or {}) if key in self.jobs else {}
            uid = (known.get("metadata") or {}).get("uid")
            if uid and meta.get("name") in self.jobs[key].taken:  # a leftover it waits for is gone: try now
                self.jobs[key].backoff = 0.0
                return key, True
            if not uid or not builders.owned_by(body, uid):
                return None  # the job is gone (its children go with it), or it was another job's child
            self.state(key).check_children = True
            return key, True  # read the job afresh: it may be being deleted itself
        if body.get("kind") != "Job":
            return None  # a ConfigMap or Service changing is nothing to act on; only its deletion is
        return key, False

    def take_job_watched(self, event_type: str, body: dict[str, Any]) -> None:
        """A job's watch event, from its informer: the job is queued when a reconcile is due."""
        if (key := self.take_job_event(event_type, body)) is not None:
            self.queue.put(key)

    def take_watched(self, event_type: str, body: dict[str, Any]) -> None:
        """A child's watch event, from an informer: its job is queued when a reconcile is due."""
        if (due := self.take_child_event(event_type, body)) is not None:
            self.queue.put(*due)

    async def on_job_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event of the job, reconciled before this returns (the in-process tests' way; on the
        cluster the event is queued instead: workqueue.py)."""
        if (key := self.take_job_event(event_type, body)) is not None:
            await self.reconcile(*key, self.jobs[key].body)

    async def on_child_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """An attempt Job changed, or any child was deleted: reconcile its job before this returns."""
        if (due := self.take_child_event(event_type, body)) is not None:
            await self.reconcile(*due[0], None if due[1] else self._known(due[0]))

    def _known(self, key: Key) -> dict[str, Any] | None:
        return self.jobs[key].body if key in self.jobs else None

    # ---------------------------------------------------------------- reconcile

    async def reconcile(
        self, namespace: str, name: str, body: dict[str, Any] | None = None, stalled: Stall | None = None
    ) -> None:
        key = (namespace, name)
        st = self.state(key)
        async with self.gate, st.lock:
            try:
                with metrics.reconcile_timer():
                    await self._reconcile(key, st, body, stalled)
                st.retry_at, st.backoff, st.taken = None, 0.0, frozenset()
            except Exception as e:
                await self._failed(key, st, e)
        if st.body is None and st.retry_at is None and not st.lock.locked():
            self.jobs.pop(key, None)  # a job that is gone (an attempt's event came after its deletion)

    def current(self, st: JobState, body: dict[str, Any] | None) -> bool:
        """Whether a watched body can be trusted as the job's present state: its status is the one this
        operator last wrote (or it is brand new). Otherwise another write may have passed it: read afresh."""
        if body is None:
            return False
        if st.written is not None:
            status = body.get("status") or {}
            if st.written != status:
                return False
            st.written = status  # the same, as the watch shows it: one copy kept, not two
            return True
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
        st = self.state((namespace, name))
        uid = ((st.body or {}).get("metadata") or {}).get("uid")
        written = await self.kube.patch_status(namespace, name, patch, resource_version, uid)
        if patch.get("phase"):  # every phase written, a refusal's Pending or Restarting too, is the gauge's
            metrics.set_phase(namespace, name, patch["phase"])
        if isinstance(written, dict) and "metadata" in written:
            # no GET needed before the next reconcile
            st.body, st.written = bodies.kept(written), written.get("status") or {}
        else:
            st.written = bodies.merged(base, patch)

    async def timer_patch(self, body: dict[str, Any], patch: dict[str, Any]) -> bool:
        """A write the timer decided from the watched body: only if the job is still what it saw (False: it
        changed since, and the write was dropped)."""
        meta, status = body["metadata"], body.get("status") or {}
        async with self.state((meta["namespace"], meta["name"])).lock:
            try:
                patch = bodies.with_deletions(status, patch)
                await self.patch_status(meta["namespace"], meta["name"], patch, status, meta.get("resourceVersion"))
            except ApiException as e:
                if e.status != 409:
                    raise
                log.debug("%s/%s changed since the timer looked; its write is dropped", meta["namespace"], meta["name"])
                return False
        return True

    async def _reconcile(
        self, key: Key, st: JobState, watched: dict[str, Any] | None, stalled: Stall | None = None
    ) -> None:
        assert self.kube is not None
        namespace, name = key
        log.debug("reconcile %s/%s", namespace, name)
        children = st.children
        if self.current(st, watched):
            body = watched
        else:
            body = await _asking("reading the job", self.kube.get_job(namespace, name))
            st.body = body = bodies.kept(body) if body is not None else None
        if body is None:
            metrics.set_phase(namespace, name, None)
            return
        status = body.get("status") or {}
        if body["metadata"].get("deletionTimestamp"):
            return  # being deleted: the garbage collector takes the children; nothing to create or write
        if st.refused is not None and status.get("message") == st.refused:
            status = {k: v for k, v in status.items() if k != "message"}  # it got through: say what happens now
        if status.get("phase") in TERMINAL:
            metrics.set_phase(namespace, name, status["phase"])
            await self._finished(body)
            return
        now = datetime.now(UTC)
        job = self._parsed(st, body)
        if isinstance(job, str):
            await self._fail(body, "InvalidJob", job, now)
            return
        found = self._attempt_jobs(key, job.uid)
        attempts = [s.attempt for s in found if not s.deleting]
        latest = max(attempts, key=lambda a: a.number, default=None)
        if st.check_children or not bodies.children_current(status, job.generation):
            made = await self.ensure_children(job, latest)
            if made and status.get("attempt") and status.get("message") != volume_lost_message(job.name):
                status = await self.volume_lost(body)  # made again by an edit before the timer saw it gone
            st.check_children = False
        p = plan(
            job,
            status,
            attempts,
            now,
            *await self._how_it_ended(namespace, latest),
            may_suspend=not self.options.queue_owns_suspend,
            queue_said=await self._queue_said(job, latest),
            stalled=stalled,
            job_written=st.written_generation(latest.uid) if latest is not None else 0,
            trainer_image=self.options.settings.default_image,
            crash_pause=self.options.crash_pause,
        )
        if p.stop_attempt is not None:
            # the status first: cut short after the delete, the next reconcile reads that the operator stopped
            # this attempt itself (status.stoppedAttempt, or Failed), not that someone deleted it
            await self._write(body, p)
            what = f"deleting Job {p.stop_attempt.name} ({p.status['message']})"
            await _asking(what, self.kube.delete("Job", namespace, p.stop_attempt.name, p.stop_attempt.uid))
            st.pending.deleted(p.stop_attempt.uid)
        if p.create_attempt is not None:
            await self._start_attempt(job, p, now)
        if p.set_suspend is not None and latest is not None:
            what = f"{'suspending' if p.set_suspend else 'resuming'} Job {latest.name}"
            st.patched(await _asking(what, self.kube.set_suspend(namespace, latest.name, p.set_suspend)))
        if p.set_parallelism is not None and latest is not None:
            what = f"setting Job {latest.name}'s parallelism back to {p.set_parallelism}"
            scaled = {"spec": {"parallelism": p.set_parallelism}}
            st.patched(await _asking(what, self.kube.patch("Job", namespace, latest.name, scaled)))
        if p.stop_attempt is None:
            await self._write(body, p)
        st.refused = None
        st.settled = (job.generation, children)

    def _parsed(self, st: JobState, body: dict[str, Any]) -> Job | str:
        """The typed job (or what is wrong with it), parsed once per generation."""
        meta = body["metadata"]
        version = (meta["uid"], meta.get("generation", 1))
        if st.parsed is None or st.parsed[0] != version:
            st.parsed = (version, bodies.job_or_problem(body))
        return st.parsed[1]

    async def _finished(self, body: dict[str, Any]) -> None:
        """A finished job keeps no live attempt (one whose delete was refused after the status said Failed is
        deleted now) and acts on one edit only: storage.retain, which keeps or releases its volume."""
        meta, status = body["metadata"], body.get("status") or {}
        key = (meta["namespace"], meta["name"])
        await self._stop(key, self._attempt_jobs(key, meta["uid"]))
        if meta.get("generation") == status.get("observedGeneration"):
            return
        job = self._parsed(self.state((meta["namespace"], meta["name"])), body)
        if not isinstance(job, str) and not job.spec.storage.existing_claim:
            await self._retain(job, names.pvc_name(job.name))
        await self.patch_status(meta["namespace"], meta["name"], {"observedGeneration": meta.get("generation")}, status)
        storage = job.spec.storage if not isinstance(job, str) else None
        retain, claim = (storage.retain, storage.existing_claim) if storage else (None, None)
        said = finished_edit(status["phase"], meta.get("generation"), meta["name"], retain, claim)
        self.post_event(body, "Warning", "NotApplied", said)  # else the edit looks taken, and nothing happens
        log.info("%s/%s NotApplied: %s", meta["namespace"], meta["name"], said)

    async def _queue_said(self, job: Job, latest: Attempt | None) -> QueueSaid:
        """What Kueue says of a queued attempt that is suspended: why it waits, or why it was evicted."""
        assert self.kube is not None
        queued = job.spec.run_policy.queue_name or self.options.queue_owns_suspend
        if latest is None or latest.outcome is not None or not latest.suspended or not queued:
            return QueueSaid()
        read = self.kube.list_workloads(job.namespace, latest.uid)
        return queue_words(await _asking(f"listing the Workloads of Job {latest.name}", read))

    def _attempt_jobs(self, key: Key, uid: str) -> list[watched.Seen]:
        """A job's attempt Jobs: labelled with its name and owned by its UID (an earlier job's are not), as
        the watch shows them and as this operator changed them since."""
        return self.state(key).pending.merged(self.index.values_of(key), uid)

    async def _start_attempt(self, job: Job, p: Plan, now: datetime) -> None:
        assert p.create_attempt is not None and self.kube is not None
        n = p.create_attempt
        cm = builders.config_map(job, n)
        if not await self._create_owned(job, cm):
            # made by an earlier try whose Job was refused: the spec may have changed since
            there = await _asking(f"reading ConfigMap {cm['metadata']['name']}", self._get(cm))
            if there is not None and there.get("data") != cm["data"]:
                what = f"replacing ConfigMap {cm['metadata']['name']}"
                await _asking(
                    what, self.kube.delete("ConfigMap", job.namespace, cm["metadata"]["name"], there["metadata"]["uid"])
                )
                await self._create_owned(job, cm)
        left = deadline_left(job, p.status, now)
        if await self._create_owned(job, builders.attempt_job(job, n, self.options.settings, left)):
            metrics.ATTEMPTS.inc()
            if n > 1:
                metrics.RESTARTS.labels(p.reason).inc()

    async def _create_owned(self, job: Job, obj: dict[str, Any]) -> bool:
        """Create a child; True if created, False if it is ours already (adopted after a restart). A name
        held by anything else is a `Taken` (never adopted, never overwritten)."""
        assert self.kube is not None
        kind, name = obj["kind"], obj["metadata"]["name"]
        made = await _asking(f"creating {kind} {name}", self.kube.create(obj))
        if made is not None:
            if kind == "Job":
                self.state((job.namespace, job.name)).pending.created(made)
            return True
        there = await _asking(f"reading {kind} {name}", self.kube.get(kind, job.namespace, name))
        if there is None:
            raise Refused(f"creating {kind} {name}", 409, "it was being deleted")
        if there["metadata"].get("deletionTimestamp"):  # whoever's: it goes (a volume once no pod uses it)
            raise Refused(f"creating {kind} {name}", 409, "the earlier one is still being deleted")
        if not builders.owned_by(there, job.uid):
            raise Taken(kind, name, holder(there), job.namespace, await self._leftovers(job, name))
        if kind == "Job":
            self.state((job.namespace, job.name)).pending.created(there)
        return False

    async def _leftovers(self, job: Job, besides: str) -> tuple[Leftover, ...]:
        """The other objects of the job's names that are not its (an earlier job's of this name, after an
        orphaning delete), said all at once rather than one a retry: its attempt Jobs with their pods, as
        watched; its job files, Service and volume, read (this is a rare path)."""
        assert self.kube is not None
        key, found = (job.namespace, job.name), []
        seen = sorted(self.index.values_of(key), key=lambda s: s.attempt.number)
        for s in seen:
            if not s.owned_by(job.uid) and s.attempt.name != besides:
                pods = self.pods.of(job.namespace, s.attempt.name, s.attempt.uid)
                found.append(Leftover("Job", s.attempt.name, tuple(p["metadata"]["name"] for p in pods)))
        numbers = sorted({1, *(s.attempt.number for s in seen)})
        others = [("ConfigMap", names.config_name(job.name, n)) for n in numbers]
        others.append(("Service", names.service_name(job.name)))
        if not job.spec.storage.existing_claim:
            others.append(("PersistentVolumeClaim", names.pvc_name(job.name)))
        for kind, name in others:
            there = await self.kube.get(kind, job.namespace, name) if name != besides else None
            if there is not None and not builders.owned_by(there, job.uid):
                found.append(Leftover(kind, name))
        return tuple(found)

    async def _write(self, body: dict[str, Any], p: Plan) -> None:
        """The status keys that changed, then the Events."""
        meta, status = body["metadata"], body.get("status") or {}
        patch = {k: p.status[k] for k in OWNED if k in p.status and p.status.get(k) != status.get(k)}
        patch |= {k: None for k in OWNED if k in status and k not in p.status}  # stoppedAttempt, once done
        for key in ("progress", "checkpoint"):  # the final numbers on success
            if key in p.status and p.status[key] != status.get(key):
                patch[key] = p.status[key]
        if patch:
            write = self.patch_status(meta["namespace"], meta["name"], bodies.with_deletions(status, patch), status)
            await _asking("writing the job's status", write)
        for kind, reason, message in p.events:
            self.post_event(body, kind, reason, message)
            log.info("%s/%s %s: %s", meta["namespace"], meta["name"], reason, message)
        metrics.set_phase(meta["namespace"], meta["name"], p.status.get("phase"))
        due, st = p.status.get("nextAttemptAt"), self.state((meta["namespace"], meta["name"]))
        if due and due != st.wake_at:  # a new pause, or one an earlier operator process began: on time too
            st.wake_at = due
            self._wake((meta["namespace"], meta["name"]), due)

    def _wake(self, key: Key, at: str) -> None:
        """Reconcile the job when its pause after a crash ends, on time (the timer's round would be up to an
        interval late; it still catches a wake-up lost with the event loop)."""
        due = parse_ts(at)
        if due is not None:
            delay = max(0.0, (due - datetime.now(UTC)).total_seconds())
            asyncio.get_running_loop().call_later(delay, self.queue.put, key)

    async def volume_lost(self, body: dict[str, Any]) -> dict[str, Any]:
        """The job's volume was deleted under it and is made again, empty: say so, and forget the checkpoint the
        status names, so that nothing claims a resumption from it (written before the volume is made, so that a
        stop in between cannot lose it). The status as it is now."""
        meta, status = body["metadata"], body.get("status") or {}
        said = volume_lost_message(meta["name"])
        patch = {"message": said, "checkpoint": None, "progress": None}
        await self.patch_status(meta["namespace"], meta["name"], patch, status)
        self.post_event(body, "Warning", "VolumeLost", said)
        log.warning("%s/%s: %s", meta["namespace"], meta["name"], said)
        return {k: v for k, v in status.items() if k not in patch} | {"message": said}

    async def ensure_children(self, job: Job, latest: Attempt | None) -> bool:
        """The volume and, for several nodes, the rendezvous Service (and the live attempt's job file,
        deleted by hand): create what is missing, check that what exists is this job's, and keep or release
        the volume as storage.retain says now. True if the volume was made here and now."""
        assert self.kube is not None
        claim = builders.checkpoint_claim(job)
        service = builders.headless_service(job) if builders.needs_service(job) else None
        children = [c for c in (claim, service) if c is not None]
        if latest is not None and latest.outcome is None:
            children.append(builders.config_map(job, latest.number))
        created = await asyncio.gather(*(self._create_owned(job, c) for c in children), return_exceptions=True)
        for result in created:
            if isinstance(result, BaseException):
                raise result
        if claim is not None and created[0] is False:
            await self._retain(job, claim["metadata"]["name"])
        return claim is not None and created[0] is True

    async def _retain(self, job: Job, name: str) -> None:
        """storage.retain switched on: the volume loses its ownerReference (it outlives the job); off: gains
        it back (it goes with the job)."""
        assert self.kube is not None
        read = self.kube.get("PersistentVolumeClaim", job.namespace, name)
        there = await _asking(f"reading PersistentVolumeClaim {name}", read)
        if there is None:
            return
        want = builders.claim_owners(job)
        marked = (there["metadata"].get("annotations") or {}).get(names.ANNOTATION_JOB_UID) == job.uid
        if (there["metadata"].get("ownerReferences") or None) != want or not marked:
            # the annotation too: a volume with neither would be no longer recognisably this job's
            patch = {"metadata": {"ownerReferences": want, "annotations": {names.ANNOTATION_JOB_UID: job.uid}}}
            what = f"{'releasing' if want is None else 'owning'} PersistentVolumeClaim {name} (storage.retain)"
            await _asking(what, self.kube.patch("PersistentVolumeClaim", job.namespace, name, patch))

    async def _how_it_ended(self, namespace: str, latest: Attempt | None) -> tuple[PodFailure | None, dict | None]:
        """For an attempt that ended: the pod to blame for a failure, or rank 0's final numbers."""
        if latest is None or latest.outcome is None:
            return None, None
        pods = [p for p in await self._pods(namespace, latest) if _owned_by_uid(p, latest.uid)]
        if latest.outcome == "Failed":
            return blame(pods), None
        rank0 = [p for p in pods if _index(p) == "0"]
        return None, next(filter(None, map(final_numbers, rank0)), None)

    async def _pods(self, namespace: str, attempt: Attempt) -> list[dict[str, Any]]:
        assert self.kube is not None
        return await _asking(
            f"listing the pods of Job {attempt.name}",
            self.kube.list_pods(namespace, f"{watched.POD_JOB}={attempt.name}"),
        )

    async def _stop(self, key: Key, found: list[watched.Seen]) -> None:
        """A failed job keeps no pods: delete its live attempts (their pods get the grace period)."""
        assert self.kube is not None
        for s in found:
            a = s.attempt
            if a.outcome is None and not s.deleting:
                log.info("%s/%s failed: stopping %s", *key, a.name)
                await _asking(f"deleting Job {a.name}", self.kube.delete("Job", key[0], a.name, a.uid))
                self.state(key).pending.deleted(a.uid)

    def _get(self, obj: dict[str, Any]) -> Awaitable[dict[str, Any] | None]:
        assert self.kube is not None
        return self.kube.get(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])

    async def _fail(self, body: dict[str, Any], reason: str, problem: str, now: datetime) -> None:
        """Failed for good, with the reason and the line that says why. Its live attempts are stopped first:
        once the job says Failed nothing looks at it again, so no pod may be left to keep its node."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        await self._stop(key, self._attempt_jobs(key, meta["uid"]))
        conditions = set_condition(
            (body.get("status") or {}).get("conditions") or [],
            "Failed",
            reason,
            problem,
            now,
            meta["generation"],
            created=bool((body.get("status") or {}).get("attempt")),
        )
        await self.patch_status(
            meta["namespace"],
            meta["name"],
            {"phase": "Failed", "message": problem, "conditions": conditions, "completionTime": ts(now)}
            | {k: None for k in ("stoppedAttempt", "nextAttemptAt") if k in (body.get("status") or {})}
            | ({"progress": {"eta": None}} if "eta" in ((body.get("status") or {}).get("progress") or {}) else {}),
            body.get("status") or {},
        )
        self.post_event(body, "Warning", reason, problem)
        log.info("%s/%s %s: %s", meta["namespace"], meta["name"], reason, problem)
        metrics.set_phase(meta["namespace"], meta["name"], "Failed")

    async def _failed(self, key: Key, st: JobState, e: Exception) -> None:
        """A reconcile that did not get through: say so in status.message and an Event, then retry with
        backoff, or fail the job when the answer will not change."""
        if isinstance(e, ApiException):
            e = Refused("a call", e.status or 0, server_message(e.body, str(e.reason)))
        if not isinstance(e, Refused | Taken):
            log.exception("reconcile of %s/%s failed; retrying", *key)
            e = Refused("a call", 0, f"{type(e).__name__}: {e}")
        else:
            log.warning("%s/%s: %s", *key, e.line())
        backoff = st.backoff
        st.backoff = next_backoff(backoff)  # once per failed reconcile, whatever happens below
        st.retry_at = time.monotonic() + st.backoff
        try:
            body = await self.kube.get_job(*key) if self.kube is not None else None
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            status = body.get("status") or {}
            if status.get("phase") in TERMINAL:
                # its live attempt not stopped yet (the status is written first): say so, once, and retry
                if st.refused != e.line():
                    st.refused = e.line()
                    self.post_event(body, "Warning", "Refused", e.line())
                return
            if not e.transient and not (isinstance(e, Refused) and e.until_edited):
                try:
                    await self._fail(body, "Refused", e.line(), datetime.now(UTC))
                    st.backoff, st.retry_at = backoff, None
                    return
                except Refused as stopping:  # its live attempt could not be stopped yet: not Failed until it is
                    e = stopping
            st.failed_generation = body["metadata"].get("generation")
            st.refused = e.line()
            st.taken = e.blocking if isinstance(e, Taken) else frozenset()
            if status.get("message") != e.line():
                patch: dict[str, Any] = {"message": e.line()}
                if not status.get("phase"):
                    patch |= {"phase": "Pending", "restarts": 0}  # kubectl get ctj: RESTARTS 0, as for any new job
                elif (
                    status["phase"] == "Running"
                    and isinstance(e, Refused)
                    and (e.attempt or 0) > int(status.get("attempt") or 0)
                ):
                    # the attempt that ran has ended and the next one is refused: nothing runs now (a refused
                    # re-create of the running attempt's own job file is not that)
                    patch["phase"] = "Restarting"
                    patch["conditions"] = set_condition(
                        status.get("conditions") or [], "Restarting", "Refused", e.line(), datetime.now(UTC),
                        body["metadata"].get("generation", 1),
                    )  # fmt: skip
                await self.patch_status(*key, patch, status)
                self.post_event(body, "Warning", "NameTaken" if isinstance(e, Taken) else "Refused", e.line())
        except Exception:
            log.exception("%s/%s: could not record why its reconcile failed; retrying", *key)


async def _asking(what: str, call: Awaitable[T]) -> T:
    """Await an API call; a refusal becomes a `Refused` that says what was asked."""
    try:
        return await call
    except ApiException as e:
        raise Refused(what, e.status or 0, server_message(e.body, str(e.reason))) from e
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise Refused(what, 0, f"no answer: {type(e).__name__}: {e}") from e


def _owned_by_uid(obj: dict[str, Any], uid: str) -> bool:
    return not uid or any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or [])


def _index(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(watched.POD_INDEX)
