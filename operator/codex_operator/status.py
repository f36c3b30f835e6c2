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
  anything else (crash, OOM, exit 1, a deleted pod) -> a new attempt, counted against backoffLimit, after a
                                          pause (retrydelay: 10 s, doubling with each crash, status.nextAttemptAt)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from codex_trainer import contract

from . import handedits, names, retrydelay
from .attempts import Attempt, FailureKind, PodFailure, capped, classify
from .builders import Job, pod_fingerprint, training_length
from .conditions import condition, mark, set_condition
from .progress import checkpoint_path, parse_ts, round4, ts, with_step

PHASES = ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
TERMINAL = ("Succeeded", "Failed")


@dataclass
class Plan:
    status: dict[str, Any]
    create_attempt: int | None = None
    set_suspend: bool | None = None
    set_parallelism: int | None = None  # put the latest attempt Job's parallelism back (edited by hand)
    stop_attempt: Attempt | None = None  # delete this live attempt's Job (its pods get their grace period)
    stalled: bool = False  # stop_attempt because it made no progress (the Stalled condition)
    reason: str = ""  # the reason of the phase decided
    said: bool = False  # the Event for this phase and attempt was posted already (with the pause before it)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (Normal|Warning, reason, message)


def volume_lost_message(job_name: str) -> str:
    """status.message (and the VolumeLost Event) of a job whose volume was deleted under it."""
    return (
        f"PersistentVolumeClaim {names.pvc_name(job_name)} was deleted and is made again, empty: the job's "
        "checkpoints are gone and its next attempt trains from step 0"
    )


def finished_edit(phase: str, generation: int | None, name: str, retain: bool | None, claim: str | None) -> str:
    """The NotApplied Event of an edit to a finished job: what it can change (storage.retain and the TTL), and how to
    train again (`retain` None: the edited spec is not valid)."""
    if claim:
        again = f"delete it and apply it again with storage.existingClaim {claim}: its checkpoints are there"
    else:
        pvc = names.pvc_name(name)
        keep = "its volume is kept (storage.retain true)" if retain else "keep its volume (storage.retain: true)"
        again = f"{keep}, delete it, and apply it again with storage.existingClaim {pvc}: it resumes from there"
    return (
        f"the job is {phase}, which is final: the edit of generation {generation} changes nothing but "
        f"storage.retain and runPolicy.ttlSecondsAfterFinished; to train again, {again}"
    )


def deadline_left(job: Job, status: dict[str, Any], now: datetime) -> int | None:
    """Seconds left of runPolicy.activeDeadlineSeconds, counted from the job's start (None: no deadline)."""
    return seconds_left(job.spec.run_policy.active_deadline_seconds, status.get("startTime"), now)


def seconds_left(limit: int | None, started: str | None, now: datetime) -> int | None:
    """Seconds left of a deadline of `limit` seconds from `started` (not started yet: from now; None: none)."""
    if limit is None:
        return None
    start = parse_ts(started) or now
    return int(limit - (now - start).total_seconds())


def failure_line(attempt: Attempt, pod: PodFailure | None) -> str:
    """One line on why an attempt failed, the trainer's own words first."""
    if pod is not None:
        what = f"exited {pod.exit_code}" if pod.exit_code is not None else "failed"
        tail = pod.message.strip().splitlines()[-1] if pod.message.strip() else ""
        if pod.reason == "OOMKilled":
            what = f"was killed for using more memory than its limit ({what})"
        elif pod.exit_code == contract.EXIT_SIGKILL:  # the trainer wrote nothing: its log's last line is no cause
            killed = "trainer was killed (SIGKILL, exited 137), not for its memory limit"
            return killed + (f"; its last log line: {tail}" if tail else "")
        return f"trainer {what}" + (f": {tail}" if tail else "")
    gone = "its trainer pod is gone (deleted, or lost with its node)"
    if attempt.reason == "BackoffLimitExceeded":  # the attempt Job's own limit of 0, not runPolicy.backoffLimit
        return gone
    return f"{gone}; the Job controller said: {attempt.message or attempt.reason or 'the attempt failed'}"


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
            return QueueSaid(evicted.get("reason") or "Evicted", capped(evicted.get("message")))
        if reserved.get("status") == "False" and reserved.get("message"):
            return QueueSaid(message=capped(reserved["message"]))
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
    job_written: int = 0,
    trainer_image: str = "",
    crash_pause: float = retrydelay.FIRST_SECONDS,
) -> Plan:
    """Decide the job's status and next action from its attempts (this job's own: owned by its UID, not
    being deleted; sorted or not). `status.attempt` remembers the newest attempt started, so an attempt Job
    deleted by hand is noticed. `may_suspend` is False where a queue may own every Job's `suspend`;
    `queue_said` is what Kueue says of the latest attempt's Workload (`queue_words`); `stalled` says the
    running attempt made no progress for its deadline; `job_written` is the latest attempt Job's generation
    as this operator last patched it (0: not since it started), so a view of it from before is not taken
    for an edit; `trainer_image` is the operator's default trainer image (the chart's trainer.image), which
    an attempt of a job without spec.image is made with ("": not known); `crash_pause` is the pause after
    a first crash, in seconds (retrydelay.crash_pause; 0: none)."""
    old = status or {}
    p = Plan(status=copy.deepcopy(old))
    phase_before = old.get("phase")
    if phase_before in TERMINAL:
        return p  # final: nothing the cluster does later changes a finished job
    attempts = sorted(attempts, key=lambda a: a.number)
    current = max([int(old.get("attempt") or 0), *(a.number for a in attempts)])
    latest = next((a for a in attempts if a.number == current), None)
    if latest is not None:
        p.status.pop("stoppedAttempt", None)  # the attempt that replaced it exists: done
    _keep_own_pause(p, old, latest, current)
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
        phase, reason, message = _not_there(job, p, attempts, current, old, now)
    elif latest.outcome == "Complete" and _trains_longer(job, latest, deadline_left(job, p.status, now)):
        phase, reason, message = _train_on(job, p, latest, final or {})
    elif latest.outcome == "Complete":
        phase, reason, message = _succeeded(p, current, final, now)
    elif latest.outcome == "Failed":
        left = deadline_left(job, p.status, now)
        phase, reason, message = _after_failure(job, p, attempts, failed_pod, left, now, crash_pause)
    else:
        said = queue_said or QueueSaid()
        phase, reason, message = _ongoing(
            job, p, attempts, latest, old, now, stalled, may_suspend, said, job_written, trainer_image
        )
    if phase == "Running":
        p.status["ranAttempt"] = current  # a later Running of this attempt is a resumption
    _without_eta_when_final(p.status, phase)

    new = p.status
    # a pause after a crash that begins is a transition of its own (the attempt paused for may be the one
    # that was Restarting already: it crashed before it ran)
    same_attempt = new.get("attempt") == old.get("attempt") and new.get("nextAttemptAt") == old.get("nextAttemptAt")
    if phase == phase_before and same_attempt and phase in ("Pending", "Restarting") and old.get("message"):
        message = old["message"]  # the timer may have said why the pods wait: keep that
    new["phase"] = phase
    new["message"] = message
    p.reason = reason
    new["observedGeneration"] = job.generation
    if phase != phase_before or not same_attempt:
        new["conditions"] = set_condition(old.get("conditions") or [], phase, reason, message, now, job.generation)
        if not (phase == "Pending" and not old.get("attempt")) and not p.said:  # the Created event has said it
            p.events.append(_event(phase, reason, message, latest, old))
        stalled_now = p.stalled  # the stall path: Restarting, or Failed at the backoff limit
        if stalled_now or condition(old, "Stalled").get("status") == "True":
            why = message if stalled_now else f"the job is {phase} now"
            mark_reason = "Stalled" if stalled_now else ("Progressing" if phase == "Running" else "PhaseChanged")
            new["conditions"] = mark(new["conditions"], "Stalled", stalled_now, mark_reason, why, now, job.generation)
    return p


def _keep_own_pause(p: Plan, old: dict[str, Any], latest: Attempt | None, current: int) -> None:
    """A pause is the failed latest attempt's (status.attempt): one left by a status write that did not get
    through is not a later attempt's."""
    if not (latest is not None and latest.outcome == "Failed" and int(old.get("attempt") or 0) == current):
        p.status.pop("nextAttemptAt", None)


def _without_eta_when_final(status: dict[str, Any], phase: str) -> None:
    """A job not Running shows no ETA: finished, nothing is left to run; suspended, restarting or waiting,
    nothing runs, and the time left is not known until it does again. A finished job waits for no pause."""
    if phase in TERMINAL:
        status.pop("nextAttemptAt", None)
    if phase != "Running" and "eta" in (status.get("progress") or {}):
        status["progress"] = {k: v for k, v in status["progress"].items() if k != "eta"}


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
            prog[name] = round4(final[key])
    step = final.get(contract.FINAL_STEP) or prog.get("totalSteps")
    if step:
        # the step the run ended at is its last: maxSteps lowered below the step reached ends it there
        prog["totalSteps"] = step if final.get(contract.FINAL_STEP) else prog.get("totalSteps", step)
        prog.pop("eta", None)
        if final:
            prog["updatedAt"] = ts(now)  # the trainer's own last numbers, known now
        new["progress"] = with_step(prog, step)
    _final_checkpoint(new, final)
    return "Succeeded", "Succeeded", f"training finished in {n_attempts} attempt(s)"


def _final_checkpoint(status: dict[str, Any], final: dict[str, Any]) -> None:
    """The newest checkpoint a finished attempt's trainer named in its termination message: written after the
    last progress read, so newer than the one the status has."""
    ckpt = final.get(contract.FINAL_CHECKPOINT)
    if isinstance(ckpt, dict) and ckpt.get(contract.FINAL_CHECKPOINT_STEP):
        n = int(ckpt[contract.FINAL_CHECKPOINT_STEP])
        status["checkpoint"] = {"step": n, "path": checkpoint_path(n)}
        if ckpt.get(contract.FINAL_CHECKPOINT_SAVED_AT):
            status["checkpoint"]["savedAt"] = ckpt[contract.FINAL_CHECKPOINT_SAVED_AT]


def _stopped_checkpoint(status: dict[str, Any], pod: PodFailure | None) -> None:
    """The checkpoint a trainer stopped by a signal named as the newest on the volume ("stopped by SIGTERM after
    checkpoint at step N": written in its grace period, after the last progress read), when newer than the
    status's."""
    n = contract.stopped_checkpoint_step(pod.message) if pod is not None else None
    if n is not None and n > int((status.get("checkpoint") or {}).get("step") or 0):
        status["checkpoint"] = {"step": n, "path": checkpoint_path(n)}


def _trains_longer(job: Job, latest: Attempt, left: int | None) -> bool:
    """Whether a finished attempt is followed by one that trains on: the spec, edited since it was made, asks
    for a longer training (more steps, more epochs, or the other measure) and the deadline leaves time."""
    now = training_length(job)
    if not 0 < latest.generation < job.generation or latest.length in ("", now) or (left is not None and left <= 0):
        return False
    (was, was_unit), (wants, unit) = (x.split(" ", 1) for x in (latest.length, now))
    return was_unit.rstrip("s") != unit.rstrip("s") or float(wants) > float(was)


def _train_on(job: Job, p: Plan, latest: Attempt, final: dict[str, Any]) -> Decision:
    """The attempt finished the training it was started with, and the spec has asked for another length since
    (training.maxSteps or epochs edited while it ran): the next attempt resumes from the newest checkpoint and
    trains to the new end (or, for a shorter one, ends at once with the result it has)."""
    _final_checkpoint(p.status, final)  # its last one, which the next attempt resumes from
    _trained_to(p.status, final, job.spec.training.max_steps)  # not the last reading, a few steps before the end
    nxt = _next_attempt(p, latest.number)
    return (
        "Restarting",
        "SpecChanged",
        f"attempt {latest.number} finished the {latest.length} it was started with; the spec now asks for "
        f"{training_length(job)} (generation {job.generation}): attempt {nxt} trains on from the newest checkpoint",
    )


def _trained_to(status: dict[str, Any], final: dict[str, Any], total: int | None) -> None:
    """status.progress as an attempt that trained on to the end left it (its termination message): its step and
    losses, out of the new length when the spec names it in steps."""
    step = final.get(contract.FINAL_STEP)
    if not isinstance(step, int):
        return
    prog = {k: v for k, v in (status.get("progress") or {}).items() if k != "eta"}
    for key, name in ((contract.FINAL_LOSS, "loss"), (contract.FINAL_EVAL_LOSS, "evalLoss")):
        if isinstance(final.get(key), int | float):
            prog[name] = round4(final[key])
    if total:
        prog["totalSteps"] = total
    status["progress"] = with_step(prog, step)


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


DEADLINE_SLACK = 30  # seconds: an attempt Job's deadline is the job's time left when it was made; clocks differ


def _after_failure(
    job: Job,
    p: Plan,
    attempts: list[Attempt],
    failed_pod: PodFailure | None,
    left: int | None,
    now: datetime,
    first_pause: float,
) -> Decision:
    rp, latest = job.spec.run_policy, attempts[-1]
    kind, line = classify(latest, failed_pod), failure_line(latest, failed_pod)
    if p.status.get("message") != volume_lost_message(job.name):  # else the step is on the volume that was lost
        _stopped_checkpoint(p.status, failed_pod)
    if kind == "deadline" and (left is None or left > DEADLINE_SLACK):
        # not the job's own deadline: one put on the attempt Job by hand (kubectl patch job), or the job's raised
        # by an edit since the attempt was made; stopped from outside
        kind = "disruption"
        line = f"stopped by an activeDeadlineSeconds of its Job, not the job's ({latest.message or line})"
    paused = "nextAttemptAt" in p.status  # this ending was counted when the pause began (plan keeps only its own)
    counted = int(p.status.get(COUNTED["crash"]) or 0) if paused and kind == "crash" else _count(p, attempts, kind)
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
        what = f"attempt {latest.number} {why}: {line}"
        if kind == "crash":
            retry = f"retry {counted} of runPolicy.backoffLimit {rp.backoff_limit}"
            if paused:  # as said when the pause began: its pod may be gone since
                what = _failure_said(p.status, latest.number) or what
            due = _pause_ends(job, p, latest, counted, failed_pod, now, first_pause)
            pause = retrydelay.crash_pause(counted, first_pause)
            if due is not None and left is not None and due >= now + timedelta(seconds=left):
                return _too_late(p, job, latest.number, f"{what}; {retry}", left, now, f"after a {pause} s pause")
            if due is not None:
                return _pause(p, latest.number, retry, due, pause, what)
            what = f"{what}; {retry}"
            due = retrydelay.paused_until(p.status) if paused else None
            if due is not None and due > now:  # said when the pause began, but not that it ends early
                paused = False
                what = f"{what}; the pause is cut short ({_no_pause(job, latest, first_pause)})"
        p.said = paused  # the Event said so when the pause began
        return _restart(p, latest.number, kind, what)
    p.status.pop("nextAttemptAt", None)
    p.status["completionTime"] = ts(now)
    return decision


def _pause_ends(
    job: Job, p: Plan, latest: Attempt, crashes: int, pod: PodFailure | None, now: datetime, first: float
) -> datetime | None:
    """When the next attempt after a crash may start: the pause is counted from when the trainer ended,
    and kept in status.nextAttemptAt (an operator restarted meanwhile waits out the same one). None: now
    (the pause is over; or the spec was edited since the attempt was made, and the pods of the next attempt differ:
    the edit may be the fix, and is tried at once; or the job is suspended: the next attempt is made held)."""
    if _no_pause(job, latest, first):
        return None
    due = retrydelay.paused_until(p.status)
    if due is None:
        ended = parse_ts(pod.finished_at) if pod is not None and pod.finished_at else None
        start = min(ended, now) if ended is not None else now
        due = start + timedelta(seconds=retrydelay.crash_pause(crashes, first))
        due = due.replace(microsecond=0) + timedelta(seconds=1 if due.microsecond else 0)  # as status says it
    return due if due > now else None


def _no_pause(job: Job, latest: Attempt, first: float) -> str:
    """Why the next attempt after `latest`'s crash is not paused for ('': it is)."""
    if (
        latest.generation
        and latest.generation < job.generation
        and latest.spec_sha256 not in ("", pod_fingerprint(job))
    ):
        return f"the spec was edited since attempt {latest.number} was made: the edit is tried at once"
    if job.spec.run_policy.suspend and not job.spec.run_policy.queue_name:  # a queue owns suspend otherwise
        return f"runPolicy.suspend is set: attempt {latest.number + 1} is made held"
    return "the operator's crash backoff is 0" if first <= 0 else ""


def _too_late(p: Plan, job: Job, number: int, what: str, left: int, now: datetime, start: str) -> Decision:
    """The pause after attempt `number` ends at or past the job's deadline: fail now, saying so, rather than name a
    start the deadline never lets come."""
    p.status.pop("nextAttemptAt", None)
    p.status["completionTime"] = ts(now)
    started, limit = parse_ts(p.status.get("startTime")), job.spec.run_policy.active_deadline_seconds
    # from the start itself: `left` is whole seconds, rounded down
    end = ts(started + timedelta(seconds=limit) if started and limit else now + timedelta(seconds=left))
    late = f"runPolicy.activeDeadlineSeconds is reached at {end}, before attempt {number + 1} could start {start}"
    return "Failed", "DeadlineExceeded", f"{what}, but {late}"


def _pause(p: Plan, number: int, retry: str, due: datetime, pause: int, what: str) -> Decision:
    """Wait before attempt number + 1 (the timer starts it when status.nextAttemptAt is due)."""
    p.status["nextAttemptAt"] = ts(due)
    ckpt = (p.status.get("checkpoint") or {}).get("step")
    resume = f"resumes from the newest checkpoint (step {ckpt} or later)" if ckpt else "starts"
    nxt = f"attempt {number + 1} {resume} at {ts(due)}, after a {pause} s pause"
    return "Restarting", "Retrying", f"{what}; {retry}: {nxt}"


def _next_attempt(p: Plan, number: int) -> int:
    """Attempt number + 1 is to be started: the plan creates it and the status names it."""
    nxt = number + 1
    p.status.pop("nextAttemptAt", None)
    p.create_attempt = p.status["attempt"] = nxt
    p.status["restarts"] = number
    return nxt


def _restart(p: Plan, number: int, kind: FailureKind | None, what: str) -> Decision:
    nxt = _next_attempt(p, number)
    ckpt = (p.status.get("checkpoint") or {}).get("step")
    # the newest checkpoint is at least the one rank 0 last reported: a stopping pod writes one more
    resume = (
        f"; attempt {nxt} resumes from the newest checkpoint (step {ckpt} or later)"
        if ckpt
        else f"; starting attempt {nxt}"
    )
    return "Restarting", ("Disrupted" if kind == "disruption" else "Retrying"), f"{what}{resume}"


def _not_there(
    job: Job, p: Plan, attempts: list[Attempt], current: int, old: dict[str, Any], now: datetime
) -> Decision:
    """The attempt the status names has no Job: the operator's own replacement, cut short; else a deletion."""
    left = deadline_left(job, p.status, now)
    if old.get("nextAttemptAt") and int(old.get("attempt") or 0) == current and (left is None or left > 0):
        return _pause_goes_on(job, p, current, old, left, now)
    if old.get("stoppedAttempt") != current - 1:
        return _after_deletion(job, p, attempts, current, left, now)
    if left is None or left > 0:
        return _start_after_stop(p, attempts, current, old)
    # past the deadline meanwhile: nothing more is started (and nothing counted)
    p.stop_attempt = next((a for a in attempts if a.number == current - 1 and a.outcome is None), None)
    p.status.pop("stoppedAttempt", None)
    p.status["completionTime"] = ts(now)
    return "Failed", "DeadlineExceeded", "runPolicy.activeDeadlineSeconds reached"


def _failure_said(status: dict[str, Any], number: int) -> str:
    """What the pause's message said attempt `number`'s failure was ('': it says something else now)."""
    said = status.get("message") or ""
    return said.rsplit("; retry ", 1)[0] if said.startswith(f"attempt {number} failed: ") else ""


def _pause_goes_on(job: Job, p: Plan, current: int, old: dict[str, Any], left: int | None, now: datetime) -> Decision:
    """The crashed attempt's Job was deleted during the pause after it (by hand, or a TTL a cluster policy puts
    on Jobs): its crash was counted when the pause began, so nothing more is; the pause goes on (unless the
    deadline, lowered since, comes first)."""
    due = retrydelay.paused_until(old)
    if due is not None and due > now and left is not None and due >= now + timedelta(seconds=left):
        what = _failure_said(old, current) or f"attempt {current} failed"
        return _too_late(p, job, current, f"{what} (its Job deleted since)", left, now, f"at {ts(due)}")
    if due is not None and due > now:
        p.status["nextAttemptAt"] = old["nextAttemptAt"]
        return "Restarting", "Retrying", old.get("message") or f"attempt {current + 1} starts at {ts(due)}"
    p.said = True  # the Event said so when the pause began
    what = _failure_said(old, current) or f"attempt {current} failed"
    retry = f"retry {p.status.get('crashes') or 1} of runPolicy.backoffLimit {job.spec.run_policy.backoff_limit}"
    return _restart(p, current, "crash", f"{what} (its Job deleted since); {retry}")


def _start_after_stop(p: Plan, attempts: list[Attempt], current: int, old: dict[str, Any]) -> Decision:
    """The status says the operator stopped attempt `current - 1` to start `current` (a replacement, a stall),
    and `current` does not exist: the reconcile that decided it was cut short (a refused delete or create, an
    operator restart). Finish it, counting nothing again: the attempt was not deleted by anyone else."""
    before = next((a for a in attempts if a.number == current - 1 and a.outcome is None), None)
    p.stop_attempt = before  # still there if its delete was refused
    p.create_attempt = current
    phase = old.get("phase") or "Restarting"
    said = condition(old, phase)  # Restarting's says why; a replaced attempt 1 (Pending) has none
    return phase, said.get("reason") or "SpecChanged", said.get("message") or f"starting attempt {current}"


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


def _ongoing(
    job: Job,
    p: Plan,
    attempts: list[Attempt],
    latest: Attempt,
    old: dict[str, Any],
    now: datetime,
    stalled: Stall | None,
    may_suspend: bool,
    queue_said: QueueSaid,
    written: int,
    trainer_image: str,
) -> Decision:
    """The latest attempt has not ended: past the job's deadline, split by an edit of its Job, stalled, or live."""
    left = deadline_left(job, p.status, now)
    if left is not None and left <= 0:  # first: nothing is started again past it
        return _past_deadline(p, latest, now)
    if handedits.split(latest, may_suspend and not job.spec.run_policy.queue_name, written):
        return _split(job, p, attempts, latest, now)
    if (
        stalled
        and job.spec.run_policy.progress_deadline_seconds
        and stalled.attempt == latest.number
        and not latest.suspended
    ):
        return _stalled(job, p, attempts, stalled, now)
    reimaged = bool(trainer_image) and not job.spec.image and latest.image not in ("", trainer_image)
    return _live(job, p, latest, old, may_suspend, queue_said, written, trainer_image if reimaged else "")


def _live(
    job: Job,
    p: Plan,
    latest: Attempt,
    old: dict[str, Any],
    may_suspend: bool,
    queue_said: QueueSaid,
    written: int,
    new_image: str,
) -> Decision:
    rp = job.spec.run_policy
    was_running = old.get("phase") == "Running" and old.get("attempt") == latest.number
    edited = 0 < latest.generation < job.generation  # an operator upgrade alone may change the fingerprint
    fingerprint = pod_fingerprint(job) if edited else latest.spec_sha256
    queued = bool(rp.queue_name) or not may_suspend  # a queue owns the Job's suspend: never change it
    # an attempt that runs, waits in a queue (its place there), or ran before (resumed after runPolicy.suspend
    # or a preemption, its pods starting again) is kept; else, edited, it is replaced below: it never ran, so
    # there is nothing to lose (one created with runPolicy.suspend is replaced when it resumes)
    kept = latest.ready or (latest.suspended and queued) or was_running or old.get("ranAttempt") == latest.number
    if edited and kept and latest.spec_sha256 not in ("", fingerprint):
        _say_edit_waits(job, p, latest, old)
    fresh = latest.job_generation >= written  # not a view from before this operator's own last patch
    edited_by_hand = latest.job_generation > max(written, 1)  # its spec changed since it was made or patched here
    if not queued and fresh and latest.suspended != rp.suspend:
        p.set_suspend = rp.suspend
        if edited_by_hand and latest.suspended == (old.get("phase") != "Suspended"):  # not runPolicy.suspend's
            p.events.append(
                ("Warning", "JobEdited", handedits.suspended(latest) if latest.suspended else handedits.resumed(latest))
            )
    if not queued and fresh and latest.completions and latest.parallelism != latest.completions:
        p.set_parallelism = latest.completions
        if edited_by_hand:
            p.events.append(("Warning", "JobEdited", handedits.scaled(latest)))
    if queued and latest.suspended:
        return _queued(job, p, latest, old, queue_said)
    if not queued and rp.suspend:
        return "Suspended", "Suspended", "suspended (runPolicy.suspend)"
    if edited and not kept and latest.spec_sha256 != fingerprint:
        return _replace(job, p, latest)
    if new_image and not kept:
        return _replace(job, p, latest, new_image)
    if latest.ready >= job.spec.num_nodes or was_running:
        # a rank that stops is not yet the end of the attempt: the Job's outcome says that
        message = f"attempt {latest.number}: {latest.ready} pod(s) running"
        return "Running", "Running", old.get("message", message) if was_running else message
    held = old.get("phase") == "Suspended"  # released by runPolicy.suspend or admitted by a queue
    starting = old.get("attempt") == latest.number and old.get("phase") in ("Suspended", "Pending")
    if latest.number > 1 and not starting:
        cond = condition(old, "Restarting")
        if cond.get("status") != "True":
            cond = {}
        return "Restarting", cond.get("reason", "Retrying"), cond.get("message") or f"starting attempt {latest.number}"
    if rp.queue_name or (queued and held):
        queue = f"LocalQueue {rp.queue_name}" if rp.queue_name else "the queue"
        return "Pending", "Admitted", f"admitted by {queue}; waiting for the trainer pods to start"
    return "Pending", "Starting", "waiting for the trainer pods to start"


def _past_deadline(p: Plan, latest: Attempt, now: datetime) -> Decision:
    """runPolicy.activeDeadlineSeconds passed while an attempt is live: one an edit added or lowered after the
    attempt Job was made with the time then left (or with none), or one that passed while the job was suspended
    or queued. Stop the attempt and fail the job, as the attempt Job's own deadline would have."""
    p.stop_attempt = latest
    p.status["completionTime"] = ts(now)
    return "Failed", "DeadlineExceeded", "runPolicy.activeDeadlineSeconds reached"


def _split(job: Job, p: Plan, attempts: list[Attempt], latest: Attempt, now: datetime) -> Decision:
    """Stop the split attempt and start the next from the newest checkpoint: a disruption, as when its Job is
    deleted by hand (counted against maxDisruptions, not backoffLimit)."""
    rp = job.spec.run_policy
    p.stop_attempt = latest
    disruptions = _count(p, attempts, "disruption")
    what = (
        f"attempt {latest.number}'s Job {latest.name} was scaled to {latest.parallelism} of its "
        f"{latest.completions} pods by an edit of the Job: its ranks train together or not at all, so it was "
        f"stopped ({handedits.PAUSE})"
    )
    if disruptions > rp.max_disruptions:
        p.status["completionTime"] = ts(now)
        limit = f"(attempt {latest.number}; runPolicy.maxDisruptions {rp.max_disruptions} reached)"
        return "Failed", "DisruptionLimitExceeded", f"{what} {limit}"
    p.status["stoppedAttempt"] = latest.number
    phase, _, message = _restart(p, latest.number, "disruption", what + "; not counted against backoffLimit")
    return phase, "JobEdited", message


def _say_edit_waits(job: Job, p: Plan, latest: Attempt, old: dict[str, Any]) -> None:
    """Once per generation (the reconcile that first sees it): the attempt kept goes on with its own spec."""
    if old.get("observedGeneration") != job.generation:
        p.events.append(("Normal", "SpecChanged", _edit_waits(job, latest)))


def _edit_waits(job: Job, latest: Attempt) -> str:
    """What an edit of a running attempt's spec does now: nothing until the next attempt (a restart would lose
    the steps since the checkpoint), and how long the running one trains where the edit changed that."""
    length = training_length(job)
    longer = f" ({latest.length}; the job now asks for {length})" if latest.length and latest.length != length else ""
    return (
        f"the spec (generation {job.generation}) differs from the one attempt {latest.number} was made from: "
        f"attempt {latest.number} goes on with its own{longer}, and the difference applies from the next attempt"
    )


def _replace(job: Job, p: Plan, latest: Attempt, new_image: str = "") -> Decision:
    """An attempt whose pods never started, made from a spec edited since (a request no node can meet, an image
    that cannot be pulled: the fixes the README gives), or, for a job without spec.image, from the operator's
    trainer image before it changed (the chart's trainer.image, the other fix): it has nothing to lose, so it is
    stopped and the next starts with the edit or the image, counted against neither backoffLimit nor
    maxDisruptions."""
    p.stop_attempt, p.set_suspend, p.set_parallelism = latest, None, None  # it goes: nothing to set back on it
    p.events = [e for e in p.events if e[1] != "JobEdited"]
    p.status["stoppedAttempt"] = latest.number
    nxt = _next_attempt(p, latest.number)
    ran = p.status.get("ranAttempt") is not None or p.status.get("crashes") or p.status.get("disruptions")
    phase = "Restarting" if ran else "Pending"  # nothing restarts in a job that has not run yet
    if new_image:
        return (
            phase,
            "ImageChanged",
            f"attempt {latest.number} had started no pod when the operator's trainer image became {new_image} "
            f"(it was made with {latest.image}): attempt {nxt} starts with {new_image}",
        )
    return (
        phase,
        "SpecChanged",
        f"attempt {latest.number} had started no pod when the spec was edited (generation {job.generation}): "
        f"attempt {nxt} starts with the edit",
    )


EVICTED = ("Preempted", "Evicted")  # the Suspended condition's reasons for an attempt the queue stopped


def _queued(job: Job, p: Plan, latest: Attempt, old: dict[str, Any], said: QueueSaid) -> Decision:
    """An attempt Job the queue keeps suspended: not admitted yet, or evicted (suspended by the queue after
    it was admitted; its trainers checkpoint and stop, and the same attempt runs again when the queue admits
    it). Kueue preempts for a higher priority, and evicts for other reasons too (a stopped ClusterQueue, a
    pods-ready timeout): its reason says which."""
    rp = job.spec.run_policy
    queue = f"LocalQueue {rp.queue_name}" if rp.queue_name else "the queue"
    same = old.get("attempt") == latest.number
    held = condition(old, "Suspended")
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
    p.stop_attempt, p.stalled = latest, True
    counted = _count(p, attempts, "crash")
    quiet = int((now - stall.since).total_seconds())
    what = (
        f"attempt {latest.number} stalled: no step for {quiet} s (runPolicy.progressDeadlineSeconds "
        f"{rp.progress_deadline_seconds}); its last step, {stall.step}, was read at {ts(stall.since)}"
    )
    if counted > rp.backoff_limit:
        p.status["completionTime"] = ts(now)
        return "Failed", "BackoffLimitExceeded", f"{what} (runPolicy.backoffLimit {rp.backoff_limit} reached)"
    p.status["stoppedAttempt"] = latest.number
    phase, _, message = _restart(p, latest.number, "crash", what)
    return phase, "Stalled", message


def _event(phase: str, reason: str, message: str, latest: Attempt | None, old: dict) -> tuple[str, str, str]:
    again = latest is not None and old.get("ranAttempt") == latest.number  # after a preemption or a suspension
    ckpt = (old.get("checkpoint") or {}).get("step")
    # an attempt ran before (seen Running, a checkpoint read, or an ending counted, seen running or not); not so
    # after attempts replaced before they ran (an edit), which count nothing: then this first run resumes nothing
    ran = old.get("ranAttempt") is not None or bool(ckpt) or bool(old.get("crashes") or old.get("disruptions"))
    if phase == "Running" and latest is not None and ran and (latest.number > 1 or again):
        where = (
            f"resumed from the newest checkpoint (step {ckpt} or later)"
            if ckpt
            else "from the newest checkpoint on its volume, if one was written (none was reported)"
        )
        return "Normal", "Resumed", f"attempt {latest.number} running{' again' if again else ''}: {where}"
    warning = phase in ("Failed", "Restarting") and reason not in ("SpecChanged", "ImageChanged")  # a fix applied
    return ("Warning" if warning else "Normal"), reason, message
