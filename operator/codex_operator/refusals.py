"""What the API server (or the cluster) refused, in one line a user can act on, and whether a retry may help.

Pure: the handlers raise these around each write and show them in `status.message` and a Warning Event,
then either retry with backoff (the answer may change: a quota that frees up, an API server that
recovers, a name an earlier job's children still hold until the garbage collector runs) or fail the job
(the answer will not change: a webhook or a policy that refuses the child, a field a Pod refuses).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from . import names

BACKOFF_FIRST = 5.0
BACKOFF_MAX = 300.0

# 403s that a retry may turn into a yes: a ResourceQuota that frees up as other work ends; the operator's
# own RBAC ('User "system:serviceaccount:..." cannot create resource "jobs"'), which an admin can fix
_TRANSIENT_403 = ("exceeded quota", "cannot create resource", "cannot patch resource", "cannot get resource",
                  "cannot list resource", "cannot delete resource")  # fmt: skip
REASON_LIMIT = 1024
_ATTEMPT_CHILD = re.compile(r"creating (?:Job|ConfigMap) .+-a(\d+)(?:-config)?")  # names.attempt_name, config_name


@dataclass
class Refused(Exception):
    """The API server said no to `what` (e.g. "creating Job tiny-a1")."""

    what: str
    code: int  # the HTTP status (0: no answer)
    reason: str  # the server's own message

    @property
    def transient(self) -> bool:
        if self.code in (0, 401, 408, 409, 429) or self.code >= 500:
            return True  # no answer, the operator's own credentials, a conflict, throttled, the server's fault
        if self.code == 404:
            return not self.what.startswith("creating")  # gone between two calls; on a create: no namespace
        return self.code == 403 and any(t in self.reason for t in _TRANSIENT_403)

    @property
    def attempt(self) -> int | None:
        """The attempt whose Job or job file was refused; None for any other call."""
        made = _ATTEMPT_CHILD.fullmatch(self.what)
        return int(made.group(1)) if made else None

    @property
    def until_edited(self) -> bool:
        """A lasting refusal of a later attempt's Job or job file: made from a spec edited since the job started
        (a request above its limit, a bad nodeSelector key). Failing would lose nothing the edit did not, but
        delete-and-apply would lose the checkpoints: the job waits for an edit instead."""
        return not self.transient and (self.attempt or 0) >= 2

    def line(self) -> str:
        reason = self.reason if len(self.reason) <= REASON_LIMIT else self.reason[: REASON_LIMIT - 3] + "..."
        head = f"the API server refused {self.what} (HTTP {self.code}): {reason}"
        if self.transient:
            return f"{head}; retrying"
        if self.until_edited:
            return (
                f"{head}; the job keeps its checkpoints and waits: fix what it names in the job (kubectl edit ctj), "
                "and the next attempt is made from the edited spec"
            )
        return f"{head}; not retried: fix what it names, then delete the job and apply it again"


@dataclass
class Taken(Exception):
    """A child's name is held by an object that is not this job's."""

    kind: str
    name: str
    holder: str  # who holds it, as far as its metadata says
    namespace: str = ""
    others: tuple[Leftover, ...] = ()  # the other objects of the job's names that are not its, all said at once

    transient = True  # an earlier job's children go when the garbage collector gets to them

    @property
    def blocking(self) -> frozenset[str]:
        """The names whose deletion the job waits for."""
        return frozenset({self.name, *(o.name for o in self.others)})

    def line(self) -> str:
        first = (
            f"{self.kind} {self.name} exists and is not this job's ({self.holder}): it is never adopted or overwritten"
        )
        if not self.others:
            command = f"kubectl delete {self.kind.lower()} {self.name}"
            return f"{first}; delete it ({command}) or give the job another name; retrying"
        also = ", ".join(o.said() for o in self.others)
        # the Jobs first: their pods go with them, and a volume is deleted only once no pod uses it
        every = sorted([*self.others, Leftover(self.kind, self.name)], key=lambda o: o.kind != "Job")
        command = " ".join(f"{o.kind.lower()}/{o.name}" for o in every)
        return (
            f"{first}; the earlier job also left {also}: delete them (kubectl delete -n {self.namespace} {command}) or "
            "give the job another name; retrying"
        )


@dataclass(frozen=True)
class Leftover:
    """Another object of a job's names that is not the job's (an earlier job's, after an orphaning delete)."""

    kind: str
    name: str
    pods: tuple[str, ...] = ()  # an attempt Job's pods still there: they may hold the volume

    def said(self) -> str:
        if not self.pods:
            return f"{self.kind} {self.name}"
        return f"{self.kind} {self.name} (its pods {', '.join(self.pods)} are still there and may hold the volume)"


def holder(obj: dict) -> str:
    """Who an object belongs to, from its metadata, for the message on a taken name."""
    meta = obj.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    if refs:
        ref = refs[0]
        return f"owned by {ref.get('kind')} {ref.get('name')} uid {ref.get('uid')}"
    if names.ANNOTATION_JOB_UID in (meta.get("annotations") or {}):
        return (
            f"left by an earlier job of this name, uid {meta['annotations'][names.ANNOTATION_JOB_UID]}: to resume "
            f"from its checkpoints, create the job with storage.existingClaim: {meta.get('name')}"
        )
    return "no owner"


def server_message(body: bytes | str | None, fallback: str) -> str:
    """The `message` of a Status the API server answered with."""
    try:
        found = json.loads(body or "")
    except (TypeError, ValueError):
        return fallback
    return (found.get("message") if isinstance(found, dict) else None) or fallback


def next_backoff(previous: float) -> float:
    """Seconds until the next try after a failed reconcile: 5, 10, 20, ... up to 5 minutes."""
    return BACKOFF_FIRST if previous <= 0 else min(BACKOFF_MAX, previous * 2)
