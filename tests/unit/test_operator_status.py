"""The status function: every phase transition, each exit-code class, disruption vs crash, suspend,
deadline — from Job and pod objects shaped as the API server returns them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from test_operator_builders import make_job

from codex_operator.attempts import Attempt, PodFailure, attempt_from_job, final_numbers, pod_failure, waiting_reason
from codex_operator.progress import progress_changed, progress_from_metrics
from codex_operator.status import plan

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def job_obj(
    n: int, *, cond: tuple[str, str, str] | None = None, ready: int = 0, suspend: bool = False, image: str = ""
) -> dict:
    status: dict = {"ready": ready, "active": ready}
    if cond:
        ctype, reason, message = cond
        status["conditions"] = [{"type": ctype, "status": "True", "reason": reason, "message": message}]
    return {
        "metadata": {
            "name": f"tiny-cpu-a{n}",
            "labels": {"codex.ml/attempt": str(n)},
            "annotations": {"codex.ml/image": image} if image else {},
        },
        "spec": {"suspend": suspend},
        "status": status,
    }


EXIT2 = (
    "Failed",
    "PodFailurePolicy",
    "Container trainer for pod ns/p failed with exit code 2 matching FailJob rule at index 0",
)
DISRUPTED = ("Failed", "PodFailurePolicy", "Pod ns/p has condition DisruptionTarget matching FailJob rule at index 1")
CRASH = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
DEADLINE = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
COMPLETE = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")


def attempts(*objs: dict) -> list[Attempt]:
    return [attempt_from_job(o) for o in objs]


def test_a_new_job_creates_attempt_one_and_is_pending():
    p = plan(make_job(), None, [], NOW)
    assert p.create_attempt == 1
    assert p.status["phase"] == "Pending" and p.status["restarts"] == 0 and p.status["attempt"] == 1
    assert p.status["startTime"] == "2026-11-28T12:00:00Z"
    assert [e[1] for e in p.events] == ["Created"]
    (cond,) = p.status["conditions"]
    assert cond["type"] == "Created" and cond["status"] == "True" and cond["observedGeneration"] == 3


@pytest.mark.parametrize(
    ("ready", "number", "phase"),
    [(0, 1, "Pending"), (1, 1, "Running"), (0, 2, "Restarting"), (1, 2, "Running")],
)
def test_a_live_attempt_is_pending_running_or_restarting(ready, number, phase):
    p = plan(make_job(), {"phase": "Pending"}, attempts(job_obj(number, ready=ready)), NOW)
    assert p.status["phase"] == phase
    assert p.create_attempt is None


def test_a_multi_node_job_runs_only_when_every_pod_does():
    job = make_job("numNodes=2")
    assert plan(job, {}, attempts(job_obj(1, ready=1)), NOW).status["phase"] == "Pending"
    assert plan(job, {}, attempts(job_obj(1, ready=2)), NOW).status["phase"] == "Running"


def test_running_posts_one_event_and_sets_the_condition():
    p = plan(make_job(), {"phase": "Pending"}, attempts(job_obj(1, ready=1)), NOW)
    assert p.events == [("Normal", "Running", "attempt 1: 1 pod(s) running")]
    running = next(c for c in p.status["conditions"] if c["type"] == "Running")
    assert running["status"] == "True" and running["lastTransitionTime"] == "2026-11-28T12:00:00Z"
    again = plan(make_job(), p.status, attempts(job_obj(1, ready=1)), NOW + timedelta(seconds=5))
    assert again.events == [] and again.status == p.status  # nothing changed: nothing to write


def test_success_is_final_and_fills_the_progress():
    status = {"phase": "Running", "progress": {"step": 290, "totalSteps": 300, "loss": 0.5}}
    p = plan(make_job(), status, attempts(job_obj(1, cond=COMPLETE)), NOW)
    assert p.status["phase"] == "Succeeded" and p.status["completionTime"]
    assert p.status["progress"]["step"] == 300 and p.status["progress"]["percentText"] == "100%"
    later = plan(make_job(), p.status, attempts(job_obj(1, cond=CRASH)), NOW)
    assert later.status == p.status and later.create_attempt is None


def test_success_takes_the_trainers_own_last_numbers():
    read = {"step": 290, "totalSteps": 300, "loss": 0.5, "evalLoss": 0.6, "updatedAt": "2026-11-28T11:59:50Z"}
    status = {"phase": "Running", "progress": read}
    final = {"step": 300, "loss": 0.481234, "evalLoss": 0.47}
    p = plan(make_job(), status, attempts(job_obj(1, cond=COMPLETE)), NOW, final=final)
    assert p.status["progress"]["loss"] == 0.4812 and p.status["progress"]["evalLoss"] == 0.47
    assert p.status["progress"]["updatedAt"] == "2026-11-28T12:00:00Z"  # when the numbers were taken, not before
    assert p.status["progress"]["stepText"] == "300/300"
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": '{"step": 300, "loss": 0.48}'}}}
            ]
        },
    }
    assert final_numbers(pod) == {"step": 300, "loss": 0.48}


def test_exit_2_fails_at_once_with_the_trainers_message():
    pod = PodFailure("p", exit_code=2, message="codex-train: invalid spec.data.train: file not found")
    p = plan(make_job(), {"phase": "Running"}, attempts(job_obj(1, cond=EXIT2)), NOW, pod)
    assert p.status["phase"] == "Failed" and p.create_attempt is None
    assert p.status["message"] == "trainer exited 2: codex-train: invalid spec.data.train: file not found"
    assert p.events[-1][:2] == ("Warning", "InvalidJob")


def test_a_crash_is_retried_from_the_checkpoint_after_a_pause_and_counted_once():
    status = {"phase": "Running", "attempt": 1, "checkpoint": {"step": 150}}
    pod = PodFailure("p", exit_code=1, message="RuntimeError: boom")
    crashed = attempts(job_obj(1, cond=CRASH))
    p = plan(make_job(), status, crashed, NOW, pod)
    assert p.create_attempt is None and p.status["phase"] == "Restarting" and p.status["crashes"] == 1
    assert p.status["nextAttemptAt"] == "2026-11-28T12:00:10Z"
    assert p.status["message"] == (
        "attempt 1 failed: trainer exited 1: RuntimeError: boom; retry 1 of runPolicy.backoffLimit 3: attempt 2 "
        "resumes from the newest checkpoint (step 150 or later) at 2026-11-28T12:00:10Z, after a 10 s pause"
    )
    assert p.events == [("Warning", "Retrying", p.status["message"])]

    waiting = plan(make_job(), p.status, crashed, NOW + timedelta(seconds=9), pod)
    assert waiting.create_attempt is None and waiting.events == [] and waiting.status == p.status  # nothing to write

    due = plan(make_job(), p.status, crashed, NOW + timedelta(seconds=10), pod)
    assert due.create_attempt == 2 and due.status["attempt"] == 2 and due.status["restarts"] == 1
    assert due.status["crashes"] == 1 and "nextAttemptAt" not in due.status
    assert due.status["phase"] == "Restarting" and "attempt 2 resumes from the newest" in due.status["message"]
    assert due.events == []  # said when the pause began


def test_the_pause_doubles_with_each_crash_up_to_five_minutes_counted_from_when_the_trainer_ended():
    job = make_job("runPolicy.backoffLimit=20")
    ended = "2026-11-28T11:59:55Z"  # 5 s before the operator saw it
    pauses = []
    for crashes in (1, 2, 3, 6, 9):
        objs = [job_obj(n, cond=CRASH) for n in range(1, crashes + 1)]
        pod = PodFailure("p", exit_code=1, finished_at=ended)
        p = plan(job, {"phase": "Running", "attempt": crashes}, attempts(*objs), NOW, pod)
        assert p.status["crashes"] == crashes and p.create_attempt is None
        pauses.append((datetime.fromisoformat(p.status["nextAttemptAt"]) - NOW).total_seconds() + 5)
    assert pauses == [10, 20, 40, 300, 300]
    at_once = plan(job, {"phase": "Running"}, attempts(job_obj(1, cond=CRASH)), NOW, crash_pause=0)
    assert at_once.create_attempt == 2 and "nextAttemptAt" not in at_once.status


def test_a_spec_edited_since_the_crashed_attempt_was_made_starts_the_next_at_once_if_its_pods_differ():
    """The user's fix is tried now, not after the pause: the next attempt is made from the edited spec. An
    edit its pods do not see (a TTL, storage.retain) fixes nothing: the pause stays."""
    from codex_operator import builders

    made = dataclasses.replace(make_job(), generation=2)
    crashed = builders.attempt_job(made, 1, builders.Settings(), None)
    crashed["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    running = {"phase": "Running", "attempt": 1}
    fixed = dataclasses.replace(make_job("resources={limits: {memory: 8Gi}}"), generation=3)
    p = plan(fixed, running, attempts(crashed), NOW)
    assert p.create_attempt == 2 and p.status["crashes"] == 1 and p.events[-1][1] == "Retrying"
    assert "retry 1 of runPolicy.backoffLimit 3" in p.status["message"]  # said with or without a pause
    for unseen in ("runPolicy.ttlSecondsAfterFinished=60", "storage.retain=true"):
        p = plan(dataclasses.replace(make_job(unseen), generation=3), running, attempts(crashed), NOW)
        assert p.create_attempt is None and p.status["nextAttemptAt"], unseen
    held = plan(dataclasses.replace(make_job("runPolicy.suspend=true"), generation=3), running, attempts(crashed), NOW)
    assert held.create_attempt == 2  # made held: it runs nothing until resumed


def test_an_edit_during_the_pause_starts_the_next_attempt_at_once_and_says_so():
    from codex_operator import builders

    made = dataclasses.replace(make_job(), generation=2)
    crashed = builders.attempt_job(made, 1, builders.Settings(), None)
    crashed["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    paused = plan(made, {"phase": "Running", "attempt": 1}, attempts(crashed), NOW)
    assert paused.create_attempt is None and paused.status["nextAttemptAt"]
    fixed = dataclasses.replace(make_job("resources={limits: {memory: 8Gi}}"), generation=3)
    p = plan(fixed, paused.status, attempts(crashed), NOW + timedelta(seconds=4))
    assert p.create_attempt == 2 and p.status["crashes"] == 1 and "nextAttemptAt" not in p.status
    assert p.status["message"] == (
        "attempt 1 failed: its trainer pod is gone (deleted, or lost with its node); retry 1 of runPolicy.backoffLimit "
        "3; the pause is cut short (the spec was edited since attempt 1 was made: the edit is tried at once); "
        "starting attempt 2"
    )
    assert p.events == [("Warning", "Retrying", p.status["message"])]
    due = plan(made, paused.status, attempts(crashed), NOW + timedelta(seconds=10))  # no edit: said before
    assert due.create_attempt == 2 and due.events == [] and "cut short" not in due.status["message"]


def test_what_failed_is_kept_when_the_pause_ends_after_the_pod_is_gone():
    """kubectl delete pod: the pod said SIGTERM; by the end of the pause it is gone, and the message said the
    Job controller's words instead (its own backoff limit of 0, read as runPolicy.backoffLimit)."""
    pod = PodFailure("p", exit_code=143, message="stopped by SIGTERM after checkpoint at step 271")
    paused = plan(make_job(), {"phase": "Running", "attempt": 1}, attempts(job_obj(1, cond=CRASH)), NOW, pod).status
    due = plan(make_job(), paused, attempts(job_obj(1, cond=CRASH)), NOW + timedelta(seconds=10))
    assert due.create_attempt == 2
    assert due.status["message"].startswith(
        "attempt 1 failed: trainer exited 143: stopped by SIGTERM after checkpoint at step 271; retry 1 of "
    ), due.status["message"]
    gone = plan(make_job(), {"phase": "Running", "attempt": 1}, attempts(job_obj(1, cond=CRASH)), NOW)
    assert "its trainer pod is gone (deleted, or lost with its node)" in gone.status["message"]
    assert "backoff limit" not in gone.status["message"]


def test_a_sigkill_that_is_not_the_oom_killer_is_not_blamed_on_the_last_log_line():
    log_line = '{"time": 1.0, "event": "checkpoint", "step": 280}'
    pod = PodFailure("p", exit_code=137, reason="Error", message=log_line)
    p = plan(make_job(), {"phase": "Running"}, attempts(job_obj(1, cond=CRASH)), NOW, pod)
    assert p.status["message"].startswith(
        "attempt 1 failed: trainer was killed (SIGKILL, exited 137), not for its memory limit; its last "
        f"log line: {log_line}; retry 1 of"
    ), p.status["message"]


def test_the_crashed_attempts_job_deleted_during_the_pause_counts_nothing_more_and_the_pause_goes_on():
    """A TTL a cluster policy puts on Jobs, or a kubectl delete: the crash was counted when the pause began."""
    job = make_job("runPolicy.maxDisruptions=0")
    paused = plan(job, {"phase": "Running", "attempt": 1}, attempts(job_obj(1, cond=CRASH)), NOW).status
    gone = plan(job, paused, [], NOW + timedelta(seconds=5))
    assert gone.status == paused and gone.events == [] and gone.create_attempt is None
    due = plan(job, paused, [], NOW + timedelta(seconds=10))
    assert due.create_attempt == 2 and due.events == [] and "nextAttemptAt" not in due.status
    assert due.status["message"].startswith(
        "attempt 1 failed: its trainer pod is gone (deleted, or lost with its node) (its Job deleted since); "
        "retry 1 of runPolicy.backoffLimit 3; starting attempt 2"
    ), due.status["message"]
    assert (due.status["crashes"], due.status.get("disruptions")) == (1, None)


def test_a_deadline_lowered_under_a_pause_whose_job_was_deleted_fails_the_job_then():
    paused = plan(make_job(), {"phase": "Running", "attempt": 1, "startTime": "2026-11-28T11:59:00Z"},
                  attempts(job_obj(1, cond=CRASH)), NOW).status  # fmt: skip
    lowered = make_job("runPolicy.activeDeadlineSeconds=65")  # ends at 12:00:05, the pause at 12:00:10
    p = plan(lowered, paused, [], NOW + timedelta(seconds=2))
    assert p.status["phase"] == "Failed" and p.create_attempt is None and "nextAttemptAt" not in p.status
    assert p.status["message"] == (
        "attempt 1 failed: its trainer pod is gone (deleted, or lost with its node) (its Job deleted since), but "
        "runPolicy.activeDeadlineSeconds is reached at 2026-11-28T12:00:05Z, before attempt 2 could start at "
        "2026-11-28T12:00:10Z"
    )
    assert (p.status["crashes"], p.status.get("disruptions")) == (1, None)


def test_a_pause_left_in_the_status_is_not_taken_for_a_later_attempts():
    """The status write after the pause's attempt was made did not get through: attempt 2 runs with attempt 1's
    nextAttemptAt still there. It is dropped, and attempt 2's own crash is counted and paused for."""
    paused = plan(make_job(), {"phase": "Running", "attempt": 1}, attempts(job_obj(1, cond=CRASH)), NOW).status
    two = attempts(job_obj(1, cond=CRASH), job_obj(2, ready=1))
    running = plan(make_job(), paused, two, NOW + timedelta(seconds=20))
    assert running.status["phase"] == "Running" and "nextAttemptAt" not in running.status
    crashed = attempts(job_obj(1, cond=CRASH), job_obj(2, cond=CRASH))
    again = plan(make_job(), paused, crashed, NOW + timedelta(seconds=30))
    assert again.status["crashes"] == 2 and again.create_attempt is None and again.events[-1][1] == "Retrying"
    assert again.status["nextAttemptAt"] == "2026-11-28T12:00:50Z"


def test_the_deadline_passing_during_a_pause_fails_the_job():
    job = make_job("runPolicy.activeDeadlineSeconds=60")
    status = {"phase": "Running", "attempt": 1, "startTime": "2026-11-28T11:59:30Z"}
    p = plan(job, status, attempts(job_obj(1, cond=CRASH)), NOW)
    assert p.status["phase"] == "Restarting" and p.status["nextAttemptAt"]
    late = plan(job, p.status, attempts(job_obj(1, cond=CRASH)), NOW + timedelta(seconds=40))
    assert late.status["phase"] == "Failed" and "activeDeadlineSeconds" in late.status["message"]
    assert late.create_attempt is None and "nextAttemptAt" not in late.status


def test_a_pause_that_would_end_past_the_deadline_fails_the_job_now_and_says_why():
    """Not a Retrying Event naming a start time the deadline never lets come."""
    job = make_job("runPolicy.activeDeadlineSeconds=60", "runPolicy.backoffLimit=5")
    status = {"phase": "Running", "attempt": 2, "crashes": 1, "startTime": "2026-11-28T11:59:15Z"}
    now = NOW + timedelta(microseconds=500_000)  # 14.5 s left: the deadline said as it is, not rounded down
    p = plan(job, status, attempts(job_obj(1, cond=CRASH), job_obj(2, cond=CRASH)), now)  # a 20 s pause
    assert p.status["phase"] == "Failed" and p.create_attempt is None
    assert p.status["message"] == (
        "attempt 2 failed: its trainer pod is gone (deleted, or lost with its node); retry 2 of runPolicy.backoffLimit "
        "5, but runPolicy.activeDeadlineSeconds is reached at 2026-11-28T12:00:15Z, before attempt 3 could start "
        "after a 20 s pause"
    )
    assert "nextAttemptAt" not in p.status and p.status["completionTime"].startswith("2026-11-28T12:00:00")
    assert [e[1] for e in p.events] == ["DeadlineExceeded"]


def test_an_oom_kill_says_so():
    pod = PodFailure("p", exit_code=137, reason="OOMKilled")
    p = plan(make_job(), {"phase": "Running"}, attempts(job_obj(1, cond=CRASH)), NOW, pod)
    assert "more memory than its limit" in p.status["message"] and p.status["nextAttemptAt"]


def test_crashes_stop_after_the_backoff_limit_but_disruptions_do_not_count():
    job = make_job("runPolicy.backoffLimit=1")
    two_crashes = attempts(job_obj(1, cond=CRASH), job_obj(2, cond=CRASH))
    p = plan(job, {"phase": "Running"}, two_crashes, NOW)
    assert p.status["phase"] == "Failed" and p.create_attempt is None
    assert "backoffLimit 1 reached" in p.status["message"]

    disrupted = attempts(job_obj(1, cond=CRASH), job_obj(2, cond=DISRUPTED), job_obj(3, cond=DISRUPTED))
    p = plan(job, {"phase": "Running"}, disrupted, NOW)
    assert p.create_attempt == 4 and p.status["restarts"] == 3
    assert "not counted against backoffLimit" in p.status["message"]
    assert p.events[-1][1] == "Disrupted"


def test_a_job_that_stops_running_shows_no_eta():
    """Suspended or restarting, nothing runs: the ETA of the last reading is not shown (it was frozen there)."""
    job = make_job()
    running = {"phase": "Running", "attempt": 1, "progress": {"step": 40, "totalSteps": 300, "eta": "4m"}}
    p = plan(job, running, attempts(job_obj(1, cond=CRASH)), NOW)
    assert p.status["phase"] == "Restarting" and "eta" not in p.status["progress"], p.status


def test_a_deadline_fails_the_job():
    job = make_job("runPolicy.activeDeadlineSeconds=60")
    started = {"phase": "Running", "startTime": "2026-11-28T11:58:55Z"}  # its 60 s ran out 5 s ago
    started["progress"] = {"step": 40, "totalSteps": 300, "eta": "4s"}
    p = plan(job, started, attempts(job_obj(1, cond=DEADLINE)), NOW)
    assert p.status["phase"] == "Failed" and "activeDeadlineSeconds" in p.status["message"]
    assert p.status["progress"] == {"step": 40, "totalSteps": 300}  # no ETA for what will not run
    job = make_job("runPolicy.activeDeadlineSeconds=60")
    started = {"phase": "Running", "startTime": "2026-11-28T11:58:00Z"}
    p = plan(job, started, attempts(job_obj(1, cond=CRASH)), NOW)  # no time left for a retry
    assert p.status["phase"] == "Failed" and p.create_attempt is None


def test_a_deadline_added_or_lowered_while_an_attempt_is_live_stops_it_when_it_passes():
    """The attempt Job carries the time left when it was made (none, without a deadline then): a deadline an edit
    adds or lowers, or one that passed while the job was suspended or queued, is the operator's to keep: the
    live attempt is stopped and the job fails as at its own deadline (found by a new-user check: the job ran
    6 minutes past an activeDeadlineSeconds of 25 added while it ran, with no word)."""
    started = {"phase": "Running", "attempt": 1, "startTime": "2026-11-28T11:59:00Z", "ranAttempt": 1}
    running = attempts(job_obj(1, ready=1))
    p = plan(make_job("runPolicy.activeDeadlineSeconds=25"), started, running, NOW)
    assert (p.status["phase"], p.reason) == ("Failed", "DeadlineExceeded")
    assert p.status["message"] == "runPolicy.activeDeadlineSeconds reached" and p.status["completionTime"]
    assert p.stop_attempt is not None and p.stop_attempt.number == 1 and p.create_attempt is None
    assert [e[:2] for e in p.events] == [("Warning", "DeadlineExceeded")]
    # time left: the attempt goes on
    p = plan(make_job("runPolicy.activeDeadlineSeconds=3600"), started, running, NOW)
    assert p.status["phase"] == "Running" and p.stop_attempt is None
    # created suspended, its deadline passed before it was resumed: not started only to be stopped
    held = {"phase": "Suspended", "attempt": 1, "startTime": "2026-11-28T11:59:00Z"}
    p = plan(make_job("runPolicy.activeDeadlineSeconds=40"), held, attempts(job_obj(1, suspend=True)), NOW)
    assert (p.status["phase"], p.reason) == ("Failed", "DeadlineExceeded") and p.set_suspend is None
    assert p.stop_attempt is not None
    # waiting for a queue's admission: the same (its quota is handed back)
    queued = make_job("runPolicy.queueName=q", "runPolicy.activeDeadlineSeconds=40")
    p = plan(queued, {**held, "phase": "Pending"}, attempts(job_obj(1, suspend=True)), NOW)
    assert (p.status["phase"], p.reason) == ("Failed", "DeadlineExceeded") and p.stop_attempt is not None
    # stalled past it too: failed at the deadline, no attempt 2 started only to be stopped, no crash counted
    from codex_operator.status import Stall

    stalled = make_job("runPolicy.activeDeadlineSeconds=25", "runPolicy.progressDeadlineSeconds=10")
    p = plan(stalled, started, running, NOW, stalled=Stall(1, 40, NOW - timedelta(seconds=30)))
    assert (p.status["phase"], p.reason) == ("Failed", "DeadlineExceeded") and p.create_attempt is None
    assert not p.status.get("crashes")


def test_a_deadline_the_job_does_not_set_is_not_the_jobs_deadline():
    """An attempt Job stopped by an activeDeadlineSeconds someone put on the Job itself (kubectl patch job):
    the job has no deadline, so it must not end Failed with 'runPolicy.activeDeadlineSeconds reached'; the
    attempt was stopped from outside, like a deleted one: retried, not counted against backoffLimit."""
    p = plan(make_job(), {"phase": "Running"}, attempts(job_obj(1, cond=DEADLINE)), NOW)
    assert p.status["phase"] == "Restarting" and p.create_attempt == 2, p.status
    assert "runPolicy.activeDeadlineSeconds reached" not in p.status["message"]
    assert "activeDeadlineSeconds of its Job, not the job's" in p.status["message"] and p.status["disruptions"] == 1
    assert p.events[-1][1] == "Disrupted"
    # the job has one, with time left (raised by an edit, or a shorter one patched onto the Job): the same
    started = {"phase": "Running", "startTime": "2026-11-28T11:59:00Z"}
    p = plan(make_job("runPolicy.activeDeadlineSeconds=3600"), started, attempts(job_obj(1, cond=DEADLINE)), NOW)
    assert p.status["phase"] == "Restarting" and p.create_attempt == 2, p.status


def test_suspend_and_resume_follow_run_policy():
    job = make_job("runPolicy.suspend=true")
    p = plan(job, {"phase": "Running"}, attempts(job_obj(1, ready=1)), NOW)
    assert p.set_suspend is True and p.status["phase"] == "Suspended"
    p = plan(make_job(), {"phase": "Suspended"}, attempts(job_obj(1, suspend=True)), NOW)
    assert p.set_suspend is False and p.status["phase"] == "Pending"
    new = plan(job, None, [], NOW)
    assert new.status["phase"] == "Suspended" and new.create_attempt == 1


def test_a_queued_job_waits_for_kueue_and_is_never_unsuspended_by_us():
    job = make_job("runPolicy.queueName=q")
    p = plan(job, {"phase": "Pending"}, attempts(job_obj(1, suspend=True)), NOW)
    assert p.set_suspend is None and p.status["phase"] == "Suspended"
    assert "admission" in p.status["message"]
    p = plan(job, {"phase": "Suspended"}, attempts(job_obj(1, ready=1)), NOW)
    assert p.set_suspend is None and p.status["phase"] == "Running"


def test_a_disrupted_trainer_that_checkpointed_as_it_stopped_is_resumed_from_that_step():
    """The status last read step 400; the trainer, stopped by a drain, checkpointed at 453 in its grace period
    and said so: the message, the status's checkpoint and the next attempt's Resumed event say 453, not 400."""
    status = {"phase": "Running", "checkpoint": {"step": 400, "path": "/checkpoints/checkpoints/step-400"}}
    pod = PodFailure("p", exit_code=143, message="stopped by SIGTERM after checkpoint at step 453", disrupted=True)
    p = plan(make_job(), status, attempts(job_obj(1, cond=DISRUPTED)), NOW, pod)
    assert p.status["phase"] == "Restarting" and p.create_attempt == 2
    assert p.status["message"] == (
        "attempt 1 disrupted (not counted against backoffLimit): trainer exited 143: stopped by SIGTERM after "
        "checkpoint at step 453; attempt 2 resumes from the newest checkpoint (step 453 or later)"
    )
    assert p.status["checkpoint"] == {"step": 453, "path": "/checkpoints/checkpoints/step-453"}
    resumed = plan(make_job(), p.status, attempts(job_obj(1, cond=DISRUPTED), job_obj(2, ready=1)), NOW)
    assert resumed.events == [
        ("Normal", "Resumed", "attempt 2 running: resumed from the newest checkpoint (step 453 or later)")
    ]
    # a message naming an older checkpoint than the status's (or none) changes nothing
    for said in ("stopped by SIGTERM after checkpoint at step 300", "stopped by SIGTERM", "RuntimeError: step 999"):
        again = plan(
            make_job(), status, attempts(job_obj(1, cond=DISRUPTED)), NOW, dataclasses.replace(pod, message=said)
        )
        assert again.status["checkpoint"]["step"] == 400, said


def test_an_attempt_that_started_no_pod_is_made_again_with_the_operators_new_trainer_image():
    """The README's fix for an image that cannot be pulled, the chart's trainer.image: an attempt of a job
    without spec.image that started no pod is replaced by one with the new image; one that runs is not, nor
    one of a job that names its own image."""
    pulling = {"phase": "Pending", "attempt": 1, "message": "attempt 1 waiting: pod x: ImagePullBackOff: ..."}
    stuck = attempts(job_obj(1, image="codex.local/codex-trainer:nope"))
    p = plan(make_job(), pulling, stuck, NOW, trainer_image="codex.local/codex-trainer:dev")
    assert p.stop_attempt is not None and p.stop_attempt.number == 1 and p.create_attempt == 2
    assert p.status["phase"] == "Pending" and p.status["stoppedAttempt"] == 1
    assert p.status["message"] == (
        "attempt 1 had started no pod when the operator's trainer image became codex.local/codex-trainer:dev "
        "(it was made with codex.local/codex-trainer:nope): attempt 2 starts with codex.local/codex-trainer:dev"
    )
    assert p.events == [("Normal", "ImageChanged", p.status["message"])]
    restarting = {"phase": "Restarting", "attempt": 2}  # a later attempt: a fix applied, not a failure either
    later = plan(
        make_job(), restarting, attempts(job_obj(1, cond=CRASH), job_obj(2, image="old")), NOW, trainer_image="new"
    )
    assert later.create_attempt == 3 and later.events == [("Normal", "ImageChanged", later.status["message"])]
    for job, status, made, image in [
        (make_job(), pulling, stuck, "codex.local/codex-trainer:nope"),  # the image it was made with
        (make_job(), pulling, stuck, ""),  # the operator's image not known
        (make_job("image=my/trainer:1"), pulling, stuck, "codex.local/codex-trainer:dev"),  # the job's own
        (make_job(), {"phase": "Running", "attempt": 1}, attempts(job_obj(1, ready=1, image="old")), "new"),
    ]:
        kept = plan(job, status, made, NOW, trainer_image=image)
        assert kept.stop_attempt is None and kept.create_attempt is None, (job.spec.image, image)


def test_resumed_event_names_the_checkpoint():
    status = {"phase": "Restarting", "checkpoint": {"step": 150}}
    p = plan(make_job(), status, attempts(job_obj(1, cond=CRASH), job_obj(2, ready=1)), NOW)
    assert p.status["phase"] == "Running"
    assert p.events == [
        ("Normal", "Resumed", "attempt 2 running: resumed from the newest checkpoint (step 150 or later)")
    ]


def test_a_first_run_after_a_replaced_attempt_is_running_and_a_resume_without_a_known_checkpoint_says_so():
    # attempt 1 never ran (replaced for an edit): attempt 2 is the job's first run, from step 0
    p = plan(make_job(), {"phase": "Pending", "attempt": 2}, attempts(job_obj(2, ready=1)), NOW)
    assert [e[1] for e in p.events] == ["Running"]
    # attempt 1 crashed before the operator saw it run (no ranAttempt, its crash counted): attempt 2 may resume
    crashed = {"phase": "Restarting", "attempt": 2, "crashes": 1}
    p = plan(make_job(), crashed, attempts(job_obj(1, cond=CRASH), job_obj(2, ready=1)), NOW)
    assert [e[1] for e in p.events] == ["Resumed"]
    # attempt 1 ran, but no checkpoint was reported before it ended: no resumption is claimed or named
    ran = {"phase": "Restarting", "attempt": 2, "ranAttempt": 1}
    p = plan(make_job(), ran, attempts(job_obj(1, cond=CRASH), job_obj(2, ready=1)), NOW)
    assert p.events == [
        (
            "Normal",
            "Resumed",
            "attempt 2 running: from the newest checkpoint on its volume, if one was written (none was reported)",
        )
    ]


def test_pod_failure_reads_the_trainer_containers_end():
    pod = {
        "metadata": {"name": "tiny-cpu-a1-0-x"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "invalid spec.x: bad\n"}},
                }
            ],
        },
    }
    assert pod_failure(pod) == PodFailure("tiny-cpu-a1-0-x", 2, "Error", "invalid spec.x: bad")
    running = {"metadata": {"name": "p"}, "status": {"phase": "Running", "containerStatuses": []}}
    assert pod_failure(running) is None


def test_progress_from_rank_zero_metrics():
    samples = {
        "codex_trainer_step": 126,
        "codex_trainer_total_steps": 300,
        "codex_trainer_loss": 0.912345,
        "codex_trainer_eval_loss": 1.1399,
        "codex_trainer_tokens_per_second": 20123.4,
        "codex_trainer_last_checkpoint_step": 100,
        "codex_trainer_last_checkpoint_timestamp_seconds": NOW.timestamp() - 30,
    }
    previous = {"step": 100, "totalSteps": 300, "updatedAt": "2026-11-28T11:59:34Z"}
    prog, ckpt = progress_from_metrics(samples, NOW, previous)
    assert prog["percentText"] == "42%" and prog["stepText"] == "126/300" and prog["percent"] == 42
    assert prog["loss"] == 0.9123 and prog["evalLoss"] == 1.14 and prog["tokensPerSecond"] == 20123
    assert prog["eta"] == "2m54s"  # 26 steps in 26 s: 174 steps left
    assert ckpt == {"step": 100, "path": "/checkpoints/checkpoints/step-100", "savedAt": "2026-11-28T11:59:30Z"}
    assert not progress_changed(prog, dict(prog, updatedAt="later"))
    assert progress_changed(prog, dict(prog, step=127))
    # the reading before was made before a suspension (10 min ago): its pace would count the time nothing ran
    stale = dict(previous, updatedAt="2026-11-28T11:50:00Z")
    assert "eta" not in progress_from_metrics(samples, NOW, stale, fresh=120)[0]
    assert progress_from_metrics(samples, NOW, previous, fresh=120)[0]["eta"] == "2m54s"


def test_a_pod_that_cannot_start_says_why():
    def pod(name, **status):
        return {"metadata": {"name": name}, "status": status}

    creating = pod("a", containerStatuses=[{"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}])
    assert waiting_reason([creating]) is None
    pull = pod(
        "b", containerStatuses=[{"state": {"waiting": {"reason": "ErrImageNeverPull", "message": "img absent"}}}]
    )
    assert waiting_reason([creating, pull]) == "pod b: ErrImageNeverPull: img absent"
    unschedulable = pod(
        "c",
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes"}],
    )
    assert waiting_reason([unschedulable]) == "pod c cannot be scheduled: 0/1 nodes"


def test_a_waiting_message_set_by_the_timer_is_kept_while_the_phase_stays():
    status = {"phase": "Pending", "attempt": 1, "message": "attempt 1 waiting: pod p: ErrImagePull"}
    p = plan(make_job(), status, attempts(job_obj(1)), NOW)
    assert p.status["message"] == status["message"] and p.events == []


def test_a_second_restart_in_a_row_is_a_transition_of_its_own():
    first = plan(make_job(), {"phase": "Running", "attempt": 1}, attempts(job_obj(1, cond=CRASH)), NOW)
    later = NOW + timedelta(seconds=10)
    started = plan(make_job(), first.status, attempts(job_obj(1, cond=CRASH)), later)
    assert started.status["phase"] == "Restarting" and started.create_attempt == 2
    two = attempts(job_obj(1, cond=CRASH), job_obj(2, cond=CRASH))
    second = plan(make_job(), started.status, two, later + timedelta(seconds=20))
    assert second.create_attempt is None and second.status["attempt"] == 2 and second.status["crashes"] == 2
    assert second.status["message"].startswith("attempt 2 failed") and "after a 20 s pause" in second.status["message"]
    assert second.events and second.events[-1][:2] == ("Warning", "Retrying")
    restarting = next(c for c in second.status["conditions"] if c["type"] == "Restarting")
    assert restarting["message"].startswith("attempt 2 failed")


FAILURE_TARGET = ("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit")


def test_the_outcome_is_known_from_failure_target_before_every_pod_has_ended():
    a = attempt_from_job(job_obj(1, cond=FAILURE_TARGET, ready=1))
    assert a.outcome == "Failed" and a.failure == "crash"
    done = attempt_from_job(job_obj(1, cond=("SuccessCriteriaMet", "CompletionsReached", "")))
    assert done.outcome == "Complete"


def test_a_running_attempt_stays_running_while_a_rank_stops_before_the_outcome():
    job = make_job("numNodes=2")
    running = {"phase": "Running", "attempt": 1, "message": "attempt 1: 2 pod(s) running"}
    p = plan(job, running, attempts(job_obj(1, ready=1)), NOW)
    assert p.status["phase"] == "Running" and p.events == []


def test_the_rank_to_blame_is_the_one_that_failed_first_not_one_stopped_after_it():
    crashed = PodFailure("r1", exit_code=1, finished_at="2026-11-28T12:00:05Z")
    stopped = PodFailure("r0", exit_code=143, finished_at="2026-11-28T12:00:01Z")
    invalid = PodFailure("r2", exit_code=2, finished_at="2026-11-28T12:00:09Z")
    assert sorted([stopped, crashed], key=lambda f: f.blame_order)[0] is crashed
    assert sorted([stopped, crashed, invalid], key=lambda f: f.blame_order)[0] is invalid


def test_success_reports_the_final_checkpoint():
    final = {"step": 300, "loss": 0.5, "checkpoint": {"step": 300, "savedAt": "2026-11-28T11:59:59Z"}}
    p = plan(
        make_job(),
        {"phase": "Running", "checkpoint": {"step": 200}},
        attempts(job_obj(1, cond=COMPLETE)),
        NOW,
        final=final,
    )
    assert p.status["checkpoint"] == {
        "step": 300,
        "path": "/checkpoints/checkpoints/step-300",
        "savedAt": "2026-11-28T11:59:59Z",
    }


def made_from(job, n: int, *, ready: int = 0, suspend: bool = False) -> Attempt:
    """Attempt n's Job as the operator made it for `job` (its spec fingerprint annotated), then seen back."""
    from codex_operator import builders

    obj = builders.attempt_job(job, n, builders.Settings(default_image="trainer:1"))
    obj["spec"]["suspend"] = suspend
    obj["status"] = {"ready": ready, "active": 1}
    return attempt_from_job(obj)


def test_an_attempt_whose_pods_never_started_is_replaced_when_the_spec_is_edited():
    """The README's fix for a job stuck Pending (lower spec.resources.requests, set spec.image) must reach
    the pods: an attempt that never ran has nothing to lose, so it is replaced, counted as nothing."""
    stuck = dataclasses.replace(make_job("resources.requests.cpu='64'"), generation=2)
    edited = make_job("resources.requests.cpu=500m")
    old = {"phase": "Pending", "attempt": 1, "message": "cannot be scheduled: 0/3 nodes: Insufficient cpu"}
    p = plan(edited, old, [made_from(stuck, 1)], NOW)
    assert p.stop_attempt is not None and p.stop_attempt.number == 1 and p.create_attempt == 2
    assert p.status["phase"] == "Pending" and p.status["attempt"] == 2
    assert "crashes" not in p.status and "disruptions" not in p.status
    assert p.status["message"] == (
        "attempt 1 had started no pod when the spec was edited (generation 3): attempt 2 starts with the edit"
    )
    assert [e[:2] for e in p.events] == [("Normal", "SpecChanged")]
    assert [c["type"] for c in p.status["conditions"] if c["status"] == "True"] != ["Stalled"], p.status
    assert not any(c["type"] == "Stalled" and c["status"] == "True" for c in p.status["conditions"])


def test_a_replacement_the_operator_was_cut_short_in_is_finished_not_counted_as_a_disruption():
    """The status names attempt 2 and the stopped attempt 1 (written first), then the operator stopped: attempt 1
    still there or already deleted, attempt 2 never created. Read as someone else deleting attempt 2, it would
    count a disruption (and fail a job with maxDisruptions 0)."""
    stuck = dataclasses.replace(make_job("resources.requests.cpu='64'"), generation=2)
    edited = make_job("resources.requests.cpu=500m", "runPolicy.maxDisruptions=0")
    p = plan(edited, {"phase": "Pending", "attempt": 1}, [made_from(stuck, 1)], NOW)
    written = p.status
    assert written["stoppedAttempt"] == 1 and written["attempt"] == 2
    for left in ([made_from(stuck, 1)], []):  # its delete refused; or deleted, the create not made
        again = plan(edited, written, left, NOW)
        assert again.create_attempt == 2 and again.status["phase"] == "Pending"
        assert (again.stop_attempt is not None) == bool(left)
        assert "disruptions" not in again.status and not again.events
    done = plan(edited, written, [made_from(edited, 2)], NOW)
    assert "stoppedAttempt" not in done.status and done.create_attempt is None
    assert plan(edited, {"phase": "Pending", "attempt": 2}, [], NOW).status["phase"] == "Failed"  # a real deletion
    # the operator came back past activeDeadlineSeconds: nothing more is started, the stopped attempt is stopped
    timed = make_job("resources.requests.cpu=500m", "runPolicy.activeDeadlineSeconds=60")
    late = plan(timed, {**written, "startTime": "2026-11-28T11:58:00Z"}, [made_from(stuck, 1)], NOW)
    assert late.status["phase"] == "Failed" and late.status["message"] == "runPolicy.activeDeadlineSeconds reached"
    assert late.create_attempt is None and late.stop_attempt is not None and "stoppedAttempt" not in late.status
    assert "disruptions" not in late.status


def test_an_edit_of_a_running_attempt_is_said_to_apply_from_the_next_attempt():
    """A running attempt is not restarted for an edit (it would lose the steps since its checkpoint): the user is
    told, once, that the edit waits for the next attempt, and how long the running one trains."""
    before = dataclasses.replace(make_job("training.maxSteps=300"), generation=2)
    edited = make_job("training.maxSteps=50")
    running = {"phase": "Running", "attempt": 1, "observedGeneration": 2, "message": "attempt 1: 1 pod(s) running"}
    p = plan(edited, running, [made_from(before, 1, ready=1)], NOW)
    assert p.status["phase"] == "Running" and p.stop_attempt is None and p.create_attempt is None
    ((kind, reason, message),) = p.events
    assert (kind, reason) == ("Normal", "SpecChanged"), p.events
    assert message == (
        "the spec (generation 3) differs from the one attempt 1 was made from: attempt 1 goes on with its own "
        "(300 steps; the job now asks for 50 steps), and the difference applies from the next attempt"
    )
    assert not plan(edited, p.status, [made_from(before, 1, ready=1)], NOW).events  # said once
    same = dataclasses.replace(make_job("training.maxSteps=50"), generation=2)  # an edit the pods do not see
    assert not plan(edited, running, [made_from(same, 1, ready=1)], NOW).events
    # two nodes, one pod up (not Running yet, not replaced: it has a pod): said too
    two = dataclasses.replace(make_job("numNodes=2", "training.maxSteps=300"), generation=2)
    starting = {"phase": "Pending", "attempt": 1, "observedGeneration": 2}
    p = plan(make_job("numNodes=2", "training.maxSteps=50"), starting, [made_from(two, 1, ready=1)], NOW)
    assert [e[1] for e in p.events] == ["SpecChanged"] and p.stop_attempt is None, p.events


@pytest.mark.parametrize(
    "why",
    [
        "the same spec",
        "a pod running",
        "suspended in a queue",
        "an edit the pods do not see",
        "made before the fingerprint",
        "the same generation, another fingerprint (an operator upgrade)",
    ],
)
def test_an_attempt_is_left_alone_when_replacing_it_would_lose_something_or_change_nothing(why):
    job = make_job()
    edited = {
        "the same spec": job,
        "a pod running": make_job("training.maxSteps=500"),
        "suspended in a queue": make_job("training.maxSteps=500"),
        "an edit the pods do not see": make_job("runPolicy.ttlSecondsAfterFinished=60"),
        "made before the fingerprint": make_job("training.maxSteps=500"),
        "the same generation, another fingerprint (an operator upgrade)": make_job("training.maxSteps=500"),
    }[why]
    latest = made_from(
        dataclasses.replace(job, generation=2),
        1,
        ready=int(why == "a pod running"),
        suspend=why.startswith("suspended"),
    )
    if why == "made before the fingerprint":
        latest = attempts(job_obj(1))[0]
    if why.startswith("the same generation"):
        edited = dataclasses.replace(edited, generation=2)  # the attempt's own generation
    old = {"phase": "Running" if why == "a pod running" else "Pending", "attempt": 1}
    p = plan(edited, old, [latest], NOW, may_suspend=why != "suspended in a queue")
    assert p.stop_attempt is None and p.create_attempt is None, why


def test_success_after_maxsteps_was_lowered_below_the_step_shows_the_run_done():
    """maxSteps lowered to 100 after step 355: the trainer trains nothing more and ends at 355. The finished
    job shows 355/355 and 100%, not 88% of the old 400 with an ETA."""
    status = {"phase": "Running", "progress": {"step": 352, "totalSteps": 400, "eta": "5s", "percent": 88}}
    p = plan(make_job(), status, attempts(job_obj(2, cond=COMPLETE)), NOW, final={"step": 355})
    prog = p.status["progress"]
    assert (prog["stepText"], prog["percentText"], prog["totalSteps"]) == ("355/355", "100%", 355)
    assert "eta" not in prog


def test_an_attempt_that_finished_an_older_length_of_training_is_followed_by_one_that_trains_on():
    """training.maxSteps raised while attempt 1 ran (its job file says 300): it finishes at 300, and the job is
    not Succeeded with the edit lost; attempt 2 resumes from the checkpoint and trains to the new end."""
    from codex_operator import builders

    def finished(job) -> Attempt:
        obj = builders.attempt_job(job, 1, builders.Settings(default_image="trainer:1"))
        obj["status"] = {"conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached"}]}
        return attempt_from_job(obj)

    raised = make_job("training.maxSteps=320")
    old = {"phase": "Running", "attempt": 1, "progress": {"step": 300, "totalSteps": 300}}
    first = finished(dataclasses.replace(make_job(), generation=2))
    p = plan(raised, old, [first], NOW, final={"step": 300})
    assert p.create_attempt == 2 and p.status["phase"] == "Restarting", p.status
    assert p.status["message"] == (
        "attempt 1 finished the 300 steps it was started with; the spec now asks for 320 steps "
        "(generation 3): attempt 2 trains on from the newest checkpoint"
    )
    assert [e[1] for e in p.events] == ["SpecChanged"] and "crashes" not in p.status
    # the checkpoint attempt 2 resumes from is the one attempt 1 ended with, not the last one read while it ran
    read = {**old, "checkpoint": {"step": 250, "path": "/checkpoints/checkpoints/step-250"}}
    final = {"step": 300, "checkpoint": {"step": 300, "savedAt": "2026-11-28T11:59:00Z"}}
    p = plan(raised, read, [first], NOW, final=final)
    assert p.status["checkpoint"]["step"] == 300 and p.create_attempt == 2, p.status
    # and the STEP and LOSS columns say where attempt 1 ended, out of the new length, not its last reading
    stale = {**old, "progress": {"step": 21, "totalSteps": 300, "loss": 3.67, "eta": "9m"}}
    p = plan(raised, stale, [first], NOW, final={**final, "loss": 1.234567})
    prog = p.status["progress"]
    assert (prog["stepText"], prog["loss"], "eta" in prog) == ("300/320", 1.235, False), prog
    same = plan(make_job("resources.requests.cpu='2'"), old, [first], NOW, final={"step": 300})
    assert same.status["phase"] == "Succeeded" and same.create_attempt is None  # the length is unchanged
    lowered = plan(make_job("training.maxSteps=200"), old, [first], NOW, final={"step": 300})
    assert lowered.status["phase"] == "Succeeded" and lowered.create_attempt is None  # nothing more to train
    late = make_job("training.maxSteps=320", "runPolicy.activeDeadlineSeconds=60")
    started = {**old, "startTime": "2026-11-28T10:00:00Z"}
    ended = plan(late, started, [first], NOW, final={"step": 300})
    assert ended.status["phase"] == "Succeeded" and ended.create_attempt is None  # no time left to train on
