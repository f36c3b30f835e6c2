"""The controller's test harness: handlers.Operator in-process against a fake API server (fake_api.FakeAPI).

The fake stores objects, answers as the API server does (409, 404, preconditions, merge patches, the
garbage collector's cascade) and records each change as a watch event; `Cluster.settle` hands those to
the operator as kopf would, until nothing changes. The Job controller and the kubelet are played by the
test (`run`, `fail`, `complete`). Used by test_controller*.py, test_timer.py and test_operator_burst.py.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from fake_api import FakeAPI, serve

from codex_operator import metrics, names
from codex_operator.handlers import Operator, Options
from codex_operator.kube import Kube
from codex_trainer.manifest import apply_overrides
from support import TINY

NS, NAME = "team-a", "tiny-cpu"
KEY = (NS, NAME)


def manifest(*overrides: str, name: str = NAME) -> dict[str, Any]:
    raw = apply_overrides(yaml.safe_load(TINY.read_text()), list(overrides))
    raw["metadata"] = {"name": name, "namespace": NS}
    return raw


class Cluster:
    """The fake API server, the operator under test and the Events it posted."""

    def __init__(self, api: FakeAPI, kube: Kube, **options: Any):
        self.api = api
        self.events: list[tuple[str, str, str]] = []
        self.op = Operator(
            Options(progress_via="proxy", **options),
            kube,
            post_event=lambda body, kind, reason, message: self.events.append((kind, reason, message)),
        )

    async def settle(self, rounds: int = 30) -> None:
        """Deliver every watch event to the operator, as kopf and its informers would, until nothing changes."""
        for _ in range(rounds):
            changes = self.api.drain()
            if not changes:
                return
            for kind, obj in changes:
                if obj["kind"] == names.KIND:
                    await self.op.on_job_event(kind, obj)
                elif obj["kind"] in ("Job", "ConfigMap", "Service", "Pod"):
                    await self.op.on_child_event(kind, obj)
        raise AssertionError("the operator kept changing things")

    async def apply(self, *overrides: str) -> dict[str, Any]:
        job = self.api.put(names.PLURAL, manifest(*overrides))
        await self.settle()
        return job

    async def edit(self, *overrides: str) -> None:
        job = copy.deepcopy(self.job())
        edited = apply_overrides(
            {"apiVersion": job["apiVersion"], "kind": job["kind"], "spec": job["spec"]}, list(overrides)
        )
        job["spec"] = edited["spec"]
        job["metadata"]["generation"] += 1
        self.api.put(names.PLURAL, job)
        await self.settle()

    async def retry(self) -> None:
        """The timer's next tick, with every backoff due now."""
        for st in self.op.jobs.values():
            if st.retry_at is not None:
                st.retry_at = 0.0
            st.explained_at = time.monotonic() - st.explain_every  # the wait explained now, however long it was
            st.unread_until = 0.0  # and rank 0 read now, however often it failed
        await self.settle()  # what the watches have shown by now (the pods the kubelet changed)
        await self.op.tick_once()
        await self.settle()

    def api_calls(self, verb: str, kind: str) -> float:
        """The operator's own count of its API calls (every outcome), as its /metrics shows it."""
        return sum(
            s.value
            for family in metrics.registry.collect()
            if family.name == "codex_operator_api_calls"
            for s in family.samples
            if s.name.endswith("_total") and s.labels.get("verb") == verb and s.labels.get("kind") == kind
        )

    def job(self) -> dict[str, Any]:
        found = self.api.get(names.PLURAL, NS, NAME)
        assert found is not None
        return found

    def status(self) -> dict[str, Any]:
        return self.job().get("status") or {}

    def attempt(self, n: int) -> dict[str, Any] | None:
        return self.api.get("jobs", NS, names.attempt_name(NAME, n))

    # ---------------------------------------------------------------- the Job controller and the kubelet

    def pod(self, n: int, rank: int, *, exit_code: int | None = None, reason: str = "", message: str = "",
            disrupted: bool = False, finished: str = "2026-12-01T10:00:00Z") -> dict[str, Any]:  # fmt: skip
        job = self.attempt(n)
        assert job is not None
        state: dict[str, Any] = {"running": {}}
        if exit_code is not None:
            state = {
                "terminated": {"exitCode": exit_code, "reason": reason, "message": message, "finishedAt": finished}
            }
        pod = {
            "metadata": {
                "name": f"{job['metadata']['name']}-{rank}-x",
                "namespace": NS,
                "labels": {
                    "batch.kubernetes.io/job-name": job["metadata"]["name"],
                    "batch.kubernetes.io/job-completion-index": str(rank),
                    names.LABEL_JOB: NAME,
                },
                "ownerReferences": [{"kind": "Job", "name": job["metadata"]["name"], "uid": job["metadata"]["uid"]}],
            },
            "status": {
                "phase": "Running" if exit_code is None else ("Succeeded" if exit_code == 0 else "Failed"),
                "conditions": [{"type": "DisruptionTarget", "status": "True"}] if disrupted else [],
                "containerStatuses": [{"name": names.CONTAINER, "state": state}],
            },
        }
        return self.api.put("pods", pod)

    def failed_create(self, n: int, rank: int) -> str:
        """The Job controller's Warning when a pod quota refuses rank `rank` of attempt `n`; what it said."""
        job = self.attempt(n)
        assert job is not None
        said = f'Error creating: pods "{NAME}-a{n}-{rank}-x" is forbidden: exceeded quota: pods, requested: pods=1'
        involved = {"kind": "Job", "name": job["metadata"]["name"], "uid": job["metadata"]["uid"]}
        event = {"metadata": {"name": f"e{n}-{rank}", "namespace": NS}, "involvedObject": involved}
        self.api.put("events", event | {"reason": "FailedCreate", "type": "Warning", "message": said})
        self.op.jobs[KEY].body = self.job()
        return said

    async def run(self, n: int, ready: int = 1) -> None:
        job = self.attempt(n)
        assert job is not None
        job["status"] = {"ready": ready, "active": ready}
        self.api.put("jobs", job)
        await self.settle()

    async def fail(self, n: int, reason: str = "BackoffLimitExceeded", message: str = "") -> None:
        job = self.attempt(n)
        assert job is not None
        cond = {"type": "Failed", "status": "True", "reason": reason, "message": message}
        job["status"] = {"conditions": [cond]}
        self.api.put("jobs", job)
        await self.settle()

    async def complete(self, n: int, final: dict[str, Any]) -> None:
        import json

        self.pod(n, 0, exit_code=0, message=json.dumps(final))
        job = self.attempt(n)
        assert job is not None
        job["status"] = {"conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached"}]}
        self.api.put("jobs", job)
        await self.settle()


def scenario(test: Callable[[Cluster], Awaitable[None]], **options: Any) -> None:
    api = FakeAPI()

    async def main(kube: Kube) -> None:
        c = Cluster(api, kube, **options)
        try:
            await test(c)
        finally:
            if c.op.http is not None:
                await c.op.http.close()

    asyncio.run(serve(api, main))


def reasons(c: Cluster) -> list[str]:
    return [r for _, r, _ in c.events]
