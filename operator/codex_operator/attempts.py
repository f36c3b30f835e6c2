"""What an attempt's Job and pods say: whether and how it ended, which pod to blame and in whose words, why
a pod waits, and what rank 0 said when it finished. Pure functions of the objects as the API returns them;
status.plan() decides from them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from codex_trainer import contract

from . import names

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
    parallelism: int | None = None  # the Job's spec.parallelism (the operator sets it to completions)
    completions: int | None = None  # one per node, fixed for an Indexed Job
    job_generation: int = 0  # the Job's own metadata.generation: 1 as made, one more for each edit of its spec
    ready: int = 0
    active: int = 0
    outcome: Outcome | None = None
    reason: str = ""  # the Job's Failed condition reason: PodFailurePolicy, BackoffLimitExceeded, DeadlineExceeded
    message: str = ""
    spec_sha256: str = ""  # builders.pod_fingerprint of the spec it was made from ("": made before the record)
    length: str = ""  # builders.training_length it was started with ("": made before the record)
    generation: int = 0  # the job's metadata.generation it was made from (0: made before the record)
    image: str = ""  # the trainer image the operator chose for it ("": made before the record)

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
    notes = meta.get("annotations") or {}
    return Attempt(
        number=int(meta.get("labels", {}).get(names.LABEL_ATTEMPT, "0")),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        created=meta.get("creationTimestamp", ""),
        suspended=bool(spec.get("suspend")),
        parallelism=spec.get("parallelism"),
        completions=spec.get("completions"),
        job_generation=int(meta.get("generation") or 0),
        ready=int(st.get("ready") or 0),
        active=int(st.get("active") or 0),
        outcome=outcome,
        reason=reason,
        message=message,
        spec_sha256=notes.get(names.ANNOTATION_SPEC, ""),
        length=notes.get(names.ANNOTATION_LENGTH, ""),
        generation=int(notes.get(names.ANNOTATION_GENERATION) or 0),
        image=notes.get(names.ANNOTATION_IMAGE, ""),
    )


MESSAGE_LIMIT = 1024  # what of a pod's own words goes into status.message and an Event


def capped(text: str | None) -> str:
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
        reason, message = st.get("reason", "") or "", capped(st.get("message"))
        return PodFailure(pod=pod["metadata"]["name"], reason=reason, message=message, disrupted=disrupted)
    return None


def _last_lines(text: str | None) -> str:
    """The end of a termination message (the kubelet keeps up to 4 KiB; the last line is the trainer's
    own verdict), capped."""
    text = (text or "")[-contract.TERMINATION_MESSAGE_LIMIT :].strip()
    return capped(text.splitlines()[-1]) if text else ""


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


def waiting_kind(why: str) -> str:
    """What a `waiting_reason` (or `failed_create`) line says without its counts and the pull's back-off state:
    "0/3 nodes ... 3 Insufficient cpu" and "0/4 nodes ... 4 Insufficient cpu" are one kind of wait, and so are
    ErrImagePull and ImagePullBackOff, which alternate while an image cannot be pulled."""
    return re.sub(r"\d+", "N", why.replace("ImagePullBackOff", "ErrImagePull"))


def failed_create(events: list[dict[str, Any]]) -> str | None:
    """Why the Job controller cannot create an attempt's pods, from its newest FailedCreate Event (a pod
    quota, a priority class that does not exist, Pod Security admission, a webhook): None if it has not said."""
    failed = [e for e in events if e.get("reason") == "FailedCreate" and e.get("type") == "Warning"]
    if not failed:
        return None
    newest = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return f"the Job controller cannot create the pods: {capped(newest.get('message'))}"


UNBOUND_CLAIMS = "unbound immediate PersistentVolumeClaims"  # the scheduler's words for a volume not provisioned


def provisioning_failed(events: list[dict[str, Any]]) -> str | None:
    """Why a claim stays unbound, from its newest ProvisioningFailed Event (a StorageClass that does not exist,
    a provisioner's refusal): None if nothing has said."""
    failed = [e for e in events if e.get("reason") == "ProvisioningFailed" and e.get("type") == "Warning"]
    if not failed:
        return None
    newest = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return capped(newest.get("message"))


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
