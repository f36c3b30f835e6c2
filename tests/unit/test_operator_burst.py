"""Many jobs created at once: every one gets its attempt, and the API server never sees more of the
operator's requests in flight than the operator has reconciles at once (a burst waits as watch events,
not as half-done reconciles holding their manifests)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from fake_api import FakeAPI, answering
from test_controller import NS, manifest

from codex_operator import handlers, names
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
