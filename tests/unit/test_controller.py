"""The controller (handlers.Operator) in-process against a fake API server (controller_harness.py): each
promise the operator makes when the cluster does the unexpected, in seconds. Here: a child is the job's by
UID, a spec edit never ends in a permanent failure, every refusal is shown, a deleted child is noticed, and
the sequences a reviewer found; retries and Kueue are in test_controller_retries_and_queues.py, attempt Jobs
edited by hand and a new trainer image in test_controller_attempt_jobs.py, what kopf hands the controller in
test_controller_kopf.py. What depends on the real API server's behaviour (CEL rules,
admission, the Job controller's own events) is shown on the cluster in tests/integration.
"""

from __future__ import annotations

import copy

import pytest
from controller_harness import KEY, NAME, NS, Cluster, manifest, reasons, scenario
from test_timer import rank0_at

from codex_operator import metrics, names
from codex_operator.handlers import Operator, Options

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


def test_a_job_recreated_over_a_running_orphan_names_every_leftover_at_once_and_starts_when_they_go():
    """kubectl delete ctj --cascade=orphan while it trains, then apply it again (the new-user cluster check): the
    message named one leftover a retry, 5 minutes apart, and not the pod that kept the volume from being deleted."""

    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        pod = c.pod(1, 0)["metadata"]["name"]
        c.api.delete(names.PLURAL, NS, NAME, propagation="Orphan")
        await c.settle()
        await c.apply()
        st = c.status()
        assert st["phase"] == "Pending" and st["restarts"] == 0, st
        assert f"PersistentVolumeClaim {NAME}-checkpoints exists and is not this job's" in st["message"]
        assert (
            f"the earlier job also left Job {NAME}-a1 (its pods {pod} are still there and may hold the volume), "
            f"ConfigMap {NAME}-a1-config: delete them (kubectl delete -n {NS} job/{NAME}-a1 "
            f"configmap/{NAME}-a1-config persistentvolumeclaim/{NAME}-checkpoints) or give the job another name"
        ) in st["message"], st["message"]
        c.op.jobs[KEY].backoff = 300.0  # long retried by now
        c.api.delete("persistentvolumeclaims", NS, f"{NAME}-checkpoints")  # as the user is told (not watched)
        c.api.delete("configmaps", NS, f"{NAME}-a1-config")
        await c.settle()  # its deletion seen: tried at once, not after the backoff
        st = c.status()
        assert f"Job {NAME}-a1 exists and is not this job's" in st["message"] and "also left" not in st["message"]
        assert c.op.jobs[KEY].backoff == 5.0  # the next try soon: the volume goes once the pod has
        c.api.delete("jobs", NS, f"{NAME}-a1")
        await c.settle()
        new = c.job()["metadata"]["uid"]
        assert c.attempt(1)["metadata"]["ownerReferences"][0]["uid"] == new and c.status()["attempt"] == 1

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


def test_a_later_attempt_refused_for_an_edited_spec_waits_for_the_next_edit_and_keeps_the_job():
    """An edit the API server accepts (an affinity a Pod refuses) makes the next attempt's Job invalid: the job
    must not fail for good (delete-and-apply would lose its checkpoints); it says what to fix and waits."""

    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.maxDisruptions=3")
        await c.run(1)
        said = 'Job.batch "tiny-cpu-a2" is invalid: spec.template.spec.affinity.nodeAffinity: Required value'
        c.api.refuse("POST", "jobs", 422, said, times=None)
        no_terms = "{requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: []}}"
        await c.edit(f"affinity={{nodeAffinity: {no_terms}}}")
        c.pod(1, 0, exit_code=143, disrupted=True)
        await c.fail(1, "PodFailurePolicy", "Pod has condition DisruptionTarget matching FailJob rule at index 1")
        st = c.status()
        # not Failed, and not the Running of the attempt that ended: nothing runs until the edit
        assert st["phase"] == "Restarting" and c.attempt(2) is None, st
        running = {x["type"]: x for x in st["conditions"]}
        assert running["Running"]["status"] == "False" and running["Restarting"]["reason"] == "Refused", st
        assert (
            "(HTTP 422)" in st["message"]
            and "the job keeps its checkpoints and waits: fix what it names" in st["message"]
        )
        await c.retry()
        assert c.status()["phase"] == "Restarting"  # retried, still refused
        c.api.rules.clear()
        await c.edit("affinity={}")
        assert c.attempt(2) is not None and c.status()["disruptions"] == 1
        st = c.status()
        assert st["phase"] == "Restarting" and "starting attempt 2" in st["message"] and "waits" not in st["message"], (
            st
        )

    scenario(test)


MANY_ENV = "env=[" + ", ".join(f"{{name: V{i}}}" for i in range(257)) + "]"


@pytest.mark.parametrize("edit", ["resources.limits.cpu=500m", "env=[{name: 'A=B', value: x}]", MANY_ENV])
def test_a_job_stored_before_a_check_was_added_keeps_running_with_an_upgraded_operator(edit):
    """A request above its limit, an env name a Pod refuses, more than 256 env variables: the API server took
    them before its CRD had the rules (as the operator did). Read by the operator that has them, such a job must
    not turn Failed with its running attempt deleted: it runs on, and a Pod refuses what it would, later, as
    before."""

    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        await c.edit(edit)  # the fake API server, like one with the earlier CRD, takes it
        st = c.status()
        assert st["phase"] == "Running" and "invalid" not in (st.get("message") or ""), st
        assert c.attempt(1) is not None and not c.attempt(1)["metadata"].get("deletionTimestamp")

    scenario(test)


def test_a_later_attempt_refused_for_now_is_restarting_not_running():
    """Attempt 1 ended and a quota refuses attempt 2 for now: nothing runs, so the job must not say Running."""

    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.backoffLimit=3")
        await c.run(1)
        c.api.refuse("POST", "jobs", 403, "exceeded quota: jobs, requested: count/jobs.batch=1", times=1)
        c.pod(1, 0, exit_code=1)
        await c.fail(1, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        st = c.status()
        assert st["phase"] == "Restarting" and st["message"].endswith("; retrying") and c.attempt(2) is None, st
        assert "creating Job tiny-cpu-a2 (HTTP 403)" in st["message"]
        await c.retry()
        assert c.attempt(2) is not None and c.status()["phase"] == "Restarting"
        await c.run(2)
        assert c.status()["phase"] == "Running"
        # the running attempt's own job file deleted, and its re-create refused for now: it still runs
        c.api.refuse("POST", "configmaps", 503, "the server is currently unable to handle the request", times=1)
        c.api.delete("configmaps", NS, f"{NAME}-a2-config")
        await c.settle()
        st = c.status()
        assert st["phase"] == "Running" and "creating ConfigMap tiny-cpu-a2-config (HTTP 503)" in st["message"], st
        await c.retry()
        assert c.status()["phase"] == "Running" and c.api.get("configmaps", NS, f"{NAME}-a2-config") is not None
        assert not [e for e in c.events if e[1] == "Resumed" and "again" in e[2]], c.events

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

    scenario(test, crash_pause=0)


def test_pods_the_job_controller_cannot_create_are_explained():
    async def test(c: Cluster) -> None:
        await c.apply()
        said = c.failed_create(1, 0)
        await c.retry()
        assert c.status()["message"] == f"attempt 1 waiting: the Job controller cannot create the pods: {said}"
        assert ("Warning", "Waiting", c.status()["message"]) in c.events

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


# ---------------------------------------------------------------- the sequences a reviewer found


def test_a_checkpoint_named_on_a_volume_since_deleted_is_not_taken_for_one_on_the_new_volume():
    """The volume deleted while attempt 1 runs (pvc-protection holds it until its pods end), then drained: the
    trainer names the checkpoint it wrote on the old volume as it stops. The volume made again is empty, so the
    status names no checkpoint and attempt 2 resumes nothing (found by a review)."""

    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        rank0_at(c, 1, 40)
        await c.retry()
        claim = names.pvc_name(NAME)
        pvc = c.api.get("persistentvolumeclaims", NS, claim)
        pvc["metadata"]["deletionTimestamp"] = "2026-12-01T10:00:00Z"  # kubectl delete pvc, held by its pods
        c.api.put("persistentvolumeclaims", pvc)
        await c.edit("runPolicy.backoffLimit=5")  # any edit: the next reconciles check the children
        c.pod(1, 0, exit_code=143, message="stopped by SIGTERM after checkpoint at step 45", disrupted=True)
        c.api.delete("persistentvolumeclaims", NS, claim)  # its pods ended: the claim goes
        await c.fail(1, "PodFailurePolicy", "Pod has condition DisruptionTarget matching FailJob rule at index 1")
        await c.retry()
        await c.run(2)
        st = c.status()
        assert "checkpoint" not in st and "VolumeLost" in reasons(c), st
        said = " ".join(message for _, _, message in c.events)
        assert "checkpoint (step 45" not in said and "(none was reported)" in said, c.events

    scenario(test)


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


@pytest.mark.parametrize("refused", ["DELETE", "POST"])
def test_a_replacement_cut_short_by_a_refusal_finishes_without_counting_a_disruption(refused):
    """An attempt whose pods never started is replaced after an edit; the delete of the old attempt or the
    create of the new one is refused once: the next try finishes it, and nothing is counted (maxDisruptions 0
    would fail the job), nor is the old attempt left running beside the new one."""

    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.maxDisruptions=0")
        assert c.attempt(1) is not None
        code, message = (500, "etcdserver: leader changed") if refused == "DELETE" else (403, "exceeded quota: jobs")
        c.api.refuse(refused, "jobs", code, message, times=1)
        await c.edit("resources.requests.memory=1Gi")
        assert any(r == "Refused" and f"(HTTP {code})" in m for _, r, m in c.events)
        await c.retry()
        st = c.status()
        assert c.attempt(1) is None and c.attempt(2) is not None
        assert st["phase"] == "Pending" and st["attempt"] == 2 and "starting attempt 2" in st["message"]
        assert "disruptions" not in st and "stoppedAttempt" not in st
        assert reasons(c).count("SpecChanged") == 1

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


def test_a_job_created_suspended_and_edited_starts_with_the_edit_and_says_so_once():
    """Before, the edit was said to wait for a next attempt ("attempt 1 goes on with its own"), and on resume
    a second SpecChanged said the opposite; a later edit before any pod ran made the job Restarting."""

    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.suspend=true")
        await c.edit("resources={requests: {cpu: 250m, memory: 1Gi}}")
        assert c.status()["phase"] == "Suspended" and reasons(c) == ["Created", "Suspended"]
        await c.edit("runPolicy.suspend=false")
        assert c.attempt(2) is not None and c.status()["phase"] == "Pending"
        said = [m for _, r, m in c.events if r == "SpecChanged"]
        assert said == [
            "attempt 1 had started no pod when the spec was edited (generation 3): attempt 2 starts with the edit"
        ]
        await c.edit("training.maxSteps=500")  # no pod has run yet: still nothing to restart
        assert c.attempt(3) is not None and c.status()["phase"] == "Pending"

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


def test_an_edit_of_a_finished_job_says_it_changes_nothing_and_how_to_train_again():
    """A raised maxSteps on a Succeeded job: before, observedGeneration moved and nothing else, as if taken."""

    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        await c.complete(1, {"step": 300})
        c.events.clear()
        generation = c.job()["metadata"]["generation"] + 1
        await c.edit("training.maxSteps=600")
        assert c.status()["phase"] == "Succeeded" and c.attempt(2) is None
        assert c.events == [
            (
                "Warning",
                "NotApplied",
                f"the job is Succeeded, which is final: the edit of generation {generation} changes nothing but "
                "storage.retain and runPolicy.ttlSecondsAfterFinished; to train again, keep its volume "
                "(storage.retain: true), delete it, and apply it "
                f"again with storage.existingClaim {NAME}-checkpoints: it resumes from there",
            )
        ]
        await c.settle()
        assert len(c.events) == 1  # once per edit

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


def gauge() -> dict[str, float]:
    return {
        s.labels["phase"]: s.value
        for family in metrics.registry.collect()
        if family.name == "codex_operator_jobs"
        for s in family.samples
    }


def test_the_jobs_by_phase_gauge_follows_each_job_to_its_end():
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


def test_the_jobs_by_phase_gauge_counts_the_jobs_stuck_behind_a_taken_name_or_a_refusal():
    """The jobs a dashboard is for: Pending behind a name left by someone else (a new-user check: the gauge said 0
    with such a job), and Restarting when the next attempt is refused."""

    async def test(c: Cluster) -> None:
        metrics.set_phase(NS, NAME, None)
        before = gauge()
        c.api.put("configmaps", {"metadata": {"name": f"{NAME}-a1-config", "namespace": NS}, "data": {}})
        await c.apply("runPolicy.backoffLimit=3")
        assert c.status()["phase"] == "Pending" and "exists and is not this job's" in c.status()["message"]
        assert gauge()["Pending"] == before["Pending"] + 1
        assert c.status()["restarts"] == 0  # kubectl get ctj's RESTARTS column: 0, not empty
        c.api.delete("configmaps", NS, f"{NAME}-a1-config")
        await c.retry()
        await c.run(1)
        assert gauge()["Running"] == before["Running"] + 1 and gauge()["Pending"] == before["Pending"]
        c.api.refuse("POST", "jobs", 403, "exceeded quota: jobs, requested: count/jobs.batch=1", times=1)
        c.pod(1, 0, exit_code=1)
        await c.fail(1, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        assert c.status()["phase"] == "Restarting" and "exceeded quota" in c.status()["message"]
        assert gauge()["Restarting"] == before["Restarting"] + 1 and gauge()["Running"] == before["Running"]

    scenario(test)
