"""The operator's timer against the fake API server (controller_harness.py): rank 0's
progress, stalls and the stall clock, and how often a waiting job and a silent rank 0 are looked at."""

from __future__ import annotations

import copy
import dataclasses
import time
from datetime import UTC, datetime, timedelta

import pytest
from controller_harness import KEY, NAME, NS, Cluster, manifest, reasons, scenario

from codex_operator import metrics, names
from codex_trainer import contract


def test_a_replaced_rank_0_pod_starts_the_stall_clock_again():
    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.progressDeadlineSeconds=60")
        await c.run(1)
        rank0_at(c, 1, 40)
        await c.retry()
        quiet_for(c, 59)
        c.api.delete("pods", NS, f"{NAME}-a1-0-x")  # replaced in the same attempt: it loads its model again
        rank0_at(c, 1, 40)
        await c.run(1)  # the Job controller counts the replaced pod in the Job's status
        await c.retry()
        quiet_for(c, 30)
        await c.retry()
        assert c.status()["phase"] == "Running" and c.attempt(1) is not None

    scenario(test)


def test_a_trainer_frozen_before_an_operator_restart_is_still_found_stalled(monkeypatch):
    """The stall clock started at the first reading; a new operator process (an upgrade) never gets one from
    a frozen trainer, and the job ran on for good. It starts the clock at the status's last reading, or at
    the process's start where that is later (it may have been away longer than the deadline)."""
    from codex_operator import timer

    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.progressDeadlineSeconds=60")
        await c.run(1)
        rank0_at(c, 1, 40)
        await c.retry()
        assert c.status()["progress"]["step"] == 40
        c.api.metrics_text.clear()  # frozen: rank 0 answers nothing more
        job = c.job()
        long_ago = datetime.now(UTC) - timedelta(seconds=120)
        for cond in job["status"]["conditions"]:
            if cond["type"] == "Running":
                cond["lastTransitionTime"] = long_ago.strftime("%Y-%m-%dT%H:%M:%SZ")
        read = datetime.now(UTC) - timedelta(seconds=61)
        job["status"]["progress"]["updatedAt"] = read.strftime("%Y-%m-%dT%H:%M:%SZ")
        c.api.put(names.PLURAL, job)
        c.op.jobs.clear()  # a new operator process: it has read nothing of the attempt
        monkeypatch.setattr(timer, "STARTED", datetime.now(UTC) - timedelta(seconds=30))
        await c.settle()
        await c.retry()  # its first read of rank 0 gets no answer
        await c.retry()
        assert c.status()["phase"] == "Running"  # 30 s since it started: the trainer may answer yet
        monkeypatch.setattr(timer, "STARTED", datetime.now(UTC) - timedelta(seconds=61))
        c.op.jobs[KEY].moved = None  # (as if it had started 61 s ago)
        await c.retry()
        st = c.status()
        assert st["phase"] == "Restarting" and st["attempt"] == 2 and c.attempt(1) is None, st
        stalled = next(x for x in st["conditions"] if x["type"] == "Stalled")
        assert "its last step, 40, was read at" in stalled["message"]

    scenario(test)


def test_a_healthy_trainer_read_in_the_round_its_status_clock_ran_out_is_not_restarted(monkeypatch):
    """An operator away for longer than the deadline, and its first read of rank 0 failed once: the clock from
    the status says stalled, but the same round's read shows the step moved. Nothing is restarted."""
    from codex_operator import timer

    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.progressDeadlineSeconds=60")
        await c.run(1)
        rank0_at(c, 1, 40)
        await c.retry()
        saved = dict(c.api.metrics_text)
        c.api.metrics_text.clear()  # one read that fails (a timeout, a 5xx through the proxy)
        job = c.job()
        long_ago = (datetime.now(UTC) - timedelta(seconds=300)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for cond in job["status"]["conditions"]:
            if cond["type"] == "Running":
                cond["lastTransitionTime"] = long_ago
        job["status"]["progress"]["updatedAt"] = long_ago
        c.api.put(names.PLURAL, job)
        c.op.jobs.clear()
        monkeypatch.setattr(timer, "STARTED", datetime.now(UTC) - timedelta(seconds=120))
        await c.settle()
        await c.retry()
        c.api.metrics_text.update(saved)
        rank0_at(c, 1, 45)  # it answers, and has moved on
        await c.retry()
        assert c.status()["phase"] == "Running" and c.attempt(2) is None and c.status()["progress"]["step"] == 45

    scenario(test)


def rank0_at(c: Cluster, n: int, step: int) -> None:
    """Rank 0 of attempt `n` serves its step (out of 300) and its newest checkpoint (every 10 steps)."""
    pod = c.pod(n, 0)
    c.api.metrics_text[pod["metadata"]["name"]] = "".join(
        f"{metric} {value}\n"
        for metric, value in [
            (contract.METRIC_STEP, step),
            (contract.METRIC_TOTAL_STEPS, 300),
            (contract.METRIC_CHECKPOINT_STEP, step // 10 * 10),
        ]
    )
    c.op.jobs[KEY].body = c.job()


def quiet_for(c: Cluster, seconds: float) -> None:
    """As if the operator read the running attempt's current step `seconds` ago."""
    st = c.op.jobs[KEY]
    assert st.moved is not None
    st.moved = dataclasses.replace(st.moved, since=st.moved.since - timedelta(seconds=seconds))


def test_a_stalled_attempt_is_stopped_and_the_job_restarts_from_its_checkpoint_counted_as_a_crash():
    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.progressDeadlineSeconds=60", "runPolicy.backoffLimit=1")
        await c.run(1)
        rank0_at(c, 1, 40)
        await c.retry()
        assert c.status()["progress"]["step"] == 40
        quiet_for(c, 30)
        await c.retry()
        assert c.attempt(1) is not None and c.status()["phase"] == "Running"  # not yet: 30 s < 60 s
        rank0_at(c, 1, 41)  # the step moved: the clock starts again
        await c.retry()
        quiet_for(c, 59)
        await c.retry()
        assert c.status()["phase"] == "Running"
        quiet_for(c, 2)
        await c.retry()

        st = c.status()
        assert c.attempt(1) is None and c.attempt(2) is not None  # stopped; the next resumes from the volume
        assert st["phase"] == "Restarting" and st["crashes"] == 1 and st["attempt"] == 2
        stalled = next(x for x in st["conditions"] if x["type"] == "Stalled")
        assert stalled["status"] == "True" and stalled["reason"] == "Stalled"
        assert (
            "no step for 61 s (runPolicy.progressDeadlineSeconds 60); its last step, 41, was read at"
            in (stalled["message"])
        )
        warnings = [m for k, r, m in c.events if (k, r) == ("Warning", "Stalled")]
        assert len(warnings) == 1 and "its last step, 41" in warnings[0] and "step 40 or later" in warnings[0]

        await c.run(2)  # attempt 2 runs: not stalled any more
        st = c.status()
        assert st["phase"] == "Running"
        assert next(x for x in st["conditions"] if x["type"] == "Stalled")["status"] == "False"
        rank0_at(c, 2, 45)
        await c.retry()
        quiet_for(c, 61)
        await c.retry()  # a second stall is one crash more than backoffLimit 1: Failed, its attempt stopped
        st = c.status()
        assert st["phase"] == "Failed" and "runPolicy.backoffLimit 1 reached" in st["message"]
        assert c.attempt(2) is None and c.attempt(3) is None
        assert next(x for x in st["conditions"] if x["type"] == "Stalled")["status"] == "True"

    scenario(test)


def test_a_trainer_whose_metrics_never_answer_is_caught_as_stalled():
    """A frozen trainer's /metrics accepts the connection and never answers: the tick's timeout (5 s) ends
    each read, and the stall is found all the same."""

    async def test(c: Cluster) -> None:
        await c.apply("runPolicy.progressDeadlineSeconds=60")
        await c.run(1)
        rank0_at(c, 1, 40)
        await c.retry()
        c.api.frozen.add(f"{NAME}-a1-0-x")
        quiet_for(c, 61)
        await c.retry()
        assert c.attempt(1) is None and c.status()["phase"] == "Restarting" and c.status()["crashes"] == 1
        c.api.frozen.clear()

    scenario(test, progress_interval=0.1)


def test_without_a_deadline_a_quiet_job_never_stalls_and_the_clock_stops_while_suspended():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        rank0_at(c, 1, 40)
        await c.retry()
        quiet_for(c, 10**6)
        await c.retry()
        assert c.status()["phase"] == "Running" and c.attempt(1) is not None

    scenario(test)

    async def suspended(c: Cluster) -> None:
        await c.apply("runPolicy.progressDeadlineSeconds=60")
        await c.run(1)
        rank0_at(c, 1, 40)
        await c.retry()
        await c.edit("runPolicy.suspend=true")
        await c.retry()  # suspended: the clock is dropped
        assert c.op.jobs[KEY].moved is None
        await c.edit("runPolicy.suspend=false")
        await c.run(1)
        await c.retry()  # running again, before its first reading: a model download is not a stall
        assert c.status()["phase"] == "Running" and c.attempt(1) is not None

    scenario(suspended)


# ---------------------------------------------------------------- 7. what a job's pod serves cannot hurt the operator


def test_progress_is_read_from_rank_0_and_an_oversized_page_is_refused():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        pod = c.pod(1, 0)
        page = "\n".join(
            f"{metric} {value}"
            for metric, value in [
                (contract.METRIC_STEP, 40),
                (contract.METRIC_TOTAL_STEPS, 300),
                (contract.METRIC_LOSS, 1.25),
                (contract.METRIC_CHECKPOINT_STEP, 40),
            ]
        )
        c.api.metrics_text[pod["metadata"]["name"]] = page + "\n"
        c.op.jobs[KEY].body = c.job()
        await c.retry()
        st = c.status()
        assert st["progress"]["step"] == 40 and st["progress"]["loss"] == 1.25 and st["checkpoint"]["step"] == 40
        c.api.metrics_text[pod["metadata"]["name"]] = f"{contract.METRIC_STEP} 41\n" + "# padding\n" * 200_000
        c.op.jobs[KEY].body = c.job()
        await c.retry()
        assert c.status()["progress"]["step"] == 40  # more than 1 MiB: not read, and nothing broke

    scenario(test)


def test_why_a_job_waits_is_looked_at_after_30_s_then_less_and_less_often():
    from codex_operator.handlers import JobState

    st = JobState()
    looks = [t for t in range(0, 1000, 5) if st.explain_due(float(t))]
    assert looks == [30, 90, 210, 450, 750]  # the first look after 30 s of waiting, then doubling up to 5 min
    st.stop_explaining()  # it ran; a later wait (a restart) starts at 30 s again
    assert [t for t in range(1000, 1100, 5) if st.explain_due(float(t))] == [1030, 1090]
    st.stop_explaining()  # a queue's words are looked at as soon as the job waits in it, then alike
    assert [t for t in range(2000, 2100, 5) if st.explain_due(float(t), at_once=True)] == [2000, 2030, 2090]


def test_why_a_pod_waits_comes_from_the_pods_watch_and_not_from_a_pod_of_an_earlier_job_of_that_name():
    async def test(c: Cluster) -> None:
        await c.apply()
        pod = c.pod(1, 0)
        pod["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                         "reason": "Unschedulable", "message": "0/3 nodes have enough memory"}]}  # fmt: skip
        c.api.put("pods", pod)
        earlier = copy.deepcopy(pod)  # the same attempt name, a Job deleted before: its pod still terminating
        earlier["metadata"] |= {"name": f"{NAME}-a1-0-a", "uid": "earlier", "ownerReferences": [{"uid": "gone"}]}
        pulling = {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}
        earlier["status"] = {"phase": "Pending", "containerStatuses": [{"name": names.CONTAINER, "state": pulling}]}
        c.api.put("pods", earlier)
        lists = c.api_calls("list", "Pod")
        await c.retry()
        said = f"attempt 1 waiting: pod {NAME}-a1-0-x cannot be scheduled: 0/3 nodes have enough memory"
        assert c.status()["message"] == said and c.api_calls("list", "Pod") == lists  # from the watch, no LIST
        assert ("Warning", "Waiting", said) in c.events  # for `kubectl describe ctj`, once
        await c.retry()
        assert c.events.count(("Warning", "Waiting", said)) == 1
        pod["status"]["conditions"][0]["message"] = "0/4 nodes have enough memory"  # a node more: the same wait
        c.api.put("pods", pod)
        await c.retry()
        assert c.status()["message"].endswith("0/4 nodes have enough memory")
        assert [r for r in reasons(c) if r == "Waiting"] == ["Waiting"]

    scenario(test)


def test_a_rank_0_that_does_not_answer_is_read_less_often_until_it_does():
    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        c.pod(1, 0)  # running, its /metrics not up yet (a model still loading)
        await c.settle()  # the pods' watch shows it
        reads = lambda: c.api_calls("get", "pods/proxy")  # noqa: E731
        before = reads()
        await c.op.tick_once()
        await c.op.tick_once()  # at once again: the failed read backs off
        assert reads() == before + 1
        st = c.op.jobs[KEY]
        assert st.unread_until - time.monotonic() == pytest.approx(c.op.options.progress_interval, abs=1)
        st.unread_until = 0.0
        await c.op.tick_once()
        assert reads() == before + 2 and st.unread_until - time.monotonic() > 1.5 * c.op.options.progress_interval
        rank0_at(c, 1, 40)
        st.unread_until = 0.0
        await c.op.tick_once()
        await c.settle()
        assert c.status()["progress"]["step"] == 40 and st.unread == 0
        await c.op.tick_once()
        assert reads() == before + 4  # answering: read every round again

    scenario(test)


def test_progress_writes_keep_to_their_budget_and_reach_every_job_in_turn():
    """Each progress write is a CodexTrainingJob update, which costs the API server 2.5 times a
    ConfigMap's (benchmarks/README.md): with a thousand jobs one write per job per interval would take
    about a core of it. The operator writes at most `progress_writes_per_second` of them; the jobs whose progress
    has waited longest go first, so every job's status moves, only less often."""
    jobs, budget = 12, 4  # the budget: 2 writes a second × a 2 s interval = 4 a round

    async def test(c: Cluster) -> None:
        names_ = [f"job-{i:02d}" for i in range(jobs)]
        for name in names_:
            c.api.put(names.PLURAL, manifest(name=name))
        await c.settle()
        for name in names_:
            attempt = c.api.get("jobs", NS, f"{name}-a1")
            attempt["status"] = {"ready": 1, "active": 1}
            c.api.put("jobs", attempt)
        await c.settle()
        assert {c.api.get(names.PLURAL, NS, n)["status"]["phase"] for n in names_} == {"Running"}

        def shown() -> dict[str, int]:
            return {n: ((c.api.get(names.PLURAL, NS, n).get("status") or {}).get("progress") or {}).get("step", 0)
                    for n in names_}  # fmt: skip

        for round_, step in enumerate((10, 20, 30, 40), start=1):
            for name in names_:
                serve_step(c, name, step)  # every trainer moved since the last round
            before = shown()
            await c.retry()
            after = shown()
            written = [n for n in names_ if after[n] != before[n]]
            assert len(written) == budget, (round_, written)
            assert all(after[n] == step for n in written)  # what a write shows is the newest reading
            if round_ == jobs // budget:
                assert all(after.values()), after  # every job's progress shown within jobs/budget rounds
        # the fourth round goes to the ones written longest ago: the first round's
        assert [n for n in names_ if after[n] == 40] == names_[:budget]
        deferred = sum(
            s.value for f in metrics.registry.collect() if f.name == "codex_operator_progress_writes_deferred"
            for s in f.samples if s.name.endswith("_total")
        )  # fmt: skip
        assert deferred >= 4 * (jobs - budget)

    scenario(test, progress_interval=2.0, progress_writes_per_second=2.0)


def serve_step(c: Cluster, name: str, step: int) -> None:
    """Rank 0 of `name`'s first attempt runs and serves `step` of 300 (the pod made on first use)."""
    job = c.api.get("jobs", NS, f"{name}-a1")
    pod = f"{name}-a1-0-x"
    if c.api.get("pods", NS, pod) is None:
        labels = {
            "batch.kubernetes.io/job-name": f"{name}-a1",
            "batch.kubernetes.io/job-completion-index": "0",
            names.LABEL_JOB: name,
        }
        owner = [{"kind": "Job", "name": f"{name}-a1", "uid": job["metadata"]["uid"]}]
        c.api.put("pods", {
            "metadata": {"name": pod, "namespace": NS, "labels": labels, "ownerReferences": owner},
            "status": {"phase": "Running", "containerStatuses": [{"name": names.CONTAINER, "state": {"running": {}}}]},
        })  # fmt: skip
    c.api.metrics_text[pod] = f"{contract.METRIC_STEP} {step}\n{contract.METRIC_TOTAL_STEPS} 300\n"


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "many"])
def test_a_write_budget_that_is_not_a_finite_number_of_zero_or_more_is_refused_at_the_start(value, capsys):
    from codex_operator import cli

    with pytest.raises(SystemExit):
        cli._parser().parse_args(["run", "--progress-writes-per-second", value])
    assert "--progress-writes-per-second" in capsys.readouterr().err


async def stall_with(c: Cluster, limit: str, method: str, code: int, said: str, times: int | None = 1) -> None:
    """Attempt 1 reads step 40, then makes no step for 61 s (the deadline 60 s) while the API server refuses
    the next `method` on Jobs: the stall is acted on."""
    await c.apply("runPolicy.progressDeadlineSeconds=60", limit)
    await c.run(1)
    rank0_at(c, 1, 40)
    await c.retry()
    c.api.refuse(method, "jobs", code, said, times=times)
    quiet_for(c, 61)
    await c.retry()


def test_a_stall_restart_cut_short_by_a_refused_create_finishes_without_counting_a_disruption():
    """The stalled attempt is deleted, then the next one's create is refused: the job must not read that as
    its attempt deleted by someone else (maxDisruptions 0 would fail it)."""

    async def test(c: Cluster) -> None:
        await stall_with(c, "runPolicy.maxDisruptions=0", "POST", 403, "exceeded quota: count/jobs.batch, requested: 1")
        assert any(r == "Refused" and "refused creating Job tiny-cpu-a2 (HTTP 403)" in m for _, r, m in c.events)
        await c.retry()
        st = c.status()
        assert c.attempt(2) is not None
        assert st["phase"] == "Restarting" and st["attempt"] == 2 and st["crashes"] == 1
        assert "disruptions" not in st and "stoppedAttempt" not in st
        await c.run(2)
        assert c.status()["phase"] == "Running"

    scenario(test)


def test_a_stall_at_the_backoff_limit_whose_delete_is_refused_ends_failed_with_no_pod_left():
    async def test(c: Cluster) -> None:
        await stall_with(c, "runPolicy.backoffLimit=0", "DELETE", 500, "etcdserver: leader changed")
        await c.retry()
        st = c.status()
        assert st["phase"] == "Failed" and "runPolicy.backoffLimit 0 reached" in st["message"]
        assert c.attempt(1) is None

    scenario(test)


def test_a_stall_at_the_backoff_limit_whose_attempt_cannot_be_deleted_says_so():
    """Failed is written first; a delete the API server keeps refusing (no RBAC to delete Jobs) leaves the pods
    running: a Warning Event says why (not at every retry), and the delete is retried."""

    async def test(c: Cluster) -> None:
        forbidden = 'jobs.batch "tiny-cpu-a1" is forbidden: cannot delete resource'
        await stall_with(c, "runPolicy.backoffLimit=0", "DELETE", 403, forbidden, times=None)
        await c.retry()
        assert c.status()["phase"] == "Failed" and c.attempt(1) is not None
        refused = [m for k, r, m in c.events if (k, r) == ("Warning", "Refused")]
        assert refused and all("refused deleting Job tiny-cpu-a1" in m and "(HTTP 403)" in m for m in refused)
        await c.retry()
        await c.retry()
        assert len([r for r in reasons(c) if r == "Refused"]) == len(refused) <= 2  # not one per retry
        c.api.rules.clear()
        await c.retry()
        assert c.attempt(1) is None and c.status()["phase"] == "Failed"

    scenario(test)


def test_a_deleted_volume_is_made_again_with_a_warning_and_no_resumption_is_claimed():
    """Its checkpoints are gone: the pods wait on a claim that is not there until the operator makes it again,
    and from then on nothing says the next attempt resumes from the step the old volume held."""

    async def test(c: Cluster) -> None:
        await c.apply()
        await c.run(1)
        rank0_at(c, 1, 40)
        await c.retry()
        assert c.status()["checkpoint"]["step"] == 40
        claim = names.pvc_name(NAME)
        c.api.delete("persistentvolumeclaims", NS, claim)
        c.pod(1, 0, exit_code=143, disrupted=True)
        await c.fail(1, "PodFailurePolicy", "Pod has condition DisruptionTarget matching FailJob rule at index 1")
        assert c.attempt(2) is not None and c.api.get("persistentvolumeclaims", NS, claim) is None
        pod = c.pod(2, 0)
        waits = f'persistentvolumeclaim "{claim}" not found'
        unscheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": waits}
        pod["status"] = {"phase": "Pending", "conditions": [unscheduled]}
        c.api.put("pods", pod)
        await c.retry()
        await c.retry()
        st = c.status()
        assert c.api.get("persistentvolumeclaims", NS, claim) is not None
        assert "checkpoint" not in st and "progress" not in st
        lost = [m for k, r, m in c.events if (k, r) == ("Warning", "VolumeLost")]
        assert lost == [
            f"PersistentVolumeClaim {claim} was deleted and is made again, empty: the job's checkpoints are gone "
            "and its next attempt trains from step 0"
        ]
        await c.run(2)
        resumed = [m for _, r, m in c.events if r in ("Resumed", "Running")][-1]
        assert "step 40" not in resumed, resumed

    scenario(test)


def test_a_volume_no_storage_class_serves_says_why_in_the_wait_and_the_way_out():
    """A storageClassName typo: the scheduler says only 'unbound immediate PersistentVolumeClaims'; the claim's
    ProvisioningFailed Event says which class is missing. The class is immutable, so the fix is a new job."""

    async def test(c: Cluster) -> None:
        await c.apply()
        claim = c.api.get("persistentvolumeclaims", NS, names.pvc_name(NAME))
        pod = c.pod(1, 0)
        waits = "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/3 nodes"
        unscheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": waits}
        pod["status"] = {"phase": "Pending", "conditions": [unscheduled]}
        c.api.put("pods", pod)
        involved = {"kind": "PersistentVolumeClaim", "name": claim["metadata"]["name"], "uid": claim["metadata"]["uid"]}
        said = 'storageclass.storage.k8s.io "fsat" not found'
        event = {"metadata": {"name": "pvc-e", "namespace": NS}, "involvedObject": involved}
        c.api.put("events", event | {"reason": "ProvisioningFailed", "type": "Warning", "message": said})
        await c.retry()
        message = c.status()["message"]
        assert message.startswith(f"attempt 1 waiting: pod {NAME}-a1-0-x cannot be scheduled: {waits}"), message
        assert message.endswith(
            f"; volume {names.pvc_name(NAME)}: {said} (storage.storageClassName cannot change: delete the job and "
            "create it again with a class from kubectl get storageclass; no pod has run, so nothing is lost)"
        ), message

    scenario(test)


def test_the_timer_ends_a_job_past_its_deadline_but_not_a_finished_or_deleting_one():
    from codex_operator.timer import deadline_passed

    now = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
    body = {"spec": {"runPolicy": {"activeDeadlineSeconds": 60}},
            "status": {"phase": "Running", "startTime": "2026-12-05T11:58:59Z"}, "metadata": {}}  # fmt: skip
    assert deadline_passed(body, now)
    assert not deadline_passed({**body, "status": {**body["status"], "startTime": "2026-12-05T11:59:30Z"}}, now)
    assert not deadline_passed({**body, "status": {**body["status"], "phase": "Failed"}}, now)
    # being deleted (a foreground delete, a foreign finalizer): its reconcile does nothing, so not every tick
    assert not deadline_passed({**body, "metadata": {"deletionTimestamp": "2026-12-05T11:59:59Z"}}, now)
    assert not deadline_passed({**body, "spec": {}}, now) and not deadline_passed(None, now)
