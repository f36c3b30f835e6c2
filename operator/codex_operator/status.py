"""From what the cluster shows to what the user sees: a pure function of (job, status, attempts, now).

`plan()` reads the attempt Jobs of a CodexTrainingJob (and, for a failed attempt, what its pod said)
and returns the status to write, the Events to post and what to do next (start attempt N+1, suspend
or resume the current one). It never calls the API: the handlers do what it says.

The trainer's exit-code contract decides a failed attempt:
  exit 2 (bad spec or data)            -> Failed at once, with the trainer's own line
  DisruptionTarget (eviction, preemption, node loss) -> a new attempt, not counted
  deadline reached                     -> Failed
  anything else (crash, OOM, exit 1, a deleted pod) -> a new attempt, counted against backoffLimit
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

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
    suspended: bool = False
    ready: int = 0
    active: int = 0
    outcome: Outcome | None = None
    reason: str = ""  # the Job's Failed condition reason: PodFailurePolicy, BackoffLimitExceeded, DeadlineExceeded
    message: str = ""

    @property
    def failure(self) -> FailureKind | None:
        if self.outcome != "Failed":
            return None
        if self.reason == "DeadlineExceeded":
            return "deadline"
        if self.reason == "PodFailurePolicy":
            # the Job controller names the rule that matched: exit code 2 (rule 0) or DisruptionTarget (rule 1)
            if "DisruptionTarget" in self.message:
                return "disruption"
            if re.search(r"exit code 2\b", self.message):
                return "user-error"
        return "crash"


@dataclass(frozen=True)
class PodFailure:
    """What the failed pod of an attempt said: its exit code, termination message, and why it stopped."""

    pod: str
    exit_code: int | None = None
    reason: str = ""  # OOMKilled, Error, Evicted...
    message: str = ""
    finished_at: str = ""

    @property
    def blame_order(self) -> tuple:
        """Sort key: the rank to blame first. Exit 2 (the user's to fix) wins; then the earliest to end,
        ranks stopped by a signal (killed after another rank failed) last."""
        stopped = self.exit_code in (137, 143) or self.exit_code is None
        return (self.exit_code != 2, stopped, self.finished_at or "~")


@dataclass
class Plan:
    status: dict[str, Any]
    create_attempt: int | None = None
    set_suspend: bool | None = None
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
        suspended=bool(spec.get("suspend")),
        ready=int(st.get("ready") or 0),
        active=int(st.get("active") or 0),
        outcome=outcome,
        reason=reason,
        message=message,
    )


def pod_failure(pod: dict[str, Any]) -> PodFailure | None:
    """The trainer container's end, from a failed pod (None when it has not terminated)."""
    st = pod.get("status") or {}
    for cs in st.get("containerStatuses") or []:
        if cs.get("name") != names.CONTAINER:
            continue
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            return PodFailure(
                pod=pod["metadata"]["name"],
                exit_code=term.get("exitCode"),
                reason=term.get("reason", "") or "",
                message=(term.get("message") or "").strip(),
                finished_at=term.get("finishedAt") or "",
            )
    if st.get("phase") == "Failed":
        return PodFailure(pod=pod["metadata"]["name"], reason=st.get("reason", ""), message=st.get("message", ""))
    return None


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


def _ts(t: datetime) -> str:
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
    return attempt.message or attempt.reason or "the attempt failed"


Decision = tuple[str, str, str]  # phase, reason, message


def plan(
    job: Job,
    status: dict[str, Any] | None,
    attempts: list[Attempt],
    now: datetime,
    failed_pod: PodFailure | None = None,
    final: dict[str, Any] | None = None,
) -> Plan:
    """Decide the job's status and next action from its attempts (sorted or not)."""
    old = status or {}
    p = Plan(status=copy.deepcopy(old))
    phase_before = old.get("phase")
    if phase_before in TERMINAL:
        return p  # final: nothing the cluster does later changes a finished job
    attempts = sorted(attempts, key=lambda a: a.number)
    latest = attempts[-1] if attempts else None
    p.status["attempt"] = latest.number if latest else 0
    p.status["restarts"] = max(0, len(attempts) - 1)

    if latest is None:
        phase, reason, message = _first_attempt(job, p, deadline_left(job, old, now), now)
    elif latest.outcome == "Complete":
        phase, reason, message = _succeeded(p, len(attempts), final, now)
    elif latest.outcome == "Failed":
        phase, reason, message = _after_failure(job, p, attempts, failed_pod, deadline_left(job, old, now), now)
    else:
        phase, reason, message = _live(job, p, latest, old)

    new = p.status
    same_attempt = new.get("attempt") == old.get("attempt")
    if phase == phase_before and same_attempt and phase in ("Pending", "Restarting") and old.get("message"):
        message = old["message"]  # the timer may have said why the pods wait: keep that
    new["phase"] = phase
    new["message"] = message
    new["observedGeneration"] = job.generation
    if phase != phase_before or not same_attempt:
        new["conditions"] = set_condition(old.get("conditions") or [], phase, reason, message, now, job.generation)
        if not (phase_before is None and phase == "Pending"):  # the Created event has said it
            p.events.append(_event(phase, reason, message, latest, old))
    return p


def _first_attempt(job: Job, p: Plan, left: int | None, now: datetime) -> Decision:
    rp = job.spec.run_policy
    if left is not None and left <= 0:
        return "Failed", "DeadlineExceeded", "activeDeadlineSeconds passed before it started"
    p.create_attempt = p.status["attempt"] = 1
    p.status.setdefault("startTime", _ts(now))
    p.events.append(("Normal", "Created", f"created attempt 1 ({names.attempt_name(job.name, 1)})"))
    if rp.suspend and not rp.queue_name:
        return "Suspended", "Suspended", "created suspended (runPolicy.suspend)"
    if rp.queue_name:
        return "Pending", "Created", f"queued in {rp.queue_name}; waiting for admission"
    return "Pending", "Created", "waiting for the trainer pods to start"


def _succeeded(p: Plan, n_attempts: int, final: dict[str, Any] | None, now: datetime) -> Decision:
    """The trainer's own last numbers (its termination message), else the last progress read."""
    new, final = p.status, final or {}
    new["completionTime"] = _ts(now)
    prog = dict(new.get("progress") or {})
    for key in ("loss", "evalLoss"):
        if isinstance(final.get(key), int | float):
            prog[key] = _round(final[key])
    step = final.get("step") or prog.get("totalSteps")
    if step:
        prog.setdefault("totalSteps", step)
        new["progress"] = _with_step(prog, step)
    ckpt = final.get("checkpoint")
    if isinstance(ckpt, dict) and ckpt.get("step"):
        n = int(ckpt["step"])
        new["checkpoint"] = {"step": n, "path": f"{names.OUTPUT_DIR}/checkpoints/step-{n}"}
        if ckpt.get("savedAt"):
            new["checkpoint"]["savedAt"] = ckpt["savedAt"]
    return "Succeeded", "Succeeded", f"training finished in {n_attempts} attempt(s)"


def _after_failure(
    job: Job, p: Plan, attempts: list[Attempt], failed_pod: PodFailure | None, left: int | None, now: datetime
) -> Decision:
    rp, latest = job.spec.run_policy, attempts[-1]
    kind, line = latest.failure, failure_line(latest, failed_pod)
    counted = sum(1 for a in attempts if a.failure == "crash")
    if kind == "user-error":
        decision = ("Failed", "InvalidJob", line)
    elif kind == "deadline" or (left is not None and left <= 0):
        decision = ("Failed", "DeadlineExceeded", "runPolicy.activeDeadlineSeconds reached")
    elif kind == "crash" and counted > rp.backoff_limit:
        limit = f"(attempt {latest.number}; runPolicy.backoffLimit {rp.backoff_limit} reached)"
        decision = ("Failed", "BackoffLimitExceeded", f"{line} {limit}")
    else:
        nxt = latest.number + 1
        p.create_attempt = p.status["attempt"] = nxt
        p.status["restarts"] = len(attempts)
        why = "disrupted (not counted against backoffLimit)" if kind == "disruption" else "failed"
        ckpt = (p.status.get("checkpoint") or {}).get("step")
        resume = f"; attempt {nxt} resumes from checkpoint step {ckpt}" if ckpt else f"; starting attempt {nxt}"
        reason = "Disrupted" if kind == "disruption" else "Retrying"
        return "Restarting", reason, f"attempt {latest.number} {why}: {line}{resume}"
    p.status["completionTime"] = _ts(now)
    return decision


def _live(job: Job, p: Plan, latest: Attempt, old: dict[str, Any]) -> Decision:
    rp = job.spec.run_policy
    if not rp.queue_name and latest.suspended != rp.suspend:
        p.set_suspend = rp.suspend
    if latest.suspended if rp.queue_name else rp.suspend:
        return (
            "Suspended",
            "Suspended",
            ("waiting for admission by the queue" if rp.queue_name else "suspended (runPolicy.suspend)"),
        )
    was_running = old.get("phase") == "Running" and old.get("attempt") == latest.number
    if latest.ready >= job.spec.num_nodes or was_running:
        # a rank that stops is not yet the end of the attempt: the Job's outcome says that
        message = f"attempt {latest.number}: {latest.ready} pod(s) running"
        return "Running", "Running", old.get("message", message) if was_running else message
    if latest.number > 1:
        cond: dict[str, Any] = next(
            (c for c in old.get("conditions") or [] if c.get("type") == "Restarting" and c.get("status") == "True"),
            {},
        )
        return "Restarting", cond.get("reason", "Retrying"), cond.get("message") or f"starting attempt {latest.number}"
    return "Pending", "Created", "waiting for the trainer pods to start"


def _event(phase: str, reason: str, message: str, latest: Attempt | None, old: dict) -> tuple[str, str, str]:
    if phase == "Running" and latest is not None and latest.number > 1:
        ckpt = (old.get("checkpoint") or {}).get("step")
        where = f"resumed from checkpoint step {ckpt}" if ckpt else "resumed"
        return "Normal", "Resumed", f"attempt {latest.number} running: {where}"
    warning = phase in ("Failed", "Restarting")
    return ("Warning" if warning else "Normal"), reason, message


CONDITION_TYPES = ("Running", "Restarting", "Suspended", "Succeeded", "Failed")


def set_condition(
    conditions: list[dict[str, Any]], phase: str, reason: str, message: str, now: datetime, generation: int
) -> list[dict[str, Any]]:
    """metav1.Condition entries: the phase's own condition True, the other phase conditions False."""
    out = [dict(c) for c in conditions]
    by_type = {c["type"]: c for c in out}
    wanted = {t: t == phase for t in CONDITION_TYPES}
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
            cur["lastTransitionTime"] = _ts(now)
        cur["status"] = status
        cur["observedGeneration"] = generation
        if on and ctype == phase:
            cur["reason"], cur["message"] = reason, message[:32768]
        elif ctype == "Created":
            cur.setdefault("reason", "Created")
            cur.setdefault("message", "the volume, the job file, the Service and the first attempt were created")
        elif not on:
            cur["reason"], cur["message"] = "PhaseChanged", f"the job is {phase} now"
    return out


# ---------------------------------------------------------------- progress from rank 0's metrics


def progress_from_metrics(
    samples: dict[str, float], now: datetime, previous: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Turn rank 0's Prometheus gauges into status.progress and status.checkpoint; the ETA comes from
    the pace since the previous reading."""
    step = int(samples.get("codex_trainer_step", 0))
    total = int(samples.get("codex_trainer_total_steps", 0))
    prog: dict[str, Any] = {"step": step, "totalSteps": total}
    if "codex_trainer_loss" in samples:
        prog["loss"] = _round(samples["codex_trainer_loss"])
    if samples.get("codex_trainer_eval_loss"):
        prog["evalLoss"] = _round(samples["codex_trainer_eval_loss"])
    tps = samples.get("codex_trainer_tokens_per_second")
    if tps:
        prog["tokensPerSecond"] = round(tps)
    prog = _with_step(prog, step)
    before, when = (previous or {}).get("step"), _parse_ts((previous or {}).get("updatedAt"))
    if before is not None and when is not None and before < step < total:
        pace = (now - when).total_seconds() / (step - before)
        prog["eta"] = _duration((total - step) * pace)
    elif previous and previous.get("eta") and step == before:
        prog["eta"] = previous["eta"]
    prog["updatedAt"] = _ts(now)
    ckpt = None
    if samples.get("codex_trainer_last_checkpoint_step"):
        ckpt = {
            "step": int(samples["codex_trainer_last_checkpoint_step"]),
            "path": f"{names.OUTPUT_DIR}/checkpoints/step-{int(samples['codex_trainer_last_checkpoint_step'])}",
        }
        if samples.get("codex_trainer_last_checkpoint_timestamp_seconds"):
            ckpt["savedAt"] = _ts(
                datetime.fromtimestamp(samples["codex_trainer_last_checkpoint_timestamp_seconds"], UTC)
            )
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
