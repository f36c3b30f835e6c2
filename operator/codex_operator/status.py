"""From what the cluster shows to what the user sees: a pure function of (job, status, attempts, now).

`plan()` reads the attempt Jobs of a CodexTrainingJob (and, for a failed attempt, what its pod said)
and returns the status to write, the Events to post and what to do next (start attempt N+1, suspend
or resume the current one). It never calls the API: the handlers do what it says.

The trainer's exit-code contract (codex_trainer.contract) decides a failed attempt, read from its pods:
  exit 2 (bad spec or data)            -> Failed at once, with the trainer's own line
  DisruptionTarget (eviction, preemption, node loss), or the attempt Job deleted
                                       -> a new attempt, not counted against backoffLimit; counted
                                          against runPolicy.maxDisruptions
  deadline reached                     -> Failed
  anything else (crash, OOM, exit 1, a deleted pod) -> a new attempt, counted against backoffLimit
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from codex_trainer import contract

from . import names
from .builders import Job

PHASES = ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
TERMINAL = ("Succeeded", "Failed")
FailureKind = Literal["user-error", "disruption", "deadline", "crash"]
Outcome = Literal["Complete", "Failed"]


@dataclass(frozen=True)
class Attempt:
    """One attempt Job as the status function needs it."""

    number: int
    name: str
    uid: str = ""
    created: str = ""  # creationTimestamp
    suspended: bool = False
    ready: int = 0
    active: int = 0
    outcome: Outcome | None = None
    reason: str = ""  # the Job's Failed condition reason: PodFailurePolicy, BackoffLimitExceeded, DeadlineExceeded
    message: str = ""

    @property
    def failure(self) -> FailureKind | None:
        """How an earlier attempt ended, from its Job alone. A `podFailurePolicy` ending (FailJob) is exit 2
        or a disruption, and exit 2 ends the whole job, so an attempt that was followed by another one
        and ended that way was disrupted. The latest attempt is judged from its pods (`classify`)."""
        if self.outcome != "Failed":
            return None
        if self.reason == "DeadlineExceeded":
            return "deadline"
        return "disruption" if self.reason == "PodFailurePolicy" else "crash"


@dataclass(frozen=True)
class PodFailure:
    """What the failed pod of an attempt said: its exit code, termination message, and why it stopped."""

    pod: str
    exit_code: int | None = None
    reason: str = ""  # OOMKilled, Error, Evicted...
    message: str = ""
    finished_at: str = ""
    disrupted: bool = False  # the pod carries DisruptionTarget (evicted, preempted, its node lost)

    @property
    def blame_order(self) -> tuple:
        """Sort key: the rank to blame first. Exit 2 (the user's to fix) wins; then a rank the OOM killer
        ended (the others' collectives fail because of it, often sooner); then the earliest to end, ranks
        stopped by a signal (killed after another rank failed) last."""
        stopped = self.exit_code in (contract.EXIT_SIGKILL, contract.EXIT_SIGTERM) or self.exit_code is None
        oom = self.reason == "OOMKilled"
        return (self.exit_code != contract.EXIT_USER_ERROR, not oom, stopped, self.finished_at or "~")


@dataclass
class Plan:
    status: dict[str, Any]
    create_attempt: int | None = None
    set_suspend: bool | None = None
    stop_attempt: Attempt | None = None  # delete this live attempt's Job (its pods get their grace period)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (Normal|Warning, reason, message)


def attempt_from_job(obj: dict[str, Any]) -> Attempt:
    """Read an attempt Job (as the API returns it) into an Attempt."""
    meta, spec, st = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status") or {}
    outcome: Outcome | None = None
    reason, message = "", ""
    # Kubernetes sets FailureTarget / SuccessCriteriaMet first and Failed / Complete once every pod has
    # ended (a rank may take its grace period to checkpoint): the outcome is known from the first
    outcomes: dict[str, Outcome] = {
        "Failed": "Failed",
        "FailureTarget": "Failed",
        "Complete": "Complete",
        "SuccessCriteriaMet": "Complete",
    }
    for c in st.get("conditions") or []:
        if c.get("type") in outcomes and c.get("status") == "True" and outcome is None:
            outcome, reason, message = outcomes[c["type"]], c.get("reason", ""), c.get("message", "")
    return Attempt(
        number=int(meta.get("labels", {}).get(names.LABEL_ATTEMPT, "0")),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        created=meta.get("creationTimestamp", ""),
        suspended=bool(spec.get("suspend")),
        ready=int(st.get("ready") or 0),
        active=int(st.get("active") or 0),
        outcome=outcome,
        reason=reason,
        message=message,
    )


MESSAGE_LIMIT = 1024  # what of a pod's own words goes into status.message and an Event


def _capped(text: str | None) -> str:
    text = (text or "").strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def pod_failure(pod: dict[str, Any]) -> PodFailure | None:
    """The trainer container's end, from a failed pod (None when it has not terminated)."""
    st = pod.get("status") or {}
    disrupted = any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in st.get("conditions") or []
    )
    for cs in st.get("containerStatuses") or []:
        if cs.get("name") != names.CONTAINER:
            continue
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            return PodFailure(
                pod=pod["metadata"]["name"],
                exit_code=term.get("exitCode"),
                reason=term.get("reason", "") or "",
                message=_last_lines(term.get("message")),
                finished_at=term.get("finishedAt") or "",
                disrupted=disrupted,
            )
    if st.get("phase") == "Failed" or disrupted:
        reason, message = st.get("reason", "") or "", _capped(st.get("message"))
        return PodFailure(pod=pod["metadata"]["name"], reason=reason, message=message, disrupted=disrupted)
    return None


def _last_lines(text: str | None) -> str:
    """The end of a termination message (the kubelet keeps up to 4 KiB; the last line is the trainer's
    own verdict), capped."""
    text = (text or "")[-contract.TERMINATION_MESSAGE_LIMIT :].strip()
    return _capped(text.splitlines()[-1]) if text else ""


def blame(pods: list[dict[str, Any]]) -> PodFailure | None:
    """The pod to blame for a failed attempt (exit 2 first, then the OOM-killed rank, then the first to
    end), marked disrupted when any pod of the attempt was (the Job ended because of that pod)."""
    ended = [f for f in map(pod_failure, pods) if f is not None and (f.exit_code != 0 or f.disrupted)]
    if not ended:
        return None
    if any(f.disrupted for f in ended) and not any(f.exit_code == contract.EXIT_USER_ERROR for f in ended):
        return min((f for f in ended if f.disrupted), key=lambda f: f.blame_order)
    return min(ended, key=lambda f: f.blame_order)


def classify(attempt: Attempt, pod: PodFailure | None) -> FailureKind | None:
    """How the latest attempt failed: from the exit code and the conditions of its pods where they are
    at hand, else from its Job (`Attempt.failure`)."""
    if attempt.outcome != "Failed":
        return None
    if attempt.reason == "DeadlineExceeded":
        return "deadline"
    if pod is not None and pod.exit_code == contract.EXIT_USER_ERROR:
        return "user-error"
    if pod is not None and pod.disrupted:
        return "disruption"
    if attempt.reason == "PodFailurePolicy" and pod is None:
        # no pod left to ask (deleted by hand): the Job controller's message names the rule that matched,
        # and its index is ours: 0 is the exit code rule, 1 the disruption rule (builders.POD_FAILURE_POLICY)
        return "user-error" if attempt.message.endswith("rule at index 0") else "disruption"
    return attempt.failure


# waiting reasons that are only the normal way to start
_STARTING = {"ContainerCreating", "PodInitializing"}


def waiting_reason(pods: list[dict[str, Any]]) -> str | None:
    """Why a trainer pod has not started, in the words the user needs (None: it is just starting)."""
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        st = pod.get("status") or {}
        for c in st.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                return f"pod {pod['metadata']['name']} cannot be scheduled: {c.get('message', '')}".strip()
        for cs in st.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") and waiting["reason"] not in _STARTING:
                msg = (waiting.get("message") or "").strip()
                return f"pod {pod['metadata']['name']}: {waiting['reason']}" + (f": {msg}" if msg else "")
    return None


def failed_create(events: list[dict[str, Any]]) -> str | None:
    """Why the Job controller cannot create an attempt's pods, from its newest FailedCreate Event (a pod
    quota, a priority class that does not exist, Pod Security admission, a webhook): None if it has not said."""
    failed = [e for e in events if e.get("reason") == "FailedCreate" and e.get("type") == "Warning"]
    if not failed:
        return None
    newest = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return f"the Job controller cannot create the pods: {_capped(newest.get('message'))}"


def final_numbers(pod: dict[str, Any]) -> dict[str, Any] | None:
    """What rank 0 said when it finished: {"step", "loss", "evalLoss"} (its termination message)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if cs.get("name") == names.CONTAINER and term.get("exitCode") == 0:
            try:
                found = json.loads(term.get("message") or "")
            except ValueError:
                return None
            return found if isinstance(found, dict) else None
    return None


def checkpoint_path(step: int) -> str:
    """Where a checkpoint is in the trainer pod (status.checkpoint.path)."""
    return f"{names.OUTPUT_DIR}/{contract.checkpoint_dir(step)}"


def ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(s: str | None) -> datetime | None:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if s else None


def deadline_left(job: Job, status: dict[str, Any], now: datetime) -> int | None:
    """Seconds left of runPolicy.activeDeadlineSeconds, counted from the job's start (None: no deadline)."""
    limit = job.spec.run_policy.active_deadline_seconds
    if limit is None:
        return None
    start = _parse_ts(status.get("startTime")) or now
    return int(limit - (now - start).total_seconds())


def failure_line(attempt: Attempt, pod: PodFailure | None) -> str:
    """One line on why an attempt failed, the trainer's own words first."""
    if pod is not None:
        what = f"exited {pod.exit_code}" if pod.exit_code is not None else "failed"
        if pod.reason == "OOMKilled":
            what = f"was killed for using more memory than its limit ({what})"
        tail = pod.message.strip().splitlines()[-1] if pod.message.strip() else ""
        return f"trainer {what}" + (f": {tail}" if tail else "")
    said = attempt.message or attempt.reason or "the attempt failed"
    return f"its trainer pod is gone (deleted, or lost with its node); the Job controller said: {said}"


@dataclass(frozen=True)
class Stall:
    """A running attempt whose step has not moved for runPolicy.progressDeadlineSeconds."""

    attempt: int
    step: int
    since: datetime  # when the operator first read this step
    pod: str = ""  # the UID of the rank 0 pod it read: a replaced pod loads its model again, and is not a stall


@dataclass(frozen=True)
class QueueSaid:
    """What Kueue says of an attempt's Workload: why it was evicted (`evicted`: Kueue's reason, Preempted
    say), else why it is not admitted yet (the quota it waits for), in Kueue's own words."""

    evicted: str = ""
    message: str = ""


def queue_words(workloads: list[dict[str, Any]]) -> QueueSaid:
    for wl in workloads:
        conditions = {c.get("type"): c for c in (wl.get("status") or {}).get("conditions") or []}
        evicted, reserved = conditions.get("Evicted") or {}, conditions.get("QuotaReserved") or {}
        if evicted.get("status") == "True":
            return QueueSaid(evicted.get("reason") or "Evicted", _capped(evicted.get("message")))
        if reserved.get("status") == "False" and reserved.get("message"):
            return QueueSaid(message=_capped(reserved["message"]))
    return QueueSaid()


Decision = tuple[str, str, str]  # phase, reason, message


def plan(
    job: Job,
    status: dict[str, Any] | None,
    attempts: list[Attempt],
    now: datetime,
    failed_pod: PodFailure | None = None,
    final: dict[str, Any] | None = None,
    *,
    may_suspend: bool = True,
    queue_said: QueueSaid | None = None,
    stalled: Stall | None = None,
) -> Plan:
    """Decide the job's status and next action from its attempts (this job's own: owned by its UID, not
    being deleted; sorted or not). `status.attempt` remembers the newest attempt started, so an attempt Job
    deleted by hand is noticed. `may_suspend` is False where a queue may own every Job's `suspend`;
    `queue_said` is what Kueue says of the latest attempt's Workload (`queue_words`); `stalled` says the
    running attempt made no progress for its deadline."""
    old = status or {}
    p = Plan(status=copy.deepcopy(old))
    phase_before = old.get("phase")
    if phase_before in TERMINAL:
        return p  # final: nothing the cluster does later changes a finished job
    attempts = sorted(attempts, key=lambda a: a.number)
    current = max([int(old.get("attempt") or 0), *(a.number for a in attempts)])
    latest = next((a for a in attempts if a.number == current), None)
    p.status["attempt"] = current
    p.status["restarts"] = max(0, current - 1)
    created = [a.created for a in attempts if a.created]
    if created and not old.get("startTime"):
        # the operator may have stopped right after creating attempt 1, before writing status: the
        # deadline counts from then all the same
        p.status["startTime"] = min(created)

    if current == 0:
        phase, reason, message = _first_attempt(job, p, deadline_left(job, old, now), now)
    elif latest is None:
        phase, reason, message = _after_deletion(job, p, attempts, current, deadline_left(job, p.status, now), now)
    elif latest.outcome == "Complete":
        phase, reason, message = _succeeded(p, current, final, now)
    elif latest.outcome == "Failed":
        phase, reason, message = _after_failure(job, p, attempts, failed_pod, deadline_left(job, p.status, now), now)
    elif (
        stalled
        and job.spec.run_policy.progress_deadline_seconds
        and stalled.attempt == current
        and not latest.suspended
    ):
        phase, reason, message = _stalled(job, p, attempts, stalled, now)
    else:
        phase, reason, message = _live(job, p, latest, old, may_suspend, queue_said or QueueSaid())
    if phase == "Running":
        p.status["ranAttempt"] = current  # a later Running of this attempt is a resumption

    new = p.status
    same_attempt = new.get("attempt") == old.get("attempt")
    if phase == phase_before and same_attempt and phase in ("Pending", "Restarting") and old.get("message"):
        message = old["message"]  # the timer may have said why the pods wait: keep that
    new["phase"] = phase
    new["message"] = message
    new["observedGeneration"] = job.generation
    if phase != phase_before or not same_attempt:
        new["conditions"] = set_condition(old.get("conditions") or [], phase, reason, message, now, job.generation)
        if not (phase == "Pending" and not old.get("attempt")):  # the Created event has said it
            p.events.append(_event(phase, reason, message, latest, old))
        stalled_now = p.stop_attempt is not None  # the stall path: Restarting, or Failed at the backoff limit
        if stalled_now or _condition(old, "Stalled").get("status") == "True":
            why = message if stalled_now else f"the job is {phase} now"
            mark_reason = "Stalled" if stalled_now else ("Progressing" if phase == "Running" else "PhaseChanged")
            new["conditions"] = mark(new["conditions"], "Stalled", stalled_now, mark_reason, why, now, job.generation)
    return p


def _first_attempt(job: Job, p: Plan, left: int | None, now: datetime) -> Decision:
    rp = job.spec.run_policy
    if left is not None and left <= 0:
        return "Failed", "DeadlineExceeded", "activeDeadlineSeconds passed before it started"
    p.create_attempt = p.status["attempt"] = 1
    p.status.setdefault("startTime", ts(now))
    p.events.append(("Normal", "Created", f"created attempt 1 ({names.attempt_name(job.name, 1)})"))
    if rp.suspend and not rp.queue_name:
        return "Suspended", "Suspended", "created suspended (runPolicy.suspend)"
    if rp.queue_name:
        return "Pending", "Created", f"submitted to LocalQueue {rp.queue_name}; waiting for admission"
    return "Pending", "Created", "waiting for the trainer pods to start"


def _succeeded(p: Plan, n_attempts: int, final: dict[str, Any] | None, now: datetime) -> Decision:
    """The trainer's own last numbers (its termination message), else the last progress read."""
    new, final = p.status, final or {}
    new["completionTime"] = ts(now)
    prog = dict(new.get("progress") or {})
    for key, name in ((contract.FINAL_LOSS, "loss"), (contract.FINAL_EVAL_LOSS, "evalLoss")):
        if isinstance(final.get(key), int | float):
            prog[name] = _round(final[key])
    step = final.get(contract.FINAL_STEP) or prog.get("totalSteps")
    if step:
        prog.setdefault("totalSteps", step)
        new["progress"] = _with_step(prog, step)
    ckpt = final.get(contract.FINAL_CHECKPOINT)
    if isinstance(ckpt, dict) and ckpt.get(contract.FINAL_CHECKPOINT_STEP):
        n = int(ckpt[contract.FINAL_CHECKPOINT_STEP])
        new["checkpoint"] = {"step": n, "path": checkpoint_path(n)}
        if ckpt.get(contract.FINAL_CHECKPOINT_SAVED_AT):
            new["checkpoint"]["savedAt"] = ckpt[contract.FINAL_CHECKPOINT_SAVED_AT]
    return "Succeeded", "Succeeded", f"training finished in {n_attempts} attempt(s)"


COUNTED = {"crash": "crashes", "disruption": "disruptions"}  # the status keys that count each kind of ending


def _count(p: Plan, attempts: list[Attempt], kind: FailureKind | None) -> int:
    """Count the latest attempt's ending into status.crashes or status.disruptions and return the new total.
    The counts are written with the next attempt, so attempt Jobs deleted later (by hand, or a TTL a
    cluster policy puts on Jobs) still count; a job the previous release started counts what it finds."""
    if kind not in COUNTED:
        return 0
    key = COUNTED[kind]
    if key in p.status:
        before = int(p.status[key] or 0)
    else:
        before = sum(1 for a in attempts if a.number < attempts[-1].number and a.failure == kind)
    p.status[key] = before + 1
    return before + 1


def _after_failure(
    job: Job, p: Plan, attempts: list[Attempt], failed_pod: PodFailure | None, left: int | None, now: datetime
) -> Decision:
    rp, latest = job.spec.run_policy, attempts[-1]
    kind, line = classify(latest, failed_pod), failure_line(latest, failed_pod)
    counted = _count(p, attempts, kind)
    if kind == "user-error":
        decision = ("Failed", "InvalidJob", line)
    elif kind == "deadline" or (left is not None and left <= 0):
        decision = ("Failed", "DeadlineExceeded", "runPolicy.activeDeadlineSeconds reached")
    elif kind == "crash" and counted > rp.backoff_limit:
        limit = f"(attempt {latest.number}; runPolicy.backoffLimit {rp.backoff_limit} reached)"
        decision = ("Failed", "BackoffLimitExceeded", f"{line} {limit}")
    elif kind == "disruption" and counted > rp.max_disruptions:
        limit = f"(attempt {latest.number}; runPolicy.maxDisruptions {rp.max_disruptions} reached)"
        decision = ("Failed", "DisruptionLimitExceeded", f"attempt {latest.number} disrupted: {line} {limit}")
    else:
        why = "disrupted (not counted against backoffLimit)" if kind == "disruption" else "failed"
        return _restart(p, latest.number, kind, f"attempt {latest.number} {why}: {line}")
    p.status["completionTime"] = ts(now)
    return decision


def _restart(p: Plan, number: int, kind: FailureKind | None, what: str) -> Decision:
    nxt = number + 1
    p.create_attempt = p.status["attempt"] = nxt
    p.status["restarts"] = number
    ckpt = (p.status.get("checkpoint") or {}).get("step")
    # the newest checkpoint is at least the one rank 0 last reported: a stopping pod writes one more
    resume = (
        f"; attempt {nxt} resumes from the newest checkpoint (step {ckpt} or later)"
        if ckpt
        else f"; starting attempt {nxt}"
    )
    return "Restarting", ("Disrupted" if kind == "disruption" else "Retrying"), f"{what}{resume}"


def _after_deletion(
    job: Job, p: Plan, attempts: list[Attempt], current: int, left: int | None, now: datetime
) -> Decision:
    """The live attempt's Job is gone (deleted by hand, or by another controller): a disruption, not the
    trainer's failure, so the next attempt resumes from the checkpoint without spending backoffLimit."""
    rp = job.spec.run_policy
    gone = Attempt(number=current, name=names.attempt_name(job.name, current))
    disruptions = _count(p, [*attempts, gone], "disruption")
    what = f"attempt {current}'s Job {gone.name} was deleted"
    limit = f"(attempt {current}; runPolicy.maxDisruptions {rp.max_disruptions} reached)"
    if left is not None and left <= 0:
        p.status["completionTime"] = ts(now)
        return "Failed", "DeadlineExceeded", "runPolicy.activeDeadlineSeconds reached"
    if disruptions > rp.max_disruptions:
        p.status["completionTime"] = ts(now)
        return "Failed", "DisruptionLimitExceeded", f"{what} {limit}"
    return _restart(p, current, "disruption", what + " (not counted against backoffLimit)")


def _live(
    job: Job, p: Plan, latest: Attempt, old: dict[str, Any], may_suspend: bool, queue_said: QueueSaid
) -> Decision:
    rp = job.spec.run_policy
    queued = bool(rp.queue_name) or not may_suspend  # a queue owns the Job's suspend: never change it
    if not queued and latest.suspended != rp.suspend:
        p.set_suspend = rp.suspend
    if queued and latest.suspended:
        return _queued(job, p, latest, old, queue_said)
    if not queued and rp.suspend:
        return "Suspended", "Suspended", "suspended (runPolicy.suspend)"
    was_running = old.get("phase") == "Running" and old.get("attempt") == latest.number
    if latest.ready >= job.spec.num_nodes or was_running:
        # a rank that stops is not yet the end of the attempt: the Job's outcome says that
        message = f"attempt {latest.number}: {latest.ready} pod(s) running"
        return "Running", "Running", old.get("message", message) if was_running else message
    held = old.get("phase") == "Suspended"  # released by runPolicy.suspend or admitted by a queue
    starting = old.get("attempt") == latest.number and old.get("phase") in ("Suspended", "Pending")
    if latest.number > 1 and not starting:
        cond = _condition(old, "Restarting")
        if cond.get("status") != "True":
            cond = {}
        return "Restarting", cond.get("reason", "Retrying"), cond.get("message") or f"starting attempt {latest.number}"
    if rp.queue_name or (queued and held):
        queue = f"LocalQueue {rp.queue_name}" if rp.queue_name else "the queue"
        return "Pending", "Admitted", f"admitted by {queue}; waiting for the trainer pods to start"
    return "Pending", "Starting", "waiting for the trainer pods to start"


EVICTED = ("Preempted", "Evicted")  # the Suspended condition's reasons for an attempt the queue stopped


def _queued(job: Job, p: Plan, latest: Attempt, old: dict[str, Any], said: QueueSaid) -> Decision:
    """An attempt Job the queue keeps suspended: not admitted yet, or evicted (suspended by the queue after
    it was admitted; its trainers checkpoint and stop, and the same attempt runs again when the queue admits
    it). Kueue preempts for a higher priority, and evicts for other reasons too (a stopped ClusterQueue, a
    pods-ready timeout): its reason says which."""
    rp = job.spec.run_policy
    queue = f"LocalQueue {rp.queue_name}" if rp.queue_name else "the queue"
    same = old.get("attempt") == latest.number
    held = _condition(old, "Suspended")
    if same and old.get("phase") == "Suspended" and held.get("reason") in EVICTED:
        return "Suspended", held["reason"], old.get("message") or held.get("message", "")
    if same and (old.get("phase") == "Running" or said.evicted):  # said.evicted: also one the operator missed
        p.status["preemptions"] = int(old.get("preemptions") or 0) + 1
        ckpt = (old.get("checkpoint") or {}).get("step")
        where = f"resumes from the newest checkpoint (step {ckpt} or later)" if ckpt else "starts again"
        why = said.message or "the queue suspended its Job"
        reason = "Preempted" if said.evicted in ("", "Preempted") else "Evicted"
        return (
            "Suspended",
            reason,
            f"attempt {latest.number} {reason.lower()} (not a failure): {why}; it {where} when {queue} admits it again",
        )
    return "Suspended", "Queued", waiting_in_queue(rp.queue_name, said.message)


def waiting_in_queue(queue_name: str | None, said: str = "") -> str:
    """status.message of a job the queue has not admitted, with Kueue's words on why when there are some."""
    queue = f"LocalQueue {queue_name}" if queue_name else "the queue"
    return f"waiting for admission in {queue}" + (f": {said}" if said else "")


def _stalled(job: Job, p: Plan, attempts: list[Attempt], stall: Stall, now: datetime) -> Decision:
    """No step for runPolicy.progressDeadlineSeconds: stop the attempt and start the next from the newest
    checkpoint, counted against backoffLimit like a crash (a hung collective, a dead data mount)."""
    rp, latest = job.spec.run_policy, attempts[-1]
    p.stop_attempt = latest
    counted = _count(p, attempts, "crash")
    quiet = int((now - stall.since).total_seconds())
    what = (
        f"attempt {latest.number} stalled: no step for {quiet} s (runPolicy.progressDeadlineSeconds "
        f"{rp.progress_deadline_seconds}); its last step, {stall.step}, was read at {ts(stall.since)}"
    )
    if counted > rp.backoff_limit:
        p.status["completionTime"] = ts(now)
        return "Failed", "BackoffLimitExceeded", f"{what} (runPolicy.backoffLimit {rp.backoff_limit} reached)"
    phase, _, message = _restart(p, latest.number, "crash", what)
    return phase, "Stalled", message


def _condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), {})


def _event(phase: str, reason: str, message: str, latest: Attempt | None, old: dict) -> tuple[str, str, str]:
    again = latest is not None and old.get("ranAttempt") == latest.number  # after a preemption or a suspension
    if phase == "Running" and latest is not None and (latest.number > 1 or again):
        ckpt = (old.get("checkpoint") or {}).get("step")
        where = f"resumed from the newest checkpoint (step {ckpt} or later)" if ckpt else "resumed"
        return "Normal", "Resumed", f"attempt {latest.number} running{' again' if again else ''}: {where}"
    warning = phase in ("Failed", "Restarting")
    return ("Warning" if warning else "Normal"), reason, message


CONDITION_TYPES = ("Running", "Restarting", "Suspended", "Succeeded", "Failed")


def set_condition(
    conditions: list[dict[str, Any]],
    phase: str,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
    created: bool = True,
) -> list[dict[str, Any]]:
    """metav1.Condition entries: the phase's own condition True, the other phase conditions False, and
    `Created` once the children and the first attempt exist (`created`)."""
    out = [dict(c) for c in conditions]
    by_type = {c["type"]: c for c in out}
    wanted = {t: t == phase for t in CONDITION_TYPES}
    if created or "Created" in by_type:
        wanted["Created"] = True
    for ctype, on in wanted.items():
        cur = by_type.get(ctype)
        status = "True" if on else "False"
        if cur is None:
            if not on:
                continue  # no need to say False for something that never happened
            cur = {"type": ctype}
            out.append(cur)
        elif cur.get("status") == status and not on:
            continue
        if cur.get("status") != status:
            cur["lastTransitionTime"] = ts(now)
        cur["status"] = status
        cur["observedGeneration"] = generation
        if on and ctype == phase:
            cur["reason"], cur["message"] = reason, message[:32768]
        elif ctype == "Created":
            cur.setdefault("reason", "Created")
            made = "the volume, the job file (and for several nodes the Service) and the first attempt were created"
            cur.setdefault("message", made)
        elif not on:
            cur["reason"], cur["message"] = "PhaseChanged", f"the job is {phase} now"
    return out


def mark(
    conditions: list[dict[str, Any]], ctype: str, on: bool, reason: str, message: str, now: datetime, generation: int
) -> list[dict[str, Any]]:
    """Set one condition that is not a phase (Stalled): True or False, with its reason and message."""
    out = [dict(c) for c in conditions if c.get("type") != ctype]
    cur: dict[str, Any] = next((dict(c) for c in conditions if c.get("type") == ctype), {"type": ctype})
    status = "True" if on else "False"
    if cur.get("status") != status:
        cur["lastTransitionTime"] = ts(now)
    cur.update(status=status, reason=reason, message=message[:32768], observedGeneration=generation)
    return [*out, cur]


# ---------------------------------------------------------------- progress from rank 0's metrics


def progress_from_metrics(
    samples: dict[str, float], now: datetime, previous: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Turn rank 0's Prometheus gauges into status.progress and status.checkpoint; the ETA comes from
    the pace since the previous reading."""
    step = int(samples.get(contract.METRIC_STEP, 0))
    total = int(samples.get(contract.METRIC_TOTAL_STEPS, 0))
    prog: dict[str, Any] = {"step": step, "totalSteps": total}
    if contract.METRIC_LOSS in samples:
        prog["loss"] = _round(samples[contract.METRIC_LOSS])
    if samples.get(contract.METRIC_EVAL_LOSS):
        prog["evalLoss"] = _round(samples[contract.METRIC_EVAL_LOSS])
    tps = samples.get(contract.METRIC_TOKENS_PER_SECOND)
    if tps:
        prog["tokensPerSecond"] = round(tps)
    prog = _with_step(prog, step)
    before, when = (previous or {}).get("step"), _parse_ts((previous or {}).get("updatedAt"))
    if before is not None and when is not None and before < step < total:
        pace = (now - when).total_seconds() / (step - before)
        prog["eta"] = _duration((total - step) * pace)
    elif previous and previous.get("eta") and step == before:
        prog["eta"] = previous["eta"]
    prog["updatedAt"] = ts(now)
    ckpt = None
    if samples.get(contract.METRIC_CHECKPOINT_STEP):
        n = int(samples[contract.METRIC_CHECKPOINT_STEP])
        ckpt = {"step": n, "path": checkpoint_path(n)}
        if samples.get(contract.METRIC_CHECKPOINT_TIME):
            ckpt["savedAt"] = ts(datetime.fromtimestamp(samples[contract.METRIC_CHECKPOINT_TIME], UTC))
    return prog, ckpt


def _with_step(prog: dict[str, Any], step: int) -> dict[str, Any]:
    total = prog.get("totalSteps") or 0
    out = dict(prog, step=step)
    if total:
        pct = min(100, int(100 * step / total))
        out.update(percent=pct, percentText=f"{pct}%", stepText=f"{step}/{total}")
        if step >= total:
            out.pop("eta", None)
    return out


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def _duration(seconds: float) -> str:
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def progress_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a progress write says anything new (updatedAt alone is not news)."""
    strip = lambda d: {k: v for k, v in (d or {}).items() if k != "updatedAt"}  # noqa: E731
    return strip(old) != strip(new)


def condition_reason(status: dict[str, Any], ctype: str) -> str:
    """The reason of the status's condition of that type ("" where it has none)."""
    return next((c.get("reason", "") for c in status.get("conditions") or [] if c.get("type") == ctype), "")
