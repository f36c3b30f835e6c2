"""The attempt Jobs as the operator's watch shows them, so that a reconcile lists none.

`Local` is fed by the watch events of the Jobs labelled with a job's name (informer.py on the cluster,
which lists them before any reconcile runs, also after a restart; the in-process tests by hand). An
index lags the operator's own writes by one watch event: `Pending` keeps what the operator has just created or
deleted until the watch shows it, so a reconcile in between neither misses a new attempt nor counts a
deleted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import names
from .attempts import Attempt, attempt_from_job

Key = tuple[str, str]


@dataclass(frozen=True)
class Seen:
    """What the operator keeps of one attempt Job: the few fields a reconcile reads, not the body."""

    attempt: Attempt
    owners: frozenset[str]  # the UIDs in its ownerReferences
    deleting: bool = False

    def owned_by(self, uid: str) -> bool:
        return uid in self.owners


def seen(job: Mapping[str, Any]) -> Seen:
    meta = job.get("metadata") or {}
    owners = frozenset(ref.get("uid", "") for ref in meta.get("ownerReferences") or [])
    return Seen(attempt_from_job(dict(job)), owners, bool(meta.get("deletionTimestamp")))


def key_of(job: Mapping[str, Any]) -> Key | None:
    """The job an attempt Job belongs to by its label (its owner, `Seen.owned_by` says)."""
    meta = job.get("metadata") or {}
    name = (meta.get("labels") or {}).get(names.LABEL_JOB)
    return (meta.get("namespace", ""), name) if name else None


V = TypeVar("V")


class _ByKey(dict[Key, dict[str, V]]):
    """Objects by a key and their UID, fed by watch events: a DELETED one goes, with its key when it was the last."""

    def _take(self, event_type: str | None, key: Key, uid: str, kept: Callable[[], V]) -> None:
        if event_type == "DELETED":
            self.get(key, {}).pop(uid, None)
            if not self.get(key, True):
                del self[key]
        else:
            self.setdefault(key, {})[uid] = kept()


class Local(_ByKey[Seen]):
    """The attempt Jobs by job, fed by their watch events."""

    def feed(self, event_type: str | None, job: Mapping[str, Any]) -> None:
        key, uid = key_of(job), (job.get("metadata") or {}).get("uid", "")
        if key is not None:
            self._take(event_type, key, uid, lambda: seen(job))

    def values_of(self, key: Key) -> Iterable[Seen]:
        return self.get(key, {}).values()


@dataclass
class Pending:
    """One job's attempt Jobs that this operator created or deleted and the watch has not shown yet."""

    made: dict[str, Seen] = field(default_factory=dict)  # by UID
    gone: set[str] = field(default_factory=set)  # UIDs

    def created(self, job: Mapping[str, Any]) -> None:
        s = seen(job)
        self.made[s.attempt.uid] = s

    def deleted(self, uid: str) -> None:
        self.gone.add(uid)
        self.made.pop(uid, None)

    def shown(self, event_type: str | None, uid: str) -> None:
        """The watch showed this Job: from now on the index knows it."""
        self.made.pop(uid, None)
        if event_type == "DELETED":
            self.gone.discard(uid)

    def merged(self, watched: Iterable[Seen], owner: str) -> list[Seen]:
        """The job's live-or-ended attempt Jobs: the watched ones, what was made since, less what was deleted."""
        out = {s.attempt.uid: s for s in self.made.values()}
        out.update((s.attempt.uid, s) for s in watched)
        return [s for uid, s in out.items() if uid not in self.gone and s.owned_by(owner)]


POD_JOB = "batch.kubernetes.io/job-name"  # set by the Job controller on every pod of an attempt Job
POD_INDEX = "batch.kubernetes.io/job-completion-index"


def pod_kept(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a pod: what the timer reads (rank 0 and its IP, why a pod waits), not its spec
    or managedFields (a pod is kilobytes; 10,000 of them would be tens of MB)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    kept_meta = {k: meta[k] for k in ("name", "namespace", "uid", "deletionTimestamp") if k in meta}
    kept_meta["labels"] = {k: labels[k] for k in (POD_JOB, POD_INDEX, names.LABEL_JOB) if k in labels}
    kept_meta["ownerReferences"] = [{"uid": r.get("uid", "")} for r in meta.get("ownerReferences") or []]
    kept_status = {k: status[k] for k in ("phase", "podIP") if k in status}
    kept_status["conditions"] = [
        {k: c[k] for k in ("type", "status", "reason", "message") if k in c} for c in status.get("conditions") or []
    ]
    kept_status["containerStatuses"] = [  # why it waits, not how it ended (a LIST reads that)
        {"name": cs.get("name"), "state": {k: v for k, v in (cs.get("state") or {}).items() if k == "waiting"}}
        for cs in status.get("containerStatuses") or []
    ]
    return {"kind": "Pod", "metadata": kept_meta, "status": kept_status}


class Pods(_ByKey[dict[str, Any]]):
    """The pods of the attempt Jobs, by (namespace, attempt Job name), fed by their watch events: what the timer
    reads instead of a LIST per lookup. (How an attempt ended is read with a LIST: the pod's last change must be
    in what is read, and a watch may be a moment behind the Job's.)"""

    def feed(self, event_type: str | None, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        attempt = (meta.get("labels") or {}).get(POD_JOB)
        if not attempt:
            return
        self._take(event_type, (meta.get("namespace", ""), attempt), meta.get("uid", ""), lambda: pod_kept(pod))

    def of(self, namespace: str, attempt: str, owner: str) -> list[dict[str, Any]]:
        """The live pods of the attempt Job of that name and UID, by name: not those being deleted, nor those of
        an earlier Job of the same name (a job deleted and created again) still terminating."""
        pods = (
            p
            for p in self.get((namespace, attempt), {}).values()
            if not p["metadata"].get("deletionTimestamp")
            and any(r["uid"] == owner for r in p["metadata"]["ownerReferences"])
        )
        return sorted(pods, key=lambda p: p["metadata"]["name"])
