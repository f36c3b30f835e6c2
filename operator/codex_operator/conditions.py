"""metav1.Conditions of a CodexTrainingJob's status: one per phase, True for the current one, and the ones that
are not phases (Stalled). Pure functions of the conditions as written."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .progress import ts


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), {})


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


def condition_reason(status: dict[str, Any], ctype: str) -> str:
    """The reason of the status's condition of that type ("" where it has none)."""
    return next((c.get("reason", "") for c in status.get("conditions") or [] if c.get("type") == ctype), "")
