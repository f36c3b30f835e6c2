"""How long a crashed job waits before its next attempt: a pure schedule, as the kubelet's and the Job
controller's own (10 s, doubling, capped). Without it a short outage (a tracking server, the Hub, DNS being
down for a minute) or an OOM on the first batch spends the whole runPolicy.backoffLimit in seconds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .progress import parse_ts

FIRST_SECONDS = 10.0  # the pause after the first crash (the operator's --crash-backoff-seconds)
MAX_SECONDS = 300.0  # no pause is longer


def crash_pause(crashes: int, first: float = FIRST_SECONDS) -> int:
    """Seconds between crash number `crashes` (1 for the first) and the next attempt: `first`, doubling
    with each crash counted, at most MAX_SECONDS, or `first` where that is more (0: no pause)."""
    if first <= 0:
        return 0
    return int(min(first * 2 ** max(crashes - 1, 0), max(MAX_SECONDS, first)))


def restart_due(body: dict[str, Any] | None, now: datetime) -> bool:
    """A job that waits out its pause after a crash and whose pause is over: its reconcile starts the next
    attempt (the timer runs it; no watch event comes when a pause ends)."""
    status = (body or {}).get("status") or {}
    deleting = ((body or {}).get("metadata") or {}).get("deletionTimestamp")  # its reconcile does nothing
    if status.get("phase") != "Restarting" or not status.get("nextAttemptAt") or deleting:
        return False
    due = paused_until(status)
    return due is None or due <= now


def paused_until(status: dict[str, Any]) -> datetime | None:
    """When the pause the status names ends (None: none, or one the operator cannot read: not waited for)."""
    try:
        return parse_ts(status.get("nextAttemptAt"))
    except (TypeError, ValueError):
        return None
