"""The controller against the fake API server (controller_harness.py): retries are bounded and honest, and
Kueue is never fought (suspend, admission, preemption as Kueue's Workloads say)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from controller_harness import NAME, NS, Cluster, manifest, reasons, scenario

from codex_operator import names
from codex_trainer import contract

# ---------------------------------------------------------------- 5. retries are bounded and honest

# a resume where no checkpoint was reported before (the Events name none)
NO_CHECKPOINT_SAID = "from the newest checkpoint on its volume, if one was written (none was reported)"


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


def test_a_crash_waits_out_its_pause_then_the_next_attempt_starts_on_time():
    """Two crashes in a row: each is said once, with when the next attempt starts; nothing is created
    before then (events and timer rounds meanwhile change nothing), and the second pause is twice the
    first. Before, a crash started the next attempt at once: an outage of a minute spent backoffLimit."""

    async def test(c: Cluster) -> None:
        c.op.queue.start(2)  # the reconciles' workers, as on the cluster: the pause's end is queued there
        await c.apply("runPolicy.backoffLimit=2")
        for n, pause in ((1, 1), (2, 2)):
            await c.run(n)
            ended = datetime.now(UTC)
            c.pod(n, 0, exit_code=1, message="ConnectionError: tracking server down", finished="")
            await c.fail(n)
            st = c.status()
            assert (st["phase"], st["attempt"], st["crashes"]) == ("Restarting", n, n), st
            due = datetime.fromisoformat(st["nextAttemptAt"])
            assert pause <= (due - ended).total_seconds() <= pause + 1.5, (due, ended)
            assert f"retry {n} of runPolicy.backoffLimit 2: attempt {n + 1} starts at" in st["message"]
            await c.retry()  # a timer round, and a reconcile of every job, before it is due
            assert c.attempt(n + 1) is None and c.status()["crashes"] == n
            await asyncio.sleep((due - datetime.now(UTC)).total_seconds() + 0.3)  # no timer round: on time
            await c.settle()
            assert c.attempt(n + 1) is not None and c.status()["attempt"] == n + 1
            assert "nextAttemptAt" not in c.status() and c.status()["crashes"] == n
        assert reasons(c).count("Retrying") == 2
        c.op.queue.stop()

    scenario(test, crash_pause=1)


def test_a_pause_an_earlier_operator_process_began_ends_on_time_too():
    """The operator restarted during a pause (a new leader, an upgrade): the new process sees the pause in the
    status and starts the next attempt when it is due, not at its timer's next round (up to an interval late)."""
    import copy

    from codex_operator.handlers import Operator

    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        c.pod(1, 0, exit_code=1, message="ConnectionError: tracking server down", finished="")
        await c.fail(1)
        due = datetime.fromisoformat(c.status()["nextAttemptAt"])
        old = c.op
        c.op = Operator(old.options, old.kube, post_event=lambda body, kind, reason, message: None)
        c.op.queue.start(2)
        c.api.drain()  # the new process lists what there is
        found = sorted(c.api.objects.values(), key=lambda o: o["kind"] == names.KIND)  # the job last
        for obj in found:
            on = c.op.on_job_event if obj["kind"] == names.KIND else c.op.on_child_event
            await on("ADDED", copy.deepcopy(obj))
        await c.settle()
        assert c.attempt(2) is None
        await asyncio.sleep((due - datetime.now(UTC)).total_seconds() + 0.3)  # no timer round
        await c.settle()
        assert c.attempt(2) is not None and c.status()["attempt"] == 2
        c.op.queue.stop()

    scenario(test, crash_pause=1)


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
        from codex_operator.bodies import job_or_problem

        parsed = job_or_problem(job)
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


def test_a_deadline_added_to_a_running_job_ends_it_when_it_passes_with_no_other_event():
    """Its attempt Job was made with no deadline: the timer finds the job's passed and its reconcile stops the
    attempt; before, the job trained on for good, its new deadline never applied."""

    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        started = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=40)
        job = c.api.get(names.PLURAL, NS, NAME)
        assert job is not None
        job["status"]["startTime"] = started.strftime("%Y-%m-%dT%H:%M:%SZ")  # the job has run 40 to 41 s
        c.api.put(names.PLURAL, job)
        await c.edit("runPolicy.activeDeadlineSeconds=45")  # 4 s left or more: its reconcile lets it run on
        assert c.status()["phase"] == "Running" and c.attempt(1) is not None
        await asyncio.sleep(max(0.0, (started + timedelta(seconds=45.2) - datetime.now(UTC)).total_seconds()))
        # it passed, and nothing else happened
        await c.settle()
        assert c.status()["phase"] == "Running"
        await c.retry()  # the timer's next round
        st = c.status()
        assert (st["phase"], st["message"]) == ("Failed", "runPolicy.activeDeadlineSeconds reached")
        assert c.attempt(1) is None  # stopped: its pods get their grace period, and no node is kept
        assert reasons(c)[-1] == "DeadlineExceeded"

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
        assert resumed == [f"attempt 1 running again: {NO_CHECKPOINT_SAID}"], c.events
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
        assert [m for _, r, m in c.events if r == "Resumed"] == [f"attempt 2 running: {NO_CHECKPOINT_SAID}"]
        workload(c, 2, Evicted=("True", EVICTED, "Preempted"))
        await set_suspend(c, 2, True)
        assert c.status()["phase"] == "Suspended" and c.status()["preemptions"] == 2
        c.events.clear()
        await set_suspend(c, 2, False)
        assert c.status()["phase"] == "Pending" and not [e for e in c.events if e[0] == "Warning"], c.events
        await c.run(2)
        assert [m for _, r, m in c.events if r == "Resumed"] == [f"attempt 2 running again: {NO_CHECKPOINT_SAID}"]

    scenario(test, crash_pause=0)
