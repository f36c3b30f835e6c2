"""What the operator keeps of each job between events, and its command-line options: plain data, shared by
the reconcile (handlers.py) and the timer (timer.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from . import retrydelay, watched
from .builders import Job, Settings
from .status import Stall

WAIT_EXPLAIN_SECONDS = 30.0  # a job waits this long before we look at why; each later look twice as long, up to
WAIT_EXPLAIN_MAX_SECONDS = 300.0  # this (pods that wait for a reason mostly keep waiting for it)


@dataclass
class Options:
    settings: Settings = field(default_factory=Settings)
    progress_interval: float = 10.0
    # each progress write is a CodexTrainingJob update (2.5 times a ConfigMap's cost to the API server,
    # benchmarks/api_write_cost.py): at most this many a second, the longest-unwritten jobs first; 0: no limit
    progress_writes_per_second: float = 20.0
    progress_via: str = "auto"  # auto | pod-ip | proxy
    # Kueue runs with manageJobsWithoutQueueName: it may own the suspend of every Job, labelled or not
    queue_owns_suspend: bool = False
    crash_pause: float = retrydelay.FIRST_SECONDS  # seconds before the retry after a first crash, doubling; 0: none


@dataclass
class JobState:
    """What the operator keeps of one job between events: little, and nothing it could not rebuild."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    body: dict[str, Any] | None = None  # the job as last watched
    written: dict[str, Any] | None = None  # the status this operator last wrote
    retry_at: float | None = None  # monotonic: when a failed reconcile is tried again
    backoff: float = 0.0
    explained_at: float | None = None  # monotonic: when we last asked why pods wait (or first saw it wait)
    explain_every: float = WAIT_EXPLAIN_SECONDS  # how long until we ask again
    check_children: bool = False  # a child was deleted: look at every child, whatever the generation says
    failed_generation: int | None = None  # the spec generation the last failed reconcile saw
    refused: str | None = None  # the line the last failed reconcile wrote into status.message
    taken: frozenset[str] = frozenset()  # the names of others' objects it waits to be deleted (refusals.Taken)
    moved: Stall | None = None  # the running attempt's step, and when this operator first read it
    stalled: Stall | None = None  # found stalled by a tick: the next tick_once restarts it
    pending: watched.Pending = field(default_factory=watched.Pending)  # attempt Jobs the watch has not shown yet
    job_written: tuple[str, int] | None = None  # (UID, metadata.generation) of the attempt Job as last patched here
    parsed: tuple[tuple[str, int], Job | str] | None = None  # the spec, parsed once per (uid, generation)
    children: int = 0  # attempt Job events seen: a reconcile's input changed
    settled: tuple[int, int] | None = None  # (generation, children) of the last reconcile that got through
    unread: int = 0  # progress reads that failed in a row
    waiting_said: tuple[int, str] | None = None  # (attempt, waiting_kind) of the last Waiting Event posted
    unread_until: float = 0.0  # monotonic: no progress read before this (a backoff after failed reads)
    progress_patch: tuple[dict[str, Any], dict[str, Any]] | None = None  # this round's reading, to write
    progress_written: float = 0.0  # monotonic: when its progress was last written (0: never)
    wake_at: str | None = None  # the status.nextAttemptAt this process has a wake-up set for

    def patched(self, job: dict[str, Any]) -> None:
        """Remember the attempt Job as this operator's own patch returned it."""
        meta = job["metadata"]
        self.job_written = (meta["uid"], int(meta.get("generation") or 0))

    def written_generation(self, uid: str) -> int:
        """The generation of attempt Job `uid` as last patched here (0: not since this operator started)."""
        return self.job_written[1] if self.job_written and self.job_written[0] == uid else 0

    def explain_due(self, now: float, at_once: bool = False) -> bool:
        """Whether to look at why the job waits: WAIT_EXPLAIN_SECONDS after it was first seen waiting (pods
        take a while to start), or `at_once` (a queue: the queue's own words on why are worth showing
        now), then twice as long each time (a thousand pending jobs must not mean a thousand pod LISTs
        every 30 s)."""
        if self.explained_at is None:
            self.explained_at = now
            return at_once
        if now - self.explained_at < self.explain_every:
            return False
        self.explained_at, self.explain_every = now, min(self.explain_every * 2, WAIT_EXPLAIN_MAX_SECONDS)
        return True

    def stop_explaining(self) -> None:
        self.explained_at, self.explain_every = None, WAIT_EXPLAIN_SECONDS
