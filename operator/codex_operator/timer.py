"""The timer: one task for all jobs (not one per job) that reads rank 0's progress while a job runs, says
why its pods or its queue hold it, finds stalls, retries failed reconciles when their backoff is due, ends
jobs whose deadline passed and deletes finished jobs after their TTL.

`Timer` is the Operator's timer half (handlers.Operator inherits it); it acts through the reconcile's
own writes (`timer_patch`, `reconcile`), so the two never disagree on what the job looks like.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from kubernetes_asyncio.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from . import memory, metrics, names, retrydelay, watched
from .attempts import UNBOUND_CLAIMS, Attempt, failed_create, provisioning_failed, waiting_kind, waiting_reason
from .conditions import condition, condition_reason
from .jobstate import JobState, Options
from .kube import Kube, read_limited
from .progress import parse_ts, progress_changed, progress_from_metrics
from .status import (
    TERMINAL,
    Stall,
    queue_words,
    seconds_left,
    volume_lost_message,
    waiting_in_queue,
)
from .watched import Key

log = logging.getLogger("codex_operator")
# a rank 0 whose /metrics does not answer (still loading its model, or frozen) is read again after one
# interval, then two, four..., at most this many seconds apart: a thousand silent pods must not fill every
# timer round with reads that time out, delaying the progress, TTLs and retries of the others
PROGRESS_BACKOFF_MAX = 30.0


def deadline_passed(body: dict[str, Any] | None, now: datetime) -> bool:
    """A job not finished past its runPolicy.activeDeadlineSeconds: its reconcile stops the live attempt, whose
    Job was made with the time left then, or with none (a deadline added or lowered by an edit since)."""
    status = (body or {}).get("status") or {}
    limit = (((body or {}).get("spec") or {}).get("runPolicy") or {}).get("activeDeadlineSeconds")
    deleting = ((body or {}).get("metadata") or {}).get("deletionTimestamp")  # its reconcile does nothing
    if not isinstance(limit, int) or not status.get("startTime") or status.get("phase") in TERMINAL or deleting:
        return False
    left = seconds_left(limit, status["startTime"], now)  # as the reconcile's plan counts it
    return left is not None and left <= 0


STARTED = datetime.now(UTC)  # this operator process: no clock it starts from the status runs from before


def last_reading(status: dict[str, Any]) -> Stall | None:
    """The stall clock from the status: its last progress reading, when the running attempt gave it (after
    the attempt last went Running), counted from this process's start at the earliest (the operator may have
    been away longer than the deadline: the trainer gets the whole deadline to answer it); None where the
    attempt gave no reading, and the clock starts at the next one."""
    progress, attempt = status.get("progress") or {}, int(status.get("attempt") or 1)
    running = condition(status, "Running")
    try:
        read, since = parse_ts(progress.get("updatedAt")), parse_ts(running.get("lastTransitionTime"))
    except (TypeError, ValueError):
        return None
    ran = status.get("ranAttempt") == attempt and running.get("status") == "True"
    if read is None or since is None or read < since or not ran or not isinstance(progress.get("step"), int):
        return None
    return Stall(attempt, progress["step"], max(read, STARTED))


class Timer:
    """The Operator's timer half: `tick_all` runs one round for every job each progress interval."""

    options: Options
    kube: Kube | None
    jobs: dict[Key, JobState]
    pods: watched.Pods
    http: aiohttp.ClientSession | None
    post_event: Callable[[dict[str, Any], str, str, str], None]  # (body, Normal|Warning, reason, message)

    if TYPE_CHECKING:  # the reconcile's half (handlers.Operator)

        @property
        def in_cluster(self) -> bool: ...

        def state(self, key: Key) -> JobState: ...

        async def reconcile(
            self, namespace: str, name: str, body: dict[str, Any] | None = None, stalled: Stall | None = None
        ) -> None: ...

        async def timer_patch(self, body: dict[str, Any], patch: dict[str, Any]) -> bool: ...

        def _attempt_jobs(self, key: Key, uid: str) -> list[watched.Seen]: ...

        async def volume_lost(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def tick(self, key: Key, st: JobState) -> None:
        body = st.body
        if st.retry_at is not None:
            return  # tick_once runs it when its backoff is due
        if body is None:
            return
        phase = (body.get("status") or {}).get("phase")
        log.debug("tick %s/%s %s", *key, phase)
        try:
            if phase == "Running":
                # first: a frozen trainer's /metrics does not answer, and the tick's timeout may end the read
                self.check_stall(key, st, body)
                await self.read_progress(body)
            else:
                st.moved = None  # the stall clock runs only while the attempt runs (not while queued or preempted)
            if phase in ("Pending", "Restarting"):
                await self.explain_wait(body)
            elif phase == "Suspended":
                await self.explain_queue(body)
            else:
                st.stop_explaining()  # the next wait (a restart, a preemption) is looked at after 30 s again
            if phase in TERMINAL:
                await self._expire(body)
        except Exception:  # kopf would back a failed timer off for a minute: log it and tick on time instead
            log.exception("timer of %s/%s failed", *key)

    async def tick_once(self) -> None:
        gate = asyncio.Semaphore(32)
        limit = max(self.options.progress_interval, 5.0)
        slow: list[Key] = []

        async def one(key: Key, st: JobState) -> None:
            async with gate:
                try:  # one slow job (a rank 0 that does not answer) must not hold up the others' ticks
                    await asyncio.wait_for(self.tick(key, st), timeout=limit)
                except TimeoutError:
                    slow.append(key)

        now, clock = datetime.now(UTC), time.monotonic()

        def reconcile_due(st: JobState) -> bool:  # its retry's backoff is over, its deadline passed, its pause ended
            if st.retry_at is not None:
                return clock >= st.retry_at
            return deadline_passed(st.body, now) or retrydelay.restart_due(st.body, now)

        due = {k for k, st in self.jobs.items() if reconcile_due(st)}
        # a retry is a whole reconcile: bounded by the API calls' own timeouts, not by the tick's
        await asyncio.gather(
            *(one(k, st) for k, st in list(self.jobs.items()) if k not in due), *(self.reconcile(*k) for k in due)
        )
        if slow:  # one line a round, not one a job: an overloaded API server slows them all at once
            log.warning(
                "the timer's work for %d job(s) took over %.0f s and was cut short this round (e.g. %s/%s); "
                "the API server or their pods answer slowly",
                len(slow), limit, *slow[0],
            )  # fmt: skip
        await self._write_progress(limit)
        # so is a stalled attempt's restart (stop it, start the next, write why): never cut short halfway
        await asyncio.gather(*(self._restart_stalled(k, st) for k, st in list(self.jobs.items()) if st.stalled))

    async def _restart_stalled(self, key: Key, st: JobState) -> None:
        stalled, st.stalled = st.stalled, None
        if st.moved is not stalled:
            return  # a reading in the same round moved the step (or replaced the clock): not stalled after all
        await self.reconcile(*key, stalled=stalled)
        if st.retry_at is None and st.moved is stalled:
            st.moved = None  # done (a failed restart keeps the clock: the next tick finds it stalled again)

    async def tick_all(self) -> None:
        """One timer for all jobs (kopf's per-object timers would put a finalizer on every job, which
        blocks its deletion whenever the operator is down)."""
        trimmer = memory.Trimmer()
        while True:
            await asyncio.sleep(self.options.progress_interval)
            started = time.perf_counter()
            try:
                await self.tick_once()
            except Exception:  # a round that fails must not end the timer: progress, retries and TTLs live here
                log.exception("the timer's round failed; the next one runs on time")
            metrics.TIMER_ROUND.set(time.perf_counter() - started)
            trimmer.seen(len(self.jobs))

    async def read_progress(self, body: dict[str, Any]) -> None:
        assert self.kube is not None
        meta, status = body["metadata"], body.get("status") or {}
        ns, name = meta["namespace"], meta["name"]
        port = ((body.get("spec") or {}).get("metrics") or {}).get("port") or names.METRICS_PORT
        st = self.state((ns, name))
        now = time.monotonic()
        if now < st.unread_until:
            return  # its last reads failed: try again after a backoff, so silent pods do not fill the round
        try:
            rank0 = self._rank0(body)
            if rank0 is None:
                return
            _, pod_name, ip = rank0
            if self.in_cluster:
                text = await self._get_text(f"http://{f'[{ip}]' if ':' in ip else ip}:{port}/metrics")
            else:
                text = await self.kube.pod_metrics_via_proxy(ns, pod_name, port)
            samples = await asyncio.to_thread(_samples, text)  # a large page must not stall other jobs
        except Exception as e:  # a trainer still loading its model has no endpoint yet: not an error worth a trace
            metrics.PROGRESS_ERRORS.inc()
            log.debug("progress of %s/%s not readable yet: %s", ns, name, e)
            st.unread += 1
            st.unread_until = now + min(self.options.progress_interval * 2 ** (st.unread - 1), PROGRESS_BACKOFF_MAX)
            return
        st.unread, st.unread_until = 0, 0.0
        # the pace from a reading this recent: rounds whose writes the budget deferred (at thousands of jobs a
        # job's progress is written every few rounds) still give one; one from before a suspension does not
        fresh = max(10 * self.options.progress_interval, 120.0)
        progress, checkpoint = progress_from_metrics(samples, datetime.now(UTC), status.get("progress"), fresh)
        if not progress.get("totalSteps"):
            return  # the endpoint is up but training has not started
        number, uid = int(status.get("attempt") or 1), rank0[0]
        if st.moved is None or (st.moved.attempt, st.moved.pod, st.moved.step) != (number, uid, progress["step"]):
            st.moved = Stall(number, progress["step"], datetime.now(UTC), uid)
        patch: dict[str, Any] = {}
        if progress_changed(status.get("progress"), progress):
            patch["progress"] = progress
        if checkpoint and checkpoint.get("step") != (status.get("checkpoint") or {}).get("step"):
            patch["checkpoint"] = checkpoint
        if patch:
            st.progress_patch = (body, patch)  # written after the round's reads, within the write budget

    async def _write_progress(self, limit: float) -> None:
        """Write this round's progress readings, at most the budget (--progress-writes-per-second × the
        interval, at least one), the jobs written longest ago first; the rest are read again and written in a
        later round (a reading not written is not kept: the next one is newer). Each write gets the round's
        time limit, as a read does: a slow API server delays no stall restart or TTL by more."""
        todo = [(st.progress_written, key, st) for key, st in self.jobs.items() if st.progress_patch is not None]
        rate = self.options.progress_writes_per_second
        budget = max(1, int(rate * self.options.progress_interval)) if rate > 0 else len(todo)
        todo.sort(key=lambda t: t[0])
        for _, _, st in todo[budget:]:
            st.progress_patch = None
        if len(todo) > budget:
            metrics.PROGRESS_DEFERRED.inc(len(todo) - budget)
        gate = asyncio.Semaphore(32)

        async def write(key: Key, st: JobState) -> None:
            assert st.progress_patch is not None
            (body, patch), st.progress_patch = st.progress_patch, None
            async with gate:
                try:
                    await asyncio.wait_for(self.timer_patch(body, patch), timeout=limit)
                except ApiException as e:  # one job's failed write is not the others'
                    if e.status == 404:  # deleted meanwhile: nothing to say
                        log.debug("progress of %s/%s not written: the job is gone", *key)
                    else:
                        log.warning("progress of %s/%s not written this round: HTTP %s %s", *key, e.status, e.reason)
                except Exception:  # a server that does not answer, say
                    log.warning("progress of %s/%s not written this round", *key, exc_info=True)
                finally:  # its turn was spent either way: a write that keeps failing must not stay first
                    st.progress_written = time.monotonic()

        await asyncio.gather(*(write(key, st) for _, key, st in todo[:budget]))

    def _rank0(self, body: dict[str, Any]) -> tuple[str, str, str] | None:
        """The running rank-0 pod of the job's current attempt, as the pods' watch shows it: (UID, name, IP)."""
        for pod in self._live_pods(body):
            meta, status = pod["metadata"], pod["status"]
            if status.get("phase") == "Running" and meta["labels"].get(watched.POD_INDEX) == "0":
                return meta.get("uid", ""), meta["name"], status.get("podIP") or ""
        return None

    def _live_pods(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The pods of the job's current attempt Job, as the pods' watch shows them (none being deleted)."""
        job = self._live_attempt(body)
        return [] if job is None else self.pods.of(body["metadata"]["namespace"], job.name, job.uid)

    def check_stall(self, key: Key, st: JobState, body: dict[str, Any]) -> None:
        """runPolicy.progressDeadlineSeconds: a running attempt whose step has not moved for that long is
        stopped and the job restarts from its newest checkpoint. The clock starts at the attempt's first
        progress reading, which the trainer publishes once its model and data are loaded; so a download or a
        slow data read is never a stall. A trainer that stops answering (frozen, its node cut off) moves no
        step either."""
        deadline = ((body.get("spec") or {}).get("runPolicy") or {}).get("progressDeadlineSeconds")
        status = body.get("status") or {}
        if deadline and st.moved is None and st.unread:
            # no reading since this operator started, and rank 0 did not answer: a frozen trainer gives none
            st.moved = last_reading(status)
        moved = st.moved
        if not deadline or moved is None or moved.attempt != int(status.get("attempt") or 1):
            return
        if (datetime.now(UTC) - moved.since).total_seconds() < deadline:
            return
        log.info("%s/%s: attempt %d stalled at step %d", *key, moved.attempt, moved.step)
        st.stalled = moved  # restarted by tick_once, outside this tick's timeout

    async def explain_queue(self, body: dict[str, Any]) -> None:
        """A job waiting in a queue: Kueue's own words on why (the quota it waits for) in status.message."""
        assert self.kube is not None
        meta, status = body["metadata"], body.get("status") or {}
        st = self.state((meta["namespace"], meta["name"]))
        now = time.monotonic()
        if condition_reason(status, "Suspended") != "Queued" or not st.explain_due(now, at_once=True):
            return
        job = self._live_attempt(body)
        if job is None:
            return
        said = queue_words(await self.kube.list_workloads(meta["namespace"], job.uid)).message
        message = waiting_in_queue(((body.get("spec") or {}).get("runPolicy") or {}).get("queueName"), said)
        if said and message != status.get("message"):
            await self.timer_patch(body, {"message": message})

    async def explain_wait(self, body: dict[str, Any]) -> None:
        """Say in status.message why the pods are not running yet: an image that cannot be pulled, a pod
        that cannot be scheduled, or pods the Job controller cannot create (a quota, a webhook)."""
        assert self.kube is not None
        meta, status = body["metadata"], body.get("status") or {}
        ns, name = meta["namespace"], meta["name"]
        st = self.state((ns, name))
        now = time.monotonic()
        if status.get("nextAttemptAt"):
            return  # a pause after a crash: the message says when the next attempt starts; no pod is waited for
        if not st.explain_due(now):
            return  # pods that wait for a reason keep waiting a while: look again later, not every tick
        pods = self._live_pods(body)
        nodes = int((body.get("spec") or {}).get("numNodes") or 1)
        why = waiting_reason(pods) or (await self._why_no_pods(body) if len(pods) < nodes else None)
        if why is None:
            return
        if f'persistentvolumeclaim "{names.pvc_name(name)}" not found' in why:  # deleted: made again next round
            if status.get("message") != volume_lost_message(name):
                await self.volume_lost(body)
            st.check_children, st.retry_at = True, 0.0
            return
        if UNBOUND_CLAIMS in why:
            why += await self._why_unbound(body)
        attempt = status.get("attempt") or 1
        message = f"attempt {attempt} waiting: {why}"
        if message != status.get("message") and await self.timer_patch(body, {"message": message}):
            said = (attempt, waiting_kind(why))
            if st.waiting_said != said:  # once per attempt and kind of wait, not for every count the scheduler gives
                st.waiting_said = said
                self.post_event(body, "Warning", "Waiting", message)  # `kubectl describe ctj` shows it too

    async def _why_unbound(self, body: dict[str, Any]) -> str:
        """What the provisioner said of the job's claims that are still unbound ("" if nothing): the scheduler
        names no claim and no cause, and a StorageClass misspelt waits for ever. The job's own volume's class
        cannot change (checkpoints are written there), so its way out is a new job: nothing is lost, no pod ran."""
        assert self.kube is not None
        meta, spec = body["metadata"], body.get("spec") or {}
        ours = names.pvc_name(meta["name"])
        claims = [
            (spec.get("storage") or {}).get("existingClaim") or ours,
            (spec.get("data") or {}).get("existingClaim"),
        ]
        for claim in filter(None, claims):
            pvc = await self.kube.get("PersistentVolumeClaim", meta["namespace"], claim)
            if pvc is None or (pvc.get("status") or {}).get("phase") not in (None, "Pending"):
                continue
            events = await self.kube.list_events(
                meta["namespace"], "PersistentVolumeClaim", claim, pvc["metadata"]["uid"]
            )
            said = provisioning_failed(events)
            if said is None:
                continue
            fix = (
                " (storage.storageClassName cannot change: delete the job and create it again with a class from "
                "kubectl get storageclass; no pod has run, so nothing is lost)"
                if claim == ours
                else ""
            )
            return f"; volume {claim}: {said}{fix}"
        return ""

    async def _why_no_pods(self, body: dict[str, Any]) -> str | None:
        """The Job controller's own words when it cannot create (some of) an attempt's pods (its FailedCreate
        Events)."""
        assert self.kube is not None
        job = self._live_attempt(body)
        if job is None or job.suspended:
            return None
        events = await self.kube.list_events(body["metadata"]["namespace"], "Job", job.name, job.uid)
        return failed_create(events)

    def _live_attempt(self, body: dict[str, Any]) -> Attempt | None:
        """The job's current attempt Job as the watch shows it (None: not there, or not this job's)."""
        meta, status = body["metadata"], body.get("status") or {}
        want = names.attempt_name(meta["name"], status.get("attempt") or 1)
        found = self._attempt_jobs((meta["namespace"], meta["name"]), meta["uid"])
        return next((s.attempt for s in found if s.attempt.name == want and not s.deleting), None)

    async def _get_text(self, url: str) -> str:
        if self.http is None:
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        async with self.http.get(url) as resp:
            resp.raise_for_status()
            return await read_limited(resp)

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
            await self.kube.delete_job(meta["namespace"], meta["name"], meta["uid"])


def _samples(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = s.value
    return out
