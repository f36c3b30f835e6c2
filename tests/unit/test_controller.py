"""The controller (handlers.Operator) in-process against a fake API server (fake_api.FakeAPI): each promise
the operator makes when the cluster does the unexpected, in seconds.

The fake stores objects, answers as the API server does (409, 404, preconditions, merge patches, the
garbage collector's cascade) and records each change as a watch event; `Cluster.settle` hands those to
the operator as kopf would, until nothing changes. The Job controller and the kubelet are played by the
test (`run`, `fail`, `complete`). What depends on the real API server's behaviour (CEL rules, admission,
the Job controller's own events) is shown on the cluster in tests/integration.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from fake_api import FakeAPI, serve

from codex_operator import metrics, names
from codex_operator.handlers import Operator, Options
from codex_operator.kube import Kube
from codex_trainer import contract
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


# ---------------------------------------------------------------- the happy path, as a baseline


def test_a_job_runs_to_succeeded_with_its_children_owned_by_its_uid():
    async def test(c: Cluster) -> None:
        job = await c.apply()
        uid = job["metadata"]["uid"]
        assert c.status()["phase"] == "Pending" and c.status()["attempt"] == 1
        for plural, name in [
            ("persistentvolumeclaims", f"{NAME}-checkpoints"),
            ("configmaps", f"{NAME}-a1-config"),
            ("jobs", f"{NAME}-a1"),
        ]:
            child = c.api.get(plural, NS, name)
            assert child is not None, name
            assert [r["uid"] for r in child["metadata"]["ownerReferences"]] == [uid]
        assert c.api.get("services", NS, f"{NAME}-workers") is None  # one node: its processes meet on localhost
        await c.run(1)
        assert c.status()["phase"] == "Running"
        await c.complete(1, {"step": 300, "loss": 0.5, "checkpoint": {"step": 300}})
        assert c.status()["phase"] == "Succeeded" and c.status()["checkpoint"]["step"] == 300
        assert reasons(c) == ["Created", "Running", "Succeeded"]

    scenario(test)


# ---------------------------------------------------------------- 1. a child is the job's by UID, not by name


@pytest.mark.parametrize(
    ("plural", "name", "says", "nodes"),
    [
        ("services", f"{NAME}-workers", "no owner", 2),
        ("configmaps", f"{NAME}-a1-config", "no owner", 1),
        ("persistentvolumeclaims", f"{NAME}-checkpoints", "no owner", 1),
    ],
)
def test_a_same_named_object_someone_else_made_is_never_adopted_nor_overwritten(plural, name, says, nodes):
    async def test(c: Cluster) -> None:
        theirs = c.api.put(plural, {"metadata": {"name": name, "namespace": NS}, "data": {"app": "config"}})
        before = copy.deepcopy(theirs)
        await c.apply(f"numNodes={nodes}")
        st = c.status()
        kind = {"services": "Service", "configmaps": "ConfigMap", "persistentvolumeclaims": "PersistentVolumeClaim"}
        assert (
            st["phase"] == "Pending" and f"{kind[plural]} {name} exists and is not this job's ({says})" in st["message"]
        )
        assert "retrying" in st["message"] and ("Warning", "NameTaken", st["message"]) in c.events
        assert c.api.get(plural, NS, name) == before  # untouched
        assert c.attempt(1) is None
        c.api.delete(plural, NS, name)  # the user frees the name
        await c.retry()
        assert c.attempt(1) is not None and c.status()["attempt"] == 1

    scenario(test)


def test_a_job_recreated_under_the_same_name_starts_fresh_never_adopting_its_namesakes_orphans():
    """kubectl delete ctj tiny-cpu --cascade=orphan, then apply it again: the old children stay, owned by
    nobody; the new job adopts none of them and never reads the old job's Succeeded."""

    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        await c.complete(1, {"step": 300, "loss": 0.5})
        old_uid = c.job()["metadata"]["uid"]
        c.api.delete(names.PLURAL, NS, NAME, propagation="Orphan")
        await c.settle()
        assert c.attempt(1) is not None and not c.attempt(1)["metadata"].get("ownerReferences")
        c.events.clear()
        await c.apply()
        st = c.status()
        assert st["phase"] == "Pending" and st.get("attempt", 0) <= 1 and "Succeeded" not in reasons(c)
        assert f"left by an earlier job of this name, uid {old_uid}" in st["message"]
        assert "storage.existingClaim: tiny-cpu-checkpoints" in st["message"]
        for plural in ("persistentvolumeclaims", "services", "configmaps", "jobs", "pods"):  # the user cleans up
            for n in c.api.names(plural):
                c.api.delete(plural, NS, n)
        await c.retry()
        st, new_uid = c.status(), c.job()["metadata"]["uid"]
        assert st["phase"] == "Pending" and st["attempt"] == 1 and st["restarts"] == 0
        assert c.attempt(1)["metadata"]["ownerReferences"][0]["uid"] == new_uid

    scenario(test)


def test_delete_then_reapply_before_the_garbage_collector_waits_for_it_then_starts_attempt_one():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        old = c.job()["metadata"]["uid"]
        gone = c.api.objects.pop((names.PLURAL, NS, NAME))  # deleted; the garbage collector has not run yet
        await c.op.on_job_event("DELETED", gone)
        c.api.drain()
        await c.apply()
        st = c.status()
        assert f"owned by CodexTrainingJob {NAME} uid {old}" in st["message"] and st["phase"] == "Pending"
        for plural in ("persistentvolumeclaims", "services", "configmaps", "jobs"):  # the collector runs
            for n in c.api.names(plural):
                c.api.delete(plural, NS, n)
        await c.retry()
        assert c.status()["attempt"] == 1 and c.attempt(1)["metadata"]["ownerReferences"][0]["uid"] != old

    scenario(test)


def test_the_ttl_deletes_only_the_job_it_timed():
    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.ttlSecondsAfterFinished=0")
        await c.run(1)
        await c.complete(1, {"step": 300})
        key_state = c.op.jobs[KEY]
        timed = copy.deepcopy(key_state.body)
        assert timed is not None and timed["status"]["phase"] == "Succeeded"
        c.api.objects.pop((names.PLURAL, NS, NAME))  # deleted and re-created meanwhile: a new UID
        c.api.put(names.PLURAL, manifest("runPolicy.ttlSecondsAfterFinished=0"))
        c.api.drain()
        key_state.body = timed  # the timer still holds the old one
        await c.op.tick(KEY, key_state)
        assert c.api.get(names.PLURAL, NS, NAME) is not None  # the UID precondition kept the new job
        key_state.body = c.job() | {"status": timed["status"]}
        await c.op.tick(KEY, key_state)
        assert c.api.get(names.PLURAL, NS, NAME) is None  # its own TTL: deleted

    scenario(test)


# ---------------------------------------------------------------- 2. a spec edit never ends in a permanent failure


def test_storage_retain_switched_on_keeps_the_volume_and_off_lets_it_go():
    async def test(c: Cluster) -> None:
        await c.apply()
        pvc = f"{NAME}-checkpoints"
        assert c.api.get("persistentvolumeclaims", NS, pvc)["metadata"].get("ownerReferences")
        await c.edit("storage.retain=true")
        assert not c.api.get("persistentvolumeclaims", NS, pvc)["metadata"].get("ownerReferences")
        await c.edit("storage.retain=false")
        assert (
            c.api.get("persistentvolumeclaims", NS, pvc)["metadata"]["ownerReferences"][0]["uid"]
            == c.job()["metadata"]["uid"]
        )
        await c.edit("storage.retain=true")
        c.api.delete(names.PLURAL, NS, NAME)
        assert c.api.get("persistentvolumeclaims", NS, pvc) is not None  # kept
        assert c.api.get("services", NS, f"{NAME}-workers") is None

    scenario(test)


def test_an_edit_mid_attempt_applies_from_the_next_attempt_every_rank_reading_one_file():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        first = c.api.get("configmaps", NS, f"{NAME}-a1-config")
        await c.edit("training.maxSteps=500")
        assert c.api.get("configmaps", NS, f"{NAME}-a1-config") == first  # immutable: attempt 1's ranks agree
        assert first["immutable"] is True and "maxSteps: 500" not in first["data"][names.CONFIG_FILE]
        assert c.status()["phase"] == "Running"
        c.pod(1, 0, exit_code=1, message="crashed")
        await c.fail(1)
        second = c.api.get("configmaps", NS, f"{NAME}-a2-config")
        assert "maxSteps: 500" in second["data"][names.CONFIG_FILE]
        assert c.status()["phase"] == "Restarting" and c.status()["attempt"] == 2

    scenario(test)


def test_a_single_node_job_edited_to_two_nodes_gets_its_rendezvous_service_before_its_next_attempt():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        assert c.api.get("services", NS, f"{NAME}-workers") is None  # one node: no Service to keep
        await c.edit("numNodes=2")
        c.pod(1, 0, exit_code=1, message="crashed")
        await c.fail(1)
        service = c.api.get("services", NS, f"{NAME}-workers")
        pod = c.attempt(2)["spec"]["template"]["spec"]
        assert service is not None and pod["subdomain"] == service["metadata"]["name"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["MASTER_ADDR"] == f"{NAME}-a2-0.{NAME}-workers" and env["NNODES"] == "2"

    scenario(test)


# ---------------------------------------------------------------- 3. every refusal is shown


@pytest.mark.parametrize(
    ("code", "message", "retried"),
    [
        (403, 'jobs.batch "tiny-cpu-a1" is forbidden: exceeded quota: compute, requested: count/jobs.batch=1', True),
        (429, "Too many requests, please try again later.", True),
        (500, "etcdserver: request timed out", True),
        (
            403,
            'jobs.batch "tiny-cpu-a1" is forbidden: cannot set blockOwnerDeletion if an ownerReference refers to '
            "a resource you can't set finalizers on",
            False,
        ),  # fmt: skip
        (403, "unable to create new content in namespace team-a because it is being terminated", False),
        (400, 'admission webhook "jobs.example.com" denied the request: GPUs need a team label', False),
        (422, 'Job.batch "tiny-cpu-a1" is invalid: spec.template.spec.affinity: Invalid value', False),
    ],
)
def test_a_refused_attempt_job_is_shown_and_retried_or_failed_as_its_answer_says(code, message, retried):
    async def test(c: Cluster) -> None:
        c.api.refuse("POST", "jobs", code, message, times=None)
        await c.apply()
        st = c.status()
        assert f"the API server refused creating Job {NAME}-a1 (HTTP {code}): {message}" in st["message"]
        if retried:
            assert st["phase"] == "Pending" and st["message"].endswith("; retrying")
            assert ("Warning", "Refused", st["message"]) in c.events
            assert c.op.jobs[KEY].retry_at is not None
            c.api.rules.clear()  # the quota frees up, the server recovers
            await c.retry()
            assert c.attempt(1) is not None and c.status()["phase"] == "Pending"
            assert c.status()["message"] == "waiting for the trainer pods to start"
        else:
            assert st["phase"] == "Failed" and "not retried" in st["message"]
            assert ("Warning", "Refused", st["message"]) in c.events
            assert c.op.jobs.get(KEY) is None or c.op.jobs[KEY].retry_at is None

    scenario(test)


def test_a_refused_child_of_each_kind_is_named_in_the_message():
    async def test(c: Cluster) -> None:
        c.api.refuse("POST", "persistentvolumeclaims", 403, "exceeded quota: storage, requested: 10Gi", times=2)
        await c.apply()
        assert "refused creating PersistentVolumeClaim tiny-cpu-checkpoints (HTTP 403)" in c.status()["message"]
        await c.retry()
        assert c.status()["message"].endswith("retrying")  # still refused: the backoff grows
        backoff = c.op.jobs[KEY].backoff
        await c.retry()
        assert c.attempt(1) is not None and backoff >= 10

    scenario(test)


def test_a_reconcile_before_the_watch_shows_a_new_attempt_neither_repeats_nor_misses_it():
    """The attempt Jobs come from the watch, which lags the operator's own creates and deletes by an
    event: a reconcile in between (an edit, a retry, another child's event) must count the attempt it
    has just made, and not the one it has just deleted."""

    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.backoffLimit=3")
        await c.run(1)
        job = c.attempt(1)
        assert job is not None
        job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
        c.api.put("jobs", job)
        for kind, obj in c.api.drain():  # a1's failure: the operator creates a2 and says so
            await c.op.on_child_event(kind, obj)
        held = c.api.drain()  # a2's ADDED and the status write, not shown to the operator yet
        assert [o["metadata"]["name"] for _, o in held if o["kind"] == "Job"] == [f"{NAME}-a2"]
        created = c.api_calls("create", "Job")
        for _ in range(2):  # twice, as an edit and a retry would
            await c.op.reconcile(*KEY, c.op.jobs[KEY].body)
        assert c.api_calls("create", "Job") == created  # a2 is not asked for again
        status = c.status()
        assert (status["attempt"], status["restarts"], status["phase"]) == (2, 1, "Restarting")
        for kind, obj in held:
            await c.op.on_child_event(kind, obj) if obj["kind"] != names.KIND else await c.op.on_job_event(kind, obj)
        await c.settle()
        assert c.attempt(3) is None and c.status()["restarts"] == 1

    scenario(test)


def test_pods_the_job_controller_cannot_create_are_explained():
    async def test(c: Cluster) -> None:
        await c.apply()
        said = c.failed_create(1, 0)
        await c.retry()
        assert c.status()["message"] == f"attempt 1 waiting: the Job controller cannot create the pods: {said}"

    scenario(test)


# ---------------------------------------------------------------- 4. a deleted child is noticed


def test_a_deleted_attempt_job_starts_a_new_attempt_not_counted_against_backoff_limit():
    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.backoffLimit=0")
        await c.run(1)
        c.api.delete("jobs", NS, f"{NAME}-a1")
        await c.settle()
        st = c.status()
        assert st["phase"] == "Restarting" and st["attempt"] == 2 and st["restarts"] == 1
        assert f"attempt 1's Job {NAME}-a1 was deleted (not counted against backoffLimit)" in st["message"]
        assert c.attempt(2) is not None and ("Warning", "Disrupted", st["message"]) in c.events

    scenario(test)


@pytest.mark.parametrize(("plural", "name"), [("configmaps", f"{NAME}-a1-config"), ("services", f"{NAME}-workers")])
def test_a_deleted_job_file_or_service_is_recreated(plural, name):
    async def test(c: Cluster) -> None:
        await c.apply("numNodes=2")
        await c.run(1, ready=2)
        before = c.api.get(plural, NS, name)
        c.api.delete(plural, NS, name)
        await c.settle()
        again = c.api.get(plural, NS, name)
        assert again is not None and again["metadata"]["uid"] != before["metadata"]["uid"]
        assert again.get("data") == before.get("data") and again.get("spec") == before.get("spec")
        assert c.status()["phase"] == "Running" and c.attempt(2) is None

    scenario(test)


# ---------------------------------------------------------------- 5. retries are bounded and honest


def test_disruptions_are_not_counted_against_backoff_limit_but_are_bounded():
    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.backoffLimit=0", "runPolicy.maxDisruptions=2")
        for n in (1, 2, 3):
            await c.run(n)
            c.pod(n, 0, exit_code=143, reason="Error", message="stopped by SIGTERM", disrupted=True)
            await c.fail(
                n, "PodFailurePolicy", f"Pod {NS}/p has condition DisruptionTarget matching FailJob rule at index 1"
            )
        st = c.status()
        assert st["phase"] == "Failed" and st["attempt"] == 3
        assert "runPolicy.maxDisruptions 2 reached" in st["message"]
        assert reasons(c).count("Disrupted") == 2 and reasons(c)[-1] == "DisruptionLimitExceeded"

    scenario(test)


def test_a_failed_job_keeps_no_pods():
    """A live attempt, then the job fails for a reason of the cluster's (its suspension refused by a
    webhook): the attempt Job is deleted, so no pod keeps its node."""

    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        c.api.refuse("PATCH", "jobs", 400, 'admission webhook "x" denied the request: no suspending here', times=None)
        await c.edit("runPolicy.suspend=true")
        st = c.status()
        assert st["phase"] == "Failed" and "refused suspending Job tiny-cpu-a1 (HTTP 400)" in st["message"]
        assert c.attempt(1) is None

    scenario(test)


def test_the_start_time_survives_an_operator_stopped_right_after_the_first_create():
    async def test(c: Cluster) -> None:
        started = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        job = c.api.put(names.PLURAL, manifest("runPolicy.activeDeadlineSeconds=600"))
        c.api.drain()
        # the attempt exists, with no status written: the operator stopped between the two
        from codex_operator import builders
        from codex_operator.handlers import _job_or_problem

        parsed = _job_or_problem(job)
        assert not isinstance(parsed, str)
        attempt = builders.attempt_job(parsed, 1, builders.Settings(), 600)
        attempt["metadata"]["creationTimestamp"] = started
        c.api.put("jobs", attempt)
        c.pod(1, 0, exit_code=1, message="crashed")
        await c.fail(1)  # the operator is back: attempt 1 has crashed meanwhile; its first look is at that
        st = c.status()
        assert st["startTime"] == started and st["phase"] == "Failed"
        assert st["message"] == "runPolicy.activeDeadlineSeconds reached" and c.attempt(2) is None

    scenario(test)


def test_the_oom_killed_rank_is_blamed_not_the_ranks_whose_collectives_failed_after_it():
    async def test(c: Cluster) -> None:
        await c.apply("numNodes=2")
        await c.run(1, ready=2)
        c.pod(1, 0, exit_code=1, message="RuntimeError: NCCL communicator was aborted", finished="2026-12-01T10:00:01Z")
        c.pod(1, 1, exit_code=137, reason="OOMKilled", finished="2026-12-01T10:00:02Z")
        await c.fail(1)
        assert "trainer was killed for using more memory than its limit (exited 137)" in c.status()["message"]

    scenario(test)


def test_a_long_termination_message_is_capped_before_status_and_events():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        c.pod(1, 0, exit_code=2, message="x" * 100_000)
        await c.fail(1, "PodFailurePolicy", "... exited with code 2 matching FailJob rule at index 0")
        st = c.status()
        assert st["phase"] == "Failed" and len(st["message"]) < 1200
        assert all(len(m) < 1200 for _, _, m in c.events)

    scenario(test)


def test_exit_2_is_read_from_the_pod_not_the_job_controllers_wording():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        c.pod(1, 0, exit_code=contract.EXIT_USER_ERROR, message="invalid spec.data.train: file not found")
        await c.fail(1, "PodFailurePolicy", "some future wording of the Job controller")
        assert c.status()["phase"] == "Failed" and c.status()["message"].endswith("file not found")

    scenario(test)


# ---------------------------------------------------------------- 6. Kueue is never fought


def test_a_queued_attempts_suspend_is_never_changed_by_the_operator():
    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.queueName=team-a")
        assert c.attempt(1)["spec"]["suspend"] is True
        assert c.attempt(1)["metadata"]["labels"][names.LABEL_QUEUE] == "team-a"
        job = c.attempt(1)
        job["spec"]["suspend"] = False  # Kueue admits it
        c.api.put("jobs", job)
        await c.settle()
        await c.edit("runPolicy.suspend=true")
        assert not [r for r in c.api.requests if r[0] == "PATCH" and "/jobs/" in r[1]]

    scenario(test)


def test_with_kueue_managing_every_job_an_unlabelled_attempt_is_left_to_it():
    async def test(c: Cluster) -> None:
        await c.apply()
        job = c.attempt(1)
        job["spec"]["suspend"] = True  # Kueue's webhook suspends it (manageJobsWithoutQueueName)
        c.api.put("jobs", job)
        await c.settle()
        assert c.attempt(1)["spec"]["suspend"] is True
        assert c.status()["phase"] == "Suspended" and c.status()["message"] == "waiting for admission in the queue"
        assert not [r for r in c.api.requests if r[0] == "PATCH" and "/jobs/" in r[1]]

    scenario(test, queue_owns_suspend=True)


def test_without_a_queue_suspend_and_resume_follow_run_policy():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        await c.edit("runPolicy.suspend=true")
        assert c.attempt(1)["spec"]["suspend"] is True and c.status()["phase"] == "Suspended"
        await c.edit("runPolicy.suspend=false")
        assert c.attempt(1)["spec"]["suspend"] is False

    scenario(test)


def workload(c: Cluster, n: int, **conditions: tuple[str, ...]) -> None:
    """Kueue's Workload of attempt `n`, with conditions type -> (status, message[, reason])."""
    job = c.attempt(n)
    assert job is not None
    c.api.put(
        "workloads",
        {
            "apiVersion": f"{names.KUEUE_GROUP}/{names.KUEUE_VERSION}",
            "kind": "Workload",
            "metadata": {
                "name": f"job-{job['metadata']['name']}-1a2b3",
                "namespace": NS,
                "labels": {names.LABEL_KUEUE_JOB_UID: job["metadata"]["uid"]},
            },
            "status": {
                "conditions": [
                    {"type": t, "status": v[0], "message": v[1], "reason": v[2] if len(v) > 2 else t}
                    for t, v in conditions.items()
                ]
            },
        },
    )


async def set_suspend(c: Cluster, n: int, suspend: bool, ready: int = 0) -> None:
    """Kueue admits (False) or evicts (True) an attempt by its Job's suspend; the Job controller follows."""
    job = c.attempt(n)
    assert job is not None
    job["spec"]["suspend"] = suspend
    job["status"] = {"ready": ready, "active": ready}
    c.api.put("jobs", job)
    await c.settle()


QUOTA = "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor default, 1 more needed"
EVICTED = "Preempted to accommodate a workload (UID: u1, JobUID: j1) due to prioritization in the ClusterQueue"


def test_a_queued_job_says_which_queue_it_waits_in_and_why_in_kueues_words():
    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.queueName=team-a")
        st = c.status()
        assert st["phase"] == "Suspended" and st["message"] == "waiting for admission in LocalQueue team-a"
        assert {"type": "Suspended", "status": "True"}.items() <= {
            k: v for k, v in next(x for x in st["conditions"] if x["type"] == "Suspended").items()
        }.items()
        workload(c, 1, QuotaReserved=("False", QUOTA))  # Kueue writes its Workload, not the Job: the timer looks
        await c.retry()
        assert c.status()["message"] == f"waiting for admission in LocalQueue team-a: {QUOTA}"
        await set_suspend(c, 1, False)
        assert c.status()["phase"] == "Pending" and "admitted by LocalQueue team-a" in c.status()["message"]
        assert ("Normal", "Admitted") in [(k, r) for k, r, _ in c.events]
        await c.run(1)
        assert c.status()["phase"] == "Running"

    scenario(test)


def test_a_preempted_job_is_suspended_not_failed_and_runs_again_in_the_same_attempt():
    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.queueName=team-a", "runPolicy.workloadPriorityClass=low")
        assert c.attempt(1)["metadata"]["labels"][names.LABEL_PRIORITY] == "low"
        rules = c.attempt(1)["spec"]["podFailurePolicy"]["rules"]
        assert rules[-1] == {  # a trainer stopped by the eviction (exit 143) does not fail the Job
            "action": "Ignore",
            "onExitCodes": {"containerName": names.CONTAINER, "operator": "In", "values": [143]},
        }
        await set_suspend(c, 1, False, ready=1)
        assert c.status()["phase"] == "Running"
        workload(c, 1, Evicted=("True", EVICTED, "Preempted"), QuotaReserved=("False", "Pending"))
        await set_suspend(c, 1, True)
        st = c.status()
        assert st["phase"] == "Suspended" and st["preemptions"] == 1
        assert st["message"].startswith(f"attempt 1 preempted (not a failure): {EVICTED}")
        assert "when LocalQueue team-a admits it again" in st["message"]
        assert next(x for x in st["conditions"] if x["type"] == "Suspended")["reason"] == "Preempted"
        assert ("Normal", "Preempted") in [(k, r) for k, r, _ in c.events]
        assert not st.get("crashes") and not st.get("disruptions") and st["restarts"] == 0
        await c.retry()  # the timer keeps Kueue's reason for the preemption
        assert c.status()["message"] == st["message"]

        await set_suspend(c, 1, False, ready=1)  # re-admitted: the same Job, new pods, resumed from the volume
        st = c.status()
        assert st["phase"] == "Running" and st["attempt"] == 1 and st["restarts"] == 0
        resumed = [m for _, r, m in c.events if r == "Resumed"]
        assert resumed == ["attempt 1 running again: resumed"], c.events
        await c.complete(1, {contract.FINAL_STEP: 300})
        assert c.status()["phase"] == "Succeeded" and c.status()["preemptions"] == 1

    scenario(test)


def test_an_eviction_the_operator_did_not_see_running_and_a_later_attempt_readmitted_are_told_right():
    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.queueName=team-a")
        await set_suspend(c, 1, False)  # admitted; evicted before its pods ran (or while the operator was away)
        assert c.status()["phase"] == "Pending"
        workload(c, 1, Evicted=("True", "ClusterQueue team-cq is stopped", "ClusterQueueStopped"))
        await set_suspend(c, 1, True)
        st = c.status()
        assert st["phase"] == "Suspended" and st["preemptions"] == 1
        assert st["message"].startswith("attempt 1 evicted (not a failure): ClusterQueue team-cq is stopped")
        assert next(x for x in st["conditions"] if x["type"] == "Suspended")["reason"] == "Evicted"

        await set_suspend(c, 1, False, ready=1)
        await c.fail(1)  # a crash: attempt 2, queued again, admitted, preempted, admitted again
        await set_suspend(c, 2, False, ready=1)
        assert [m for _, r, m in c.events if r == "Resumed"] == ["attempt 2 running: resumed"]
        workload(c, 2, Evicted=("True", EVICTED, "Preempted"))
        await set_suspend(c, 2, True)
        assert c.status()["phase"] == "Suspended" and c.status()["preemptions"] == 2
        c.events.clear()
        await set_suspend(c, 2, False)
        assert c.status()["phase"] == "Pending" and not [e for e in c.events if e[0] == "Warning"], c.events
        await c.run(2)
        assert [m for _, r, m in c.events if r == "Resumed"] == ["attempt 2 running again: resumed"]

    scenario(test)


# ---------------------------------------------------------------- kopf's side: what it hands the controller


def test_kopf_hands_the_jobs_events_and_the_informers_the_childrens_to_the_controller(monkeypatch):
    import kopf

    from codex_operator import handlers

    async def until(check: Callable[[], Any], what: str) -> None:
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"never: {what}")

    async def test(c: Cluster) -> None:
        registry = kopf.OperatorRegistry()
        handlers.register(c.op, registry, [NS])
        kube = c.op.kube

        async def connect() -> Kube:
            assert kube is not None
            return kube

        monkeypatch.setattr(handlers.Kube, "connect", staticmethod(connect))
        startup, cleanup, _login = (h.fn for h in registry._activities.get_all_handlers())
        settings = kopf.OperatorSettings()
        earlier = c.api.put(names.PLURAL, manifest(name="earlier"))  # a job and its attempt from before a restart
        owner = [{"uid": earlier["metadata"]["uid"]}]
        labels = {names.LABEL_JOB: "earlier"}
        c.api.put("jobs", {"metadata": {"name": "earlier-a1", "labels": labels, "ownerReferences": owner}, "spec": {}})
        pod_lists = c.api_calls("list", "Pod")
        await startup(settings=settings)
        # no change handler (on.create, on.update, on.field): kopf keeps no diff-base, so copies no object
        assert not list(registry._changing.get_all_handlers())
        assert isinstance(settings.persistence.diffbase_storage, handlers.NoDiffBase)
        # kopf watches the jobs only; the children are the informers', only those labelled with a job's name
        watchers = {h.id: h.fn for h in registry._watching.get_all_handlers()}
        assert [i.rsplit(".", 1)[-1] for i in watchers] == ["job_event"]
        assert not list(registry._indexing.get_all_handlers())
        await until(lambda: len(c.api.watches) == 4, "a watch of each kind of child, and of their pods")
        assert {w["labelSelector"] for w in c.api.watches} == {names.LABEL_JOB}
        assert [s.attempt.name for s in c.op.index.values_of((NS, "earlier"))] == ["earlier-a1"]  # listed first
        pod_labels = labels | {
            "batch.kubernetes.io/job-name": "earlier-a1",
            "batch.kubernetes.io/job-completion-index": "0",
        }
        a1 = [{"uid": c.api.get("jobs", NS, "earlier-a1")["metadata"]["uid"]}]
        c.api.put("pods", {"metadata": {"name": "earlier-a1-0-x", "labels": pod_labels, "managedFields": [{}] * 50,
                                        "ownerReferences": a1},
                           "spec": {"containers": [{"name": "trainer", "image": "x" * 1000}]},
                           "status": {"phase": "Running", "podIP": "10.0.0.7"}})  # fmt: skip
        await until(lambda: c.op.pods.get((NS, "earlier-a1")), "rank 0 from the pods' watch, with no LIST")
        assert c.op._rank0(earlier) == (
            c.api.get("pods", NS, "earlier-a1-0-x")["metadata"]["uid"],
            "earlier-a1-0-x",
            "10.0.0.7",
        )
        assert (
            "spec" not in c.op.pods.of(NS, "earlier-a1", a1[0]["uid"])[0]
            and c.api_calls("list", "Pod") == pod_lists + 1
        )  # its informer's
        job = c.api.put(names.PLURAL, manifest("numNodes=2"))
        c.api.drain()
        await next(iter(watchers.values()))(event={"type": "ADDED", "object": job})
        await until(lambda: c.attempt(1) is not None, "attempt 1 created by a worker")
        await asyncio.wait_for(c.op.queue.join(), 10)
        assert c.status()["phase"] == "Pending"
        await until(lambda: list(c.op.index.values_of(KEY)), "the attempt Job in the index, from its watch")
        (seen,) = c.op.index.values_of(KEY)
        assert seen.attempt.name == f"{NAME}-a1" and seen.owned_by(job["metadata"]["uid"])
        c.op.jobs[KEY].pending.made.clear()  # from now on the operator knows a1 from the index alone
        c.api.delete("services", NS, f"{NAME}-workers")  # seen on the (metadata-only) watch of Services
        await until(lambda: c.api.get("services", NS, f"{NAME}-workers") is not None, "the Service re-created")
        await asyncio.wait_for(c.op.queue.join(), 10)
        assert c.attempt(2) is None and c.status()["attempt"] == 1
        ticker = c.op.ticker
        assert ticker is not None
        c.op.kube = None  # cleanup closes the client: the scenario closes it itself
        await cleanup()
        await asyncio.sleep(0)
        assert ticker.cancelled() and all(task.cancelled() for task in c.op.queue.workers)
        assert c.op.children is not None and all(t.done() for t in c.op.children.tasks)

    scenario(test)


def test_the_command_line_runs_kopf_with_the_controller_it_describes(monkeypatch):
    import kopf

    from codex_operator import cli, handlers

    ran: dict[str, Any] = {}

    async def operator(**kwargs: Any) -> None:
        ran.update(kwargs)

    made: list[handlers.Operator] = []
    monkeypatch.setattr(kopf, "operator", operator)
    real = handlers.Operator
    monkeypatch.setattr(handlers, "Operator", lambda options: made.append(real(options)) or made[-1])
    argv = ["run", "--metrics-port=0", "-n", "team-*", "--queue-manages-all-jobs", "--progress-interval=3"]
    assert cli.main(argv) == 0
    assert ran["namespaces"] == ["team-*"] and not ran["clusterwide"] and ran["standalone"]
    (op,) = made
    assert op.options.queue_owns_suspend and op.options.progress_interval == 3
    monkeypatch.setenv("CODEX_NAMESPACES", "")
    assert cli.main(["run", "--metrics-port=0"]) == 0 and ran["clusterwide"]


# ---------------------------------------------------------------- the sequences a reviewer found


def test_a_failed_job_whose_attempt_cannot_be_stopped_yet_is_not_marked_failed_until_it_is():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        c.api.refuse("PATCH", "jobs", 400, 'admission webhook "x" denied the request: no suspending here', times=None)
        c.api.refuse("DELETE", "jobs", 500, "etcdserver: leader changed", times=1)
        await c.edit("runPolicy.suspend=true")
        st = c.status()
        assert st["phase"] == "Running" and "refused deleting Job tiny-cpu-a1 (HTTP 500)" in st["message"]
        await c.retry()
        assert c.status()["phase"] == "Failed" and c.attempt(1) is None

    scenario(test)


def test_limits_count_attempts_whose_jobs_were_deleted_since():
    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.backoffLimit=1", "runPolicy.maxDisruptions=1")
        await c.run(1)
        c.pod(1, 0, exit_code=1, message="crashed")
        await c.fail(1)
        assert c.status()["crashes"] == 1 and c.attempt(2) is not None
        c.api.delete("jobs", NS, f"{NAME}-a1")  # a cluster policy's TTL, or a tidy user
        await c.settle()
        c.api.delete("jobs", NS, f"{NAME}-a2")  # the live one, by hand: a disruption
        await c.settle()
        assert c.status()["disruptions"] == 1 and c.status()["attempt"] == 3
        await c.run(3)
        c.pod(3, 0, exit_code=1, message="crashed again")
        await c.fail(3)
        st = c.status()
        assert st["phase"] == "Failed" and "runPolicy.backoffLimit 1 reached" in st["message"]

    scenario(test)


def test_retain_switched_on_after_the_job_finished_keeps_the_volume():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        await c.complete(1, {"step": 300})
        await c.edit("storage.retain=true")
        assert c.status()["observedGeneration"] == c.job()["metadata"]["generation"]
        c.api.delete(names.PLURAL, NS, NAME)
        assert c.api.get("persistentvolumeclaims", NS, f"{NAME}-checkpoints") is not None

    scenario(test)


def test_a_volume_made_before_the_uid_annotation_stays_the_jobs_when_retained():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        pvc = c.api.get("persistentvolumeclaims", NS, f"{NAME}-checkpoints")
        del pvc["metadata"]["annotations"]  # as the previous release made it
        await c.edit("storage.retain=true")
        c.api.delete("configmaps", NS, f"{NAME}-a1-config")  # any later look at the children
        await c.settle()
        st = c.status()
        assert st["phase"] == "Running" and "not this job's" not in st["message"]

    scenario(test)


def test_a_refusal_that_got_through_on_retry_leaves_no_stale_message():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        c.api.refuse("GET", "configmaps", 503, "the server is currently unable to handle the request", times=1)
        await c.edit("training.learningRate=0.001")  # an edit looks at every child again
        assert "HTTP 503" in c.status()["message"]
        await c.retry()
        assert c.status()["phase"] == "Running" and "HTTP 503" not in c.status()["message"]

    scenario(test)


def test_a_deleted_child_of_an_earlier_job_of_the_same_name_is_not_this_jobs_business():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        old_attempt = copy.deepcopy(c.attempt(1))
        c.api.objects.pop((names.PLURAL, NS, NAME))  # deleted; re-applied before the collector ran
        await c.apply()
        c.api.objects.pop(("jobs", NS, f"{NAME}-a1"))
        await c.op.on_child_event("DELETED", old_attempt)  # the collector's delete, seen after the new job
        await c.settle()
        assert c.attempt(2) is None and c.status().get("attempt", 0) <= 1

    scenario(test)


def test_an_edit_made_while_the_attempt_was_refused_reaches_the_attempt():
    async def test(c: Cluster) -> None:
        c.api.refuse("POST", "jobs", 403, "exceeded quota: compute", times=None)
        await c.apply()
        await c.edit("training.maxSteps=500")
        c.api.rules.clear()
        await c.retry()
        assert c.attempt(1) is not None
        assert "maxSteps: 500" in c.api.get("configmaps", NS, f"{NAME}-a1-config")["data"][names.CONFIG_FILE]

    scenario(test)


def test_a_child_gone_between_two_calls_is_retried_not_failed():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        c.api.refuse("PATCH", "jobs", 404, 'jobs.batch "tiny-cpu-a1" not found', times=1)
        await c.edit("runPolicy.suspend=true")
        assert c.status()["phase"] == "Running" and c.status()["message"].endswith("; retrying")
        await c.retry()
        assert c.status()["phase"] == "Suspended"

    scenario(test)


def test_some_pods_created_and_the_rest_refused_is_explained():
    async def test(c: Cluster) -> None:
        await c.apply("numNodes=2")
        c.pod(1, 0)
        said = c.failed_create(1, 1)
        await c.retry()
        assert c.status()["message"].endswith(said)

    scenario(test)


def test_events_are_posted_from_the_timer_too_as_core_events_on_the_job():
    """A retry run by the timer posts its Events like a watch handler does (kopf.event works only inside
    kopf's handlers: a job that started on a retry lost its Created Event)."""

    async def test(c: Cluster) -> None:
        op = Operator(Options(progress_via="proxy"), c.op.kube)  # the Events the operator posts by itself
        c.op = op
        c.api.refuse("POST", "configmaps", 403, "exceeded quota: q, limited: configmaps=0", times=1)
        job = await c.apply()
        await op.events.posted()
        await c.retry()  # the quota freed: the timer's retry creates everything
        await op.events.posted()
        events = [c.api.get("events", NS, n) for n in c.api.names("events")]
        assert [(e["type"], e["reason"]) for e in events] == [("Warning", "Refused"), ("Normal", "Created")]
        assert all(e["involvedObject"]["uid"] == job["metadata"]["uid"] for e in events)

    scenario(test)


def test_the_jobs_by_phase_gauge_follows_each_job_to_its_end():
    def gauge() -> dict[str, float]:
        return {
            s.labels["phase"]: s.value
            for family in metrics.registry.collect()
            if family.name == "codex_operator_jobs"
            for s in family.samples
        }

    async def test(c: Cluster) -> None:
        metrics.set_phase(NS, NAME, None)  # an earlier test's job of the same name, as if deleted
        before = gauge()
        await c.apply()
        assert gauge()["Pending"] == before["Pending"] + 1
        await c.run(1)
        assert gauge()["Pending"] == before["Pending"] and gauge()["Running"] == before["Running"] + 1
        c.api.delete(names.PLURAL, NS, NAME)
        await c.settle()
        assert gauge() == before

    scenario(test)
