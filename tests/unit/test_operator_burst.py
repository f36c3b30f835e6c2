"""Many jobs created at once: every one gets its attempt, and the API server never sees more of the
operator's requests in flight than the operator has reconciles at once (a burst waits as watch events,
not as half-done reconciles holding their manifests)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from controller_harness import NS, manifest
from fake_api import FakeAPI, answering
from prometheus_client import REGISTRY

from codex_operator import eventline, handlers, names
from codex_operator.handlers import Operator, Options


def test_a_burst_of_jobs_all_start_with_a_bounded_number_of_requests_in_flight(monkeypatch):
    monkeypatch.setattr(handlers, "RECONCILES_AT_ONCE", 4)
    api = FakeAPI()
    in_flight, most = 0, 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.01)  # an API server under load
            return await api.answer(request)
        finally:
            in_flight -= 1

    async def burst(kube: Any) -> None:
        op = Operator(Options(progress_via="proxy"), kube, post_event=lambda *_: None)
        jobs = [api.put(names.PLURAL, manifest(name=f"j{i}")) for i in range(40)]
        api.drain()
        await asyncio.gather(*(op.on_job_event("ADDED", job) for job in jobs))

    asyncio.run(answering(slow, burst))
    for i in range(40):
        assert api.get("jobs", NS, f"j{i}-a1") is not None, f"j{i}"
        assert (api.get(names.PLURAL, NS, f"j{i}").get("status") or {}).get("phase") == "Pending"
    assert most <= 4, most


def test_a_burst_of_events_is_let_go_at_once_and_costs_each_job_one_reconcile(monkeypatch):
    """On the cluster a watch event only queues its job (kopf's handler returns before any request, so
    no event waits holding its body), and a job with several events queued is reconciled once."""
    monkeypatch.setattr(handlers, "RECONCILES_AT_ONCE", 4)
    api = FakeAPI()
    requests: list[str] = []

    async def counting(request: web.Request) -> web.StreamResponse:
        requests.append(f"{request.method} {request.path}")
        await asyncio.sleep(0.01)
        return await api.answer(request)

    def reconciles() -> float:
        return REGISTRY.get_sample_value("codex_operator_reconcile_seconds_count") or 0.0

    before = reconciles()

    async def burst(kube: Any) -> None:
        op = Operator(Options(progress_via="proxy"), kube, post_event=lambda *_: None)
        op.queue.start(4)
        jobs = [api.put(names.PLURAL, manifest(name=f"j{i}")) for i in range(40)]
        api.drain()
        for _ in range(3):  # each job's event seen three times before any reconcile ran
            for job in jobs:
                key = op.take_job_event("ADDED", job)
                assert key is not None
                op.queue.put(key)
        assert not requests, "a watch event made a request before the handler returned"
        await asyncio.wait_for(op.queue.join(), 30)
        op.queue.stop()

    asyncio.run(answering(counting, burst))
    for i in range(40):
        assert api.get("jobs", NS, f"j{i}-a1") is not None, f"j{i}"
        assert (api.get(names.PLURAL, NS, f"j{i}").get("status") or {}).get("phase") == "Pending"
    creates = [r for r in requests if r.startswith("POST") and r.endswith("/jobs")]
    assert len(creates) == 40, creates
    assert reconciles() - before == 40, "a job queued three times was reconciled more than once"


def test_events_the_api_server_is_slow_to_take_never_hold_up_a_jobs_start(monkeypatch):
    """An Event is posted in the background, and in a burst there are hundreds waiting: they must wait
    in a line of their own, not for the API client's connections, where every job's creates would queue
    behind them (on the cluster, 1,000 jobs at once: ConfigMap creates waited up to 8 s for a connection
    behind 350 Event posts). Here the API server takes no Event until every job has its attempt Job: a
    pool of 8 connections, all held by Events, would start none."""
    monkeypatch.setattr(handlers, "RECONCILES_AT_ONCE", 4)
    api = FakeAPI()
    started = asyncio.Event()
    jobs_made = 0
    events_in_flight, most_events = 0, 0

    async def events_wait(request: web.Request) -> web.StreamResponse:
        nonlocal jobs_made, events_in_flight, most_events
        if request.path.endswith("/events"):
            events_in_flight += 1
            most_events = max(most_events, events_in_flight)
            try:
                await started.wait()
            finally:
                events_in_flight -= 1
        response = await api.answer(request)
        if request.method == "POST" and request.path.endswith("/jobs"):
            jobs_made += 1
            if jobs_made == 20:
                started.set()
        return response

    async def burst(kube: Any) -> None:
        op = Operator(Options(progress_via="proxy"), kube)  # its own Event poster, through the same client
        op.queue.start(4)
        for job in [api.put(names.PLURAL, manifest(name=f"j{i}")) for i in range(20)]:
            key = op.take_job_event("ADDED", job)
            assert key is not None
            op.queue.put(key)
        api.drain()
        try:
            await asyncio.wait_for(started.wait(), 10)
        finally:
            started.set()  # (so that a failure ends here, not when the server gives up on the Events held)
        await asyncio.wait_for(op.queue.join(), 30)
        op.queue.stop()
        await asyncio.wait_for(op.events.posted(), 30)

    asyncio.run(answering(events_wait, burst, connections=8))
    for i in range(20):
        assert api.get("jobs", NS, f"j{i}-a1") is not None, f"j{i}"
    created = [e for e in api.names("events") if e.startswith("j")]
    assert len(created) == 20, created  # and every Event got there in the end
    assert most_events <= eventline.EVENTS_AT_ONCE, most_events
