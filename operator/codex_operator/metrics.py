"""The operator's own Prometheus metrics: jobs by phase, attempts, restarts, reconcile time, API calls."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .status import PHASES

registry: CollectorRegistry = REGISTRY

JOBS = Gauge("codex_operator_jobs", "CodexTrainingJobs seen by this operator, by phase", ["phase"])
ATTEMPTS = Counter("codex_operator_attempts_total", "Attempt Jobs created")
RESTARTS = Counter("codex_operator_restarts_total", "Attempts started after a failed one, by reason", ["reason"])
RECONCILE = Histogram(
    "codex_operator_reconcile_seconds",
    "Time to reconcile one CodexTrainingJob",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_CALLS = Counter("codex_operator_api_calls_total", "Calls to the Kubernetes API", ["verb", "kind", "outcome"])
API_THROTTLED = Counter(
    "codex_operator_api_throttled_total", "Calls the API server answered 429 (too many requests), sent again"
)
API_ERRORS = Counter("codex_operator_api_errors_total", "Failed calls to the Kubernetes API", ["verb", "kind"])
LEADER = Gauge("codex_operator_leader", "1 while this replica acts (holds the Lease, or runs without election)")
TIMER_ROUND = Gauge(
    "codex_operator_timer_round_seconds",
    "How long the last round of the timer took (every job's progress read, wait explained, retry or TTL)",
)
PROGRESS_ERRORS = Counter("codex_operator_progress_errors_total", "Failed reads of a trainer's progress")
PROGRESS_DEFERRED = Counter(
    "codex_operator_progress_writes_deferred_total",
    "Progress readings not written this round: over --progress-writes-per-second (written in a later round)",
)

_phases: dict[tuple[str, str], str] = {}
for _p in PHASES:
    JOBS.labels(_p).set(0)  # every phase from the start, so a dashboard sees zeros rather than gaps


def set_phase(namespace: str, name: str, phase: str | None) -> None:
    """Record a job's phase (None: the job is gone): the jobs-by-phase gauge moves this one job (not a
    recount of all, which at 10,000 jobs costs more than the reconcile that calls it)."""
    key = (namespace, name)
    before = _phases.pop(key, None) if phase is None else _phases.get(key)
    if before == phase:
        return
    if phase is not None:
        _phases[key] = phase
    if before in PHASES:
        JOBS.labels(before).dec()
    if phase in PHASES:
        JOBS.labels(phase).inc()


@contextlib.contextmanager
def api_call(verb: str, kind: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        status = getattr(e, "status", None)
        if status in (404, 409, 410):  # "not there", "already exists", "too old": answers, not failures
            API_CALLS.labels(verb, kind, str(status)).inc()
        else:
            API_CALLS.labels(verb, kind, "error").inc()
            API_ERRORS.labels(verb, kind).inc()
        raise
    API_CALLS.labels(verb, kind, "ok").inc()
    API_ERRORS.labels(verb, kind)  # the series at 0 from the first call, so a dashboard shows 0, not "No data"


@contextlib.contextmanager
def reconcile_timer() -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        RECONCILE.observe(time.perf_counter() - started)


def serve(port: int) -> None:
    start_http_server(port, registry=registry)
