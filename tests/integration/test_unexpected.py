"""The operator when the cluster does the unexpected, on the real API server, Job controller and garbage
collector, under the chart's RBAC: names held by others, a quota, an admission policy, deleted children,
storage.retain switched on a live job. Most jobs here stay suspended or never get pods, so no trainer
runs; the in-process versions of these cases (tests/unit/test_controller.py) cover the rest in seconds."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from test_operator import SHORT, Jobs, manifest

from support import wait_for

pytestmark = pytest.mark.cluster

HELD = ("runPolicy.suspend=true",)  # the attempt exists, no pod runs


@pytest.fixture
def jobs(cluster, namespace):
    return Jobs(cluster, namespace)


def quota(name: str, **hard: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name}, "spec": {"hard": hard}})


def owner_uids(obj: dict) -> list[str]:
    return [r["uid"] for r in obj["metadata"].get("ownerReferences") or []]


def message_says(jobs: Jobs, name: str, text: str, timeout: float = 60) -> dict:
    def said():
        st = jobs.status(name)
        return st if text in (st.get("message") or "") else None

    return wait_for(said, f"{name}'s message to say {text!r}", timeout)


def test_a_job_recreated_after_an_orphaning_delete_adopts_nothing_of_its_namesake(operator, jobs):
    jobs.apply(manifest("orphan", *HELD))
    jobs.wait_phase("orphan", "Suspended", timeout=60)
    old = jobs.get("orphan")["metadata"]["uid"]
    jobs.kubectl("delete", "ctj", "orphan", "--cascade=orphan")
    wait_for(lambda: not owner_uids(jobs.children("job", "orphan")[0]), "the attempt orphaned", 30)
    jobs.apply(manifest("orphan", *HELD))
    st = message_says(jobs, "orphan", "exists and is not this job's")
    assert st["phase"] == "Pending" and "retrying" in st["message"]
    warnings = [e for e in jobs.events("orphan") if e["reason"] == "NameTaken"]
    assert warnings and warnings[-1]["type"] == "Warning"
    # every leftover named at once, with the one command that clears them, which the user runs as given
    command = re.search(r"\(kubectl delete -n (\S+) ([^)]*)\)", st["message"])
    assert command and command.group(1) == jobs.ns, st["message"]
    leftovers = command.group(2).split()
    assert set(leftovers) == {"job/orphan-a1", "configmap/orphan-a1-config", "persistentvolumeclaim/orphan-checkpoints"}
    jobs.kubectl("delete", *leftovers, "--wait=true")
    st = jobs.wait_phase("orphan", "Suspended", timeout=120)  # the backoff's next try
    new = jobs.get("orphan")["metadata"]["uid"]
    assert st["attempt"] == 1 and new != old
    (attempt,) = jobs.children("job", "orphan")
    assert owner_uids(attempt) == [new]


def test_a_user_made_service_of_a_childs_name_is_never_overwritten(operator, jobs):
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "mine-workers"},
        "spec": {"ports": [{"port": 80}]},
    }
    jobs.apply(json.dumps(theirs))
    jobs.apply(manifest("mine", *HELD, "numNodes=2"))  # several nodes: the job needs its rendezvous Service
    st = message_says(jobs, "mine", "Service mine-workers exists and is not this job's (no owner)")
    assert st["phase"] == "Pending"
    svc = json.loads(jobs.kubectl("get", "service", "mine-workers", "-o", "json").stdout)
    assert not svc["metadata"].get("ownerReferences") and svc["spec"]["ports"][0]["port"] == 80


def test_a_quota_on_jobs_is_shown_and_retried_until_it_frees_up(operator, jobs):
    jobs.apply(quota("no-jobs", **{"count/jobs.batch": "0"}))
    jobs.apply(manifest("quota", *HELD))
    st = message_says(jobs, "quota", "exceeded quota")
    assert st["phase"] == "Pending" and "the API server refused creating Job quota-a1 (HTTP 403)" in st["message"]
    assert st["message"].endswith("; retrying")
    assert any(e["reason"] == "Refused" and e["type"] == "Warning" for e in jobs.events("quota"))
    jobs.kubectl("delete", "resourcequota", "no-jobs")
    assert jobs.wait_phase("quota", "Suspended", timeout=120)["attempt"] == 1


def test_pods_a_quota_keeps_the_job_controller_from_creating_are_explained(operator, jobs):
    jobs.apply(quota("no-pods", pods="0"))
    jobs.apply(manifest("nopods"))
    st = message_says(jobs, "nopods", "the Job controller cannot create the pods", timeout=120)
    assert st["phase"] == "Pending" and "exceeded quota: no-pods" in st["message"]


def test_a_misspelt_storage_class_says_what_the_provisioner_said_and_the_way_out(operator, jobs):
    """README, Troubleshooting: the scheduler says only 'unbound immediate PersistentVolumeClaims'; the job's
    message adds the claim's ProvisioningFailed words, and the class being immutable, says to make a new job."""
    jobs.apply(manifest("typo", "storage.storageClassName=fsat"))
    st = message_says(jobs, "typo", 'volume typo-checkpoints: storageclass.storage.k8s.io "fsat" not found', 180)
    assert st["phase"] == "Pending" and "unbound immediate PersistentVolumeClaims" in st["message"], st
    assert "delete the job and create it again" in st["message"], st


def test_an_admission_policy_that_refuses_the_attempt_fails_the_job_with_its_message(operator, jobs, cluster):
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": f"no-jobs-{jobs.ns}"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"]}
                ]
            },
            "validations": [{"expression": "false", "message": "Jobs in this namespace need a cost-center label"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": f"no-jobs-{jobs.ns}"},
        "spec": {
            "policyName": f"no-jobs-{jobs.ns}",
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": jobs.ns}}},
        },
    }
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]})
    )
    try:
        # the policy takes a moment to be enforced: a throwaway Job shows when it is
        probe = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"}, "spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "none"}]}}}}  # fmt: skip
        wait_for(
            lambda: (
                jobs.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False).returncode
            ),
            "the policy enforced",
            60,
        )
        jobs.apply(manifest("denied", *HELD))
        st = jobs.wait_phase("denied", "Failed", timeout=60)
        assert "the API server refused creating Job denied-a1" in st["message"]
        assert "need a cost-center label" in st["message"] and "not retried" in st["message"]
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", f"no-jobs-{jobs.ns}")


def test_a_deleted_attempt_job_service_and_job_file_are_noticed(operator, jobs):
    jobs.apply(manifest("lost", *HELD, "runPolicy.backoffLimit=0", "numNodes=2"))
    jobs.wait_phase("lost", "Suspended", timeout=60)
    jobs.kubectl("delete", "job", "lost-a1")
    st = wait_for(lambda: (s := jobs.status("lost")).get("attempt") == 2 and s, "attempt 2", 60)
    assert st["restarts"] == 1  # a deletion is a disruption: backoffLimit 0 still allows it
    wait_for(lambda: [j["metadata"]["name"] for j in jobs.children("job", "lost")] == ["lost-a2"], "lost-a2", 30)
    for kind, name in (("service", "lost-workers"), ("configmap", "lost-a2-config")):
        uid = json.loads(jobs.kubectl("get", kind, name, "-o", "json").stdout)["metadata"]["uid"]
        jobs.kubectl("delete", kind, name)

        def back(kind=kind, name=name, uid=uid):
            got = jobs.kubectl("get", kind, name, "-o", "json", check=False)
            return got.returncode == 0 and json.loads(got.stdout)["metadata"]["uid"] != uid

        wait_for(back, f"{kind} {name} re-created", 60)
    assert jobs.status("lost")["attempt"] == 2


def test_storage_retain_switched_on_a_live_job_keeps_the_volume(operator, jobs):
    jobs.apply(manifest("later", *HELD))
    jobs.wait_phase("later", "Suspended", timeout=60)
    uid = jobs.get("later")["metadata"]["uid"]
    assert owner_uids(jobs.children("pvc", "later")[0]) == [uid]
    jobs.kubectl("patch", "ctj", "later", "--type", "merge", "-p", '{"spec": {"storage": {"retain": true}}}')
    wait_for(lambda: not owner_uids(jobs.children("pvc", "later")[0]), "the volume released", 60)
    jobs.kubectl("delete", "ctj", "later")
    wait_for(lambda: not jobs.children("job", "later"), "the attempt deleted", 60)
    assert [p["metadata"]["name"] for p in jobs.children("pvc", "later")] == ["later-checkpoints"]


def test_a_job_stuck_pending_takes_the_fix_the_readme_gives(operator, jobs, trainer_image):
    """README, Troubleshooting: a pod no node can fit stays Pending; lower spec.resources.requests. The edit
    must reach the pods: the attempt that never started is replaced by one made from the edited spec, and the
    job trains to the end, with no crash or disruption counted."""
    jobs.apply(manifest("stuck", *SHORT, "resources={requests: {cpu: '64', memory: 1Gi}, limits: {memory: 3Gi}}"))
    wait_for(lambda: "Insufficient cpu" in jobs.status("stuck").get("message", ""), "the reason it waits", 180)
    waiting = wait_for(
        lambda: [e for e in jobs.events("stuck") if e["reason"] == "Waiting"], "the Waiting Event", 30
    )  # what `kubectl describe ctj` shows
    assert waiting[0]["type"] == "Warning" and "Insufficient cpu" in waiting[0]["message"], waiting
    fix = {"spec": {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}}}
    jobs.kubectl("patch", "ctj", "stuck", "--type=merge", "-p", json.dumps(fix))

    done = jobs.wait_phase("stuck", "Succeeded", timeout=600)
    assert done["attempt"] == 2 and not done.get("crashes") and not done.get("disruptions"), done
    assert [j["metadata"]["name"] for j in jobs.children("job", "stuck")] == ["stuck-a2"]
    said = [e["message"] for e in jobs.events("stuck") if e["reason"] == "SpecChanged"]
    assert said == [
        "attempt 1 had started no pod when the spec was edited (generation 2): attempt 2 starts with the edit"
    ]


def test_max_steps_raised_while_it_runs_trains_to_the_new_end(operator, jobs, trainer_image):
    """docs/jobs.md: training.maxSteps may be changed and training goes on from the checkpoints. Raised as soon
    as attempt 1 runs, its job file saying 150: attempt 1 ends at 150, attempt 2 trains on to 170."""
    jobs.apply(manifest("longer", *SHORT, "training.maxSteps=150", "checkpoint.everySteps=50"))
    jobs.wait_phase("longer", "Running", timeout=300)
    jobs.kubectl("patch", "ctj", "longer", "--type=merge", "-p", json.dumps({"spec": {"training": {"maxSteps": 170}}}))

    done = jobs.wait_phase("longer", "Succeeded", timeout=600)
    assert done["attempt"] == 2 and done["progress"]["stepText"] == "170/170", done
    said = [e["message"] for e in jobs.events("longer") if e["reason"] == "SpecChanged"]
    # the edit said when it was seen (attempt 1 goes on with its 150 steps), then acted on when attempt 1 ended
    assert any(m.startswith("the spec (generation 2) differs from the one attempt 1 was made from") for m in said)
    assert any(m.startswith("attempt 1 finished the 150 steps it was started with; the spec now") for m in said), said
    resumed = [json.loads(line) for line in jobs.logs("longer-a2").splitlines() if '"resumed"' in line]
    assert resumed and resumed[0]["step"] == 150, jobs.logs("longer-a2")[-2000:]


LONGER = (*SHORT, "training.maxSteps=400", "checkpoint.everySteps=20")  # still training when its pod goes


def test_a_deadline_added_to_a_running_job_stops_it_when_it_passes(operator, jobs, trainer_image):
    """docs/jobs.md: an activeDeadlineSeconds edit applies at once. Its attempt Job was made without one: the
    operator stops it when the job's deadline passes (before, it trained on to the end, the edit never applied;
    found by a new-user check)."""
    jobs.apply(manifest("timed", *LONGER))
    wait_for(lambda: (jobs.status("timed").get("progress") or {}).get("step"), "a first step", 300)
    started = jobs.status("timed")["startTime"]
    ran = (datetime.now(UTC) - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds()
    deadline = int(ran) + 15  # passes while it trains, with no event of its own: the operator's timer finds it
    patch = {"spec": {"runPolicy": {"activeDeadlineSeconds": deadline}}}
    jobs.kubectl("patch", "ctj", "timed", "--type=merge", "-p", json.dumps(patch))
    assert jobs.status("timed")["phase"] == "Running"
    done = jobs.wait_phase("timed", "Failed", "Succeeded", timeout=120)
    assert (done["phase"], done["message"]) == ("Failed", "runPolicy.activeDeadlineSeconds reached"), done
    assert done["startTime"] == started and done["progress"]["step"] < 400, done
    assert "DeadlineExceeded" in {e["reason"] for e in jobs.events("timed")}
    wait_for(lambda: not jobs.children("job", "timed"), "the attempt stopped", 60)


def test_an_edit_that_makes_the_next_attempt_invalid_waits_for_the_fix_and_loses_nothing(operator, jobs, trainer_image):
    """The API server takes an affinity a Pod refuses on the job (a free-form field), but not on the next attempt's
    Job: the job keeps its checkpoints and says what to fix; the fix starts that attempt. A cpu request above its
    limit, which a Pod refuses too, is refused at the edit itself."""
    jobs.apply(manifest("edited", *LONGER))
    wait_for(lambda: (jobs.status("edited").get("checkpoint") or {}).get("step"), "a first checkpoint", 300)
    above = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "3Gi"}}
    refused = jobs.kubectl("patch", "ctj", "edited", "--type=merge", "-p", json.dumps({"spec": {"resources": above}}),
                           check=False)  # fmt: skip
    assert refused.returncode != 0 and "a pod may not request more of a resource than its limit" in refused.stderr
    no_terms = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    bad = {"spec": {"affinity": no_terms}}
    jobs.kubectl("patch", "ctj", "edited", "--type=merge", "-p", json.dumps(bad))
    jobs.kubectl("delete", "pod", "-l", "codex.ml/job-name=edited", "--wait=false")  # attempt 1 ends
    st = message_says(jobs, "edited", "the job keeps its checkpoints and waits: fix what it names", timeout=120)
    assert st["phase"] == "Restarting" and "(HTTP 422)" in st["message"] and "edited-a2" in st["message"], st
    jobs.kubectl("patch", "ctj", "edited", "--type=merge", "-p", json.dumps({"spec": {"affinity": None}}))
    done = jobs.wait_phase("edited", "Succeeded", timeout=600)
    assert done["attempt"] == 2 and done["progress"]["stepText"] == "400/400", done
    resumed = [json.loads(line) for line in jobs.logs("edited-a2").splitlines() if '"resumed"' in line]
    assert resumed and resumed[0]["step"] >= 20, jobs.logs("edited-a2")[-2000:]


def test_a_deleted_checkpoint_volume_is_made_again_and_its_loss_is_said(operator, jobs, trainer_image):
    """Deleted under a running job: the next attempt's pod waits for the claim, the operator makes it again
    (Warning VolumeLost), and the job trains from step 0 with no Event claiming a resumption."""
    jobs.apply(manifest("lost", *LONGER))
    wait_for(lambda: (jobs.status("lost").get("checkpoint") or {}).get("step"), "a first checkpoint", 300)
    jobs.kubectl("delete", "pvc", "lost-checkpoints", "--wait=false")
    jobs.kubectl("delete", "pod", "-l", "codex.ml/job-name=lost", "--wait=false")  # lets the volume go
    lost = wait_for(lambda: [e for e in jobs.events("lost") if e["reason"] == "VolumeLost"], "VolumeLost", 240)
    assert lost[0]["type"] == "Warning" and "its next attempt trains from step 0" in lost[0]["message"], lost
    done = jobs.wait_phase("lost", "Succeeded", timeout=600)
    assert done["progress"]["stepText"] == "400/400", done
    last = f"lost-a{done['attempt']}"
    assert not [line for line in jobs.logs(last).splitlines() if '"resumed"' in line], jobs.logs(last)[-2000:]
    claimed = [e["message"] for e in jobs.events("lost") if e["reason"] == "Resumed"]
    assert not [m for m in claimed if "checkpoint (step" in m], claimed


def test_an_attempt_job_scaled_to_zero_or_suspended_by_hand_is_set_back_and_trains_to_the_end(
    operator, jobs, trainer_image
):
    """Both stop the pods while the job would still say Running: the operator puts its Job back as it made it,
    says so (and how to pause a job), and the pods train on from the checkpoint."""
    jobs.apply(manifest("handy", *LONGER))
    wait_for(lambda: (jobs.status("handy").get("checkpoint") or {}).get("step"), "a first checkpoint", 300)

    def spec() -> dict:
        return json.loads(jobs.kubectl("get", "job", "handy-a1", "-o", "json").stdout)["spec"]

    jobs.kubectl("patch", "job", "handy-a1", "--type=merge", "-p", json.dumps({"spec": {"parallelism": 0}}))
    wait_for(lambda: spec()["parallelism"] == 1, "parallelism set back", 60)
    jobs.kubectl("patch", "job", "handy-a1", "--type=merge", "-p", json.dumps({"spec": {"suspend": True}}))
    wait_for(lambda: spec()["suspend"] is False, "the Job resumed", 60)
    done = jobs.wait_phase("handy", "Succeeded", timeout=600)
    assert done["attempt"] == 1 and done["progress"]["stepText"] == "400/400", done
    said = [e["message"] for e in jobs.events("handy") if e["reason"] == "JobEdited" and e["type"] == "Warning"]
    assert any("parallelism was set to 0 by an edit of the Job: set back to 1" in m for m in said), said
    assert any("was suspended by an edit of the Job, which stops its pods: resumed" in m for m in said), said


def test_an_edited_job_suspended_and_resumed_goes_on_in_the_same_attempt(operator, jobs, trainer_image):
    """runPolicy.suspend false resumes the current attempt, edited or not (a new-user check found the edited one
    replaced, a restart counted and 'had started no pod' said)."""
    jobs.apply(manifest("paused", *LONGER))
    wait_for(lambda: (jobs.status("paused").get("checkpoint") or {}).get("step"), "a first checkpoint", 300)
    jobs.kubectl("patch", "ctj", "paused", "--type=merge", "-p", json.dumps({"spec": {"training": {"maxSteps": 420}}}))
    jobs.kubectl("patch", "ctj", "paused", "--type=merge", "-p", json.dumps({"spec": {"runPolicy": {"suspend": True}}}))
    jobs.wait_phase("paused", "Suspended", timeout=60)
    jobs.kubectl(
        "patch", "ctj", "paused", "--type=merge", "-p", json.dumps({"spec": {"runPolicy": {"suspend": False}}})
    )
    st = jobs.wait_phase("paused", "Running", timeout=120)
    assert st["attempt"] == 1 and st["restarts"] == 0, st
    said = [(e["reason"], e["message"]) for e in jobs.events("paused")]
    assert any(r == "Resumed" and m.startswith("attempt 1 running again") for r, m in said), said
    assert not any("had started no pod" in m for _, m in said), said
    done = jobs.wait_phase("paused", "Succeeded", timeout=600)  # attempt 1 ends at its 400, attempt 2 at 420
    assert done["attempt"] == 2 and done["progress"]["stepText"] == "420/420", done


def test_two_jobs_given_one_volume_the_second_says_whose_lock_it_waits_for(operator, jobs, trainer_image):
    """storage.existingClaim shared by two jobs (the new-user cluster check): the second's pod showed Running
    with an empty log until its wait ran out. It says at once what it waits for, naming the first job's pod."""
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "200Mi"}}}}  # fmt: skip
    jobs.apply(json.dumps(claim))
    jobs.apply(manifest("first", *SHORT, "training.maxSteps=5000", "storage.existingClaim=shared"))
    wait_for(lambda: (jobs.status("first").get("progress") or {}).get("step"), "the first job training", 300)
    jobs.apply(manifest("second", *SHORT, "storage.existingClaim=shared"))
    said = wait_for(
        lambda: "waiting up to" in (log := jobs.logs("second-a1")) and log, "the second's waiting line", 180
    )
    assert "s for /checkpoints: another run (pid " in said and " on first-a1-0) holds it" in said, said
    assert jobs.status("second").get("phase") == "Running"
    jobs.kubectl("delete", "ctj", "first", "second", "--wait=false")
