"""The operator on the real cluster with the real trainer image: `kubectl apply` a CodexTrainingJob and
watch what a user would watch — `kubectl get ctj`, its status and Events, the files on its volume."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from codex_operator.progress import parse_ts
from codex_trainer.manifest import apply_overrides
from support import TINY, wait_for

pytestmark = pytest.mark.cluster

# a short run of the example: a few seconds of training on 2 cores, checkpoints often
SHORT = (
    "training.maxSteps=40",
    "checkpoint.everySteps=10",
    "eval.everySteps=20",
    "resources={requests: {cpu: 500m, memory: 1Gi}, limits: {memory: 3Gi}}",
)


def manifest(name: str, *overrides: str) -> str:
    raw = yaml.safe_load(TINY.read_text())
    raw["metadata"]["name"] = name
    return json.dumps(apply_overrides(raw, list(overrides)))


class Jobs:
    """kubectl for CodexTrainingJobs in one namespace."""

    def __init__(self, cluster, namespace: str):
        self.cluster, self.ns = cluster, namespace

    def kubectl(self, *args: str, **kw):
        return self.cluster.kubectl(*args, "-n", self.ns, **kw)

    def apply(self, text: str) -> None:
        self.kubectl("apply", "-f", "-", input=text)

    def get(self, name: str) -> dict:
        return json.loads(self.kubectl("get", "ctj", name, "-o", "json").stdout)

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def wait_phase(self, name: str, *phases: str, timeout: float = 300) -> dict:
        def reached():
            st = self.status(name)
            if st.get("phase") in ("Failed", "Succeeded") and st["phase"] not in phases:
                raise AssertionError(f"{name} ended {st['phase']}: {st.get('message')}\n{self.debug(name)}")
            return st if st.get("phase") in phases else None

        return wait_for(reached, f"{name} to be {'/'.join(phases)}", timeout, interval=1)

    def children(self, kind: str, name: str) -> list[dict]:
        out = self.kubectl("get", kind, "-l", f"codex.ml/job-name={name}", "-o", "json").stdout
        return json.loads(out)["items"]

    def events(self, name: str) -> list[dict]:
        out = self.kubectl("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json").stdout
        return sorted(json.loads(out)["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def logs(self, job: str) -> str:
        return self.kubectl("logs", f"job/{job}", check=False).stdout

    def debug(self, name: str) -> str:
        return "\n".join(
            self.kubectl(*args, check=False).stdout + self.kubectl(*args, check=False).stderr
            for args in (("get", "ctj,jobs,pods,pvc", "-o", "wide"), ("describe", "pods"))
        )

    def run_pod(self, name: str, image: str, command: list[str], claims: dict[str, str]) -> str:
        """Run a restricted pod that mounts each claim at its path (path -> claim); its logs once it Succeeded."""
        spec = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "volumeMounts": [{"name": f"v{i}", "mountPath": path} for i, path in enumerate(claims)],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
            "volumes": [
                {"name": f"v{i}", "persistentVolumeClaim": {"claimName": claim}}
                for i, claim in enumerate(claims.values())
            ],
        }
        self.apply(json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}))

        def ended() -> str:
            phase = self.kubectl("get", "pod", name, "-o", "jsonpath={.status.phase}").stdout
            return phase if phase in ("Succeeded", "Failed") else ""

        phase = wait_for(ended, f"pod {name}", 180)
        logs = self.kubectl("logs", name).stdout
        assert phase == "Succeeded", logs
        return logs

    def on_volume(self, name: str, image: str, script: str) -> str:
        """Run a shell script in a pod that mounts the job's checkpoint volume at /checkpoints."""
        pod = f"look-{name}-{int(time.time() * 1000) % 100000}"
        return self.run_pod(pod, image, ["sh", "-c", script], {"/checkpoints": f"{name}-checkpoints"})


@pytest.fixture
def jobs(cluster, namespace):
    return Jobs(cluster, namespace)


@pytest.fixture
def restricted(cluster, namespace):
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    return namespace


def test_the_example_trains_to_succeeded_in_a_restricted_namespace(operator, jobs, restricted, trainer_image):
    """The example as a user applies it, 300 steps in a pod, then a pod reading the volume: about 40 s. The
    first cluster test that needs the operator pays, in its setup, for building and loading the images."""
    jobs.apply(TINY.read_text())  # the very file a user runs with `codex-train run`

    # children, each owned by the job
    uid = wait_for(lambda: jobs.get("tiny-cpu")["metadata"]["uid"], "the job")
    for kind, name in [("pvc", "tiny-cpu-checkpoints"), ("configmap", "tiny-cpu-a1-config"), ("job", "tiny-cpu-a1")]:
        (child,) = wait_for(lambda k=kind: jobs.children(k, "tiny-cpu"), f"the {kind}")
        assert child["metadata"]["name"] == name
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
    assert jobs.children("service", "tiny-cpu") == []  # one node: its processes meet on localhost

    # progress moves while it runs, and `kubectl get ctj` shows it
    running = jobs.wait_phase("tiny-cpu", "Running", timeout=240)
    assert running["attempt"] == 1 and running["restarts"] == 0
    first = wait_for(lambda: (jobs.status("tiny-cpu").get("progress") or {}).get("step"), "a first progress reading")
    later = wait_for(
        lambda: (
            (jobs.status("tiny-cpu").get("progress") or {}).get("step", 0) > first
            and jobs.status("tiny-cpu")["progress"]
        ),
        "progress to move",
        120,
    )
    assert later["totalSteps"] == 300 and later["stepText"] == f"{later['step']}/300" and later["loss"] > 0
    row = jobs.kubectl("get", "ctj", "tiny-cpu", "--no-headers").stdout.split()
    assert row[0] == "tiny-cpu" and row[1] in ("Running", "Succeeded") and row[2].endswith("%") and "/300" in row[3]

    done = jobs.wait_phase("tiny-cpu", "Succeeded", timeout=600)
    assert done["progress"]["step"] == 300 and done["progress"]["percentText"] == "100%"
    assert done["restarts"] == 0 and done["completionTime"]
    assert done["checkpoint"]["step"] == 300 and done["checkpoint"]["path"] == "/checkpoints/checkpoints/step-300"
    assert {c["type"]: c["status"] for c in done["conditions"]}.items() >= {
        "Created": "True",
        "Succeeded": "True",
    }.items()
    header = jobs.kubectl("get", "ctj").stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "PROGRESS", "STEP", "LOSS", "EVAL", "RESTARTS", "AGE"]
    reasons = [e["reason"] for e in jobs.events("tiny-cpu")]
    assert {"Created", "Running", "Succeeded"} <= set(reasons), reasons

    # the adapter is on the volume, the loss went down, and the status tells the run's last numbers
    listing = jobs.on_volume("tiny-cpu", trainer_image, "ls /checkpoints/final; cat /checkpoints/metrics.jsonl")
    assert "adapter_model.safetensors" in listing and "adapter_config.json" in listing
    losses = [json.loads(line)["loss"] for line in listing.splitlines() if line.startswith("{") and '"loss"' in line]
    assert losses[-1] < losses[0] / 4, (losses[0], losses[-1])
    assert done["progress"]["loss"] == pytest.approx(losses[-1], rel=1e-3)


def test_a_deleted_trainer_pod_resumes_from_its_checkpoint(operator, jobs, trainer_image):
    """Two trainer pods one after the other (the second resumes from the volume): about 40 s of pod starts
    and 120 short steps."""
    jobs.apply(manifest("resume", *SHORT, "training.maxSteps=120"))
    wait_for(lambda: (jobs.status("resume").get("checkpoint") or {}).get("step", 0) >= 20, "a checkpoint", 300)
    saved = jobs.status("resume")["checkpoint"]["step"]
    jobs.kubectl("delete", "pod", "-l", "batch.kubernetes.io/job-name=resume-a1", "--wait=false")

    restarting = jobs.wait_phase("resume", "Restarting", "Running", "Succeeded", timeout=120)
    done = jobs.wait_phase("resume", "Succeeded", timeout=600)
    assert done["restarts"] == 1 and done["attempt"] == 2, restarting
    assert [j["metadata"]["name"] for j in jobs.children("job", "resume")] == ["resume-a1", "resume-a2"]
    resumed = [json.loads(line) for line in jobs.logs("resume-a2").splitlines() if '"resumed"' in line]
    assert resumed and resumed[0]["step"] >= saved > 0, jobs.logs("resume-a2")[-2000:]
    reasons = [e["reason"] for e in jobs.events("resume")]
    assert "Retrying" in reasons and "Resumed" in reasons, reasons


def test_a_missing_data_file_fails_at_once_with_the_trainers_message_and_is_deleted_after_its_ttl(operator, jobs):
    jobs.apply(
        manifest("nodata", *SHORT, "data.train=[configs/data/missing.jsonl]", "runPolicy.ttlSecondsAfterFinished=5")
    )
    failed = jobs.wait_phase("nodata", "Failed", timeout=240)
    assert "configs/data/missing.jsonl" in failed["message"] and "data.train" in failed["message"], failed
    assert "Traceback" not in failed["message"]
    assert "data.train" in jobs.kubectl("get", "ctj", "nodata", "-o", "wide").stdout  # the MESSAGE column
    assert failed["restarts"] == 0 and len(jobs.children("job", "nodata")) == 1
    assert any(e["reason"] == "InvalidJob" and e["type"] == "Warning" for e in jobs.events("nodata"))
    # ttlSecondsAfterFinished: the job and, through its ownerReferences, its children go
    wait_for(lambda: jobs.kubectl("get", "ctj", "nodata", check=False).returncode != 0, "TTL deletion", 60)
    wait_for(lambda: not jobs.children("configmap", "nodata") and not jobs.children("job", "nodata"), "GC", 60)


def test_a_crash_at_start_is_retried_after_a_pause_and_said_once(operator, jobs):
    """The MLflow server is down (nothing listens at the URI): each attempt exits 1 at start. The second
    waits out 10 s from the first's end, says when; then backoffLimit 1 fails the job. Before, the next
    attempt was made the moment one failed, and an outage of a minute spent the whole backoffLimit."""
    down = "tracking={mlflow: {trackingUri: 'http://127.0.0.1:9'}}"
    jobs.apply(manifest("noserver", *SHORT, down, "runPolicy.backoffLimit=1"))
    paused = jobs.wait_phase("noserver", "Restarting", timeout=240)
    assert paused["attempt"] == 1 and paused["crashes"] == 1 and paused["nextAttemptAt"], paused
    assert "spec.tracking.mlflow.trackingUri" in paused["message"] and "after a 10 s pause" in paused["message"]
    failed = jobs.wait_phase("noserver", "Failed", timeout=240)
    assert failed["crashes"] == 2 and "runPolicy.backoffLimit 1 reached" in failed["message"], failed
    assert "nextAttemptAt" not in failed

    pods = jobs.kubectl("get", "pod", "-l", "batch.kubernetes.io/job-name=noserver-a1", "-o", "json").stdout
    (pod,) = json.loads(pods)["items"]
    ended = pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    (second,) = [j for j in jobs.children("job", "noserver") if j["metadata"]["name"] == "noserver-a2"]
    waited = parse_ts(second["metadata"]["creationTimestamp"]) - parse_ts(ended)
    assert waited.total_seconds() >= 10, (ended, second["metadata"]["creationTimestamp"])
    retries = [e["message"] for e in jobs.events("noserver") if e["reason"] == "Retrying"]
    assert len(retries) == 1 and f"attempt 2 starts at {paused['nextAttemptAt']}" in retries[0], retries


def test_the_operator_killed_mid_job_creates_no_duplicates_and_the_status_converges(operator, jobs):
    """Waits for the attempt to fail with no operator, then a second attempt to finish: two trainer pods."""
    jobs.apply(manifest("crashy-op", *SHORT, "training.maxSteps=80"))
    jobs.wait_phase("crashy-op", "Running", timeout=240)
    operator.kill()
    jobs.kubectl("delete", "pod", "-l", "batch.kubernetes.io/job-name=crashy-op-a1", "--wait=false")
    # the attempt fails while no operator is watching
    wait_for(
        lambda: (
            jobs.kubectl(
                "get", "job", "crashy-op-a1", "-o", 'jsonpath={.status.conditions[?(@.type=="Failed")].status}'
            ).stdout
            == "True"
        ),
        "attempt 1 to fail with no operator",
        120,
    )
    operator.start()
    done = jobs.wait_phase("crashy-op", "Succeeded", timeout=600)
    assert len(jobs.children("pvc", "crashy-op")) == 1
    assert jobs.children("service", "crashy-op") == []  # one node: no rendezvous Service, before or after
    assert [j["metadata"]["name"] for j in jobs.children("job", "crashy-op")] == ["crashy-op-a1", "crashy-op-a2"]
    configs = [c["metadata"]["name"] for c in jobs.children("configmap", "crashy-op")]
    assert configs == ["crashy-op-a1-config", "crashy-op-a2-config"]  # one job file per attempt
    assert done["restarts"] == 1


def test_suspend_holds_the_pods_and_resume_runs_them(operator, jobs):
    jobs.apply(manifest("paused", *SHORT, "runPolicy.suspend=true"))
    st = jobs.wait_phase("paused", "Suspended", timeout=60)
    assert st["attempt"] == 1
    wait_for(lambda: jobs.children("job", "paused"), "the attempt Job")
    assert jobs.kubectl("get", "pods", "-l", "codex.ml/job-name=paused", "-o", "name").stdout == ""
    jobs.kubectl("patch", "ctj", "paused", "--type", "merge", "-p", '{"spec": {"runPolicy": {"suspend": false}}}')
    jobs.wait_phase("paused", "Running", "Succeeded", timeout=240)
    jobs.kubectl("patch", "ctj", "paused", "--type", "merge", "-p", '{"spec": {"runPolicy": {"suspend": true}}}')
    jobs.wait_phase("paused", "Suspended", "Succeeded", timeout=120)


def test_a_deadline_fails_the_job(operator, jobs):
    jobs.apply(manifest("late", *SHORT, "training.maxSteps=100000", "runPolicy.activeDeadlineSeconds=25"))
    failed = jobs.wait_phase("late", "Failed", timeout=180)
    assert "activeDeadlineSeconds" in failed["message"]
    assert failed["restarts"] == 0


def test_deleting_the_job_removes_its_children_but_a_retained_volume_stays(operator, jobs):
    jobs.apply(manifest("gone", *SHORT, "runPolicy.suspend=true"))
    jobs.apply(manifest("kept", *SHORT, "runPolicy.suspend=true", "storage.retain=true"))
    for name in ("gone", "kept"):
        wait_for(lambda n=name: jobs.children("job", n), f"{name}'s attempt")
    # no finalizer: deleting a job never waits for the operator to be up
    assert not jobs.get("gone")["metadata"].get("finalizers")
    jobs.kubectl("delete", "ctj", "gone", "kept")
    for kind in ("job", "configmap", "service"):
        wait_for(lambda k=kind: not jobs.children(k, "gone") and not jobs.children(k, "kept"), f"{kind}s deleted", 60)
    wait_for(lambda: not jobs.children("pvc", "gone"), "gone's volume deleted", 60)
    assert [p["metadata"]["name"] for p in jobs.children("pvc", "kept")] == ["kept-checkpoints"]


def test_operator_metrics_count_jobs_by_phase_and_api_calls(operator, jobs):
    jobs.apply(manifest("counted", *SHORT, "runPolicy.suspend=true"))
    jobs.wait_phase("counted", "Suspended", timeout=60)

    def suspended_jobs() -> float:
        for line in (operator.metrics() or "").splitlines():
            if line.startswith('codex_operator_jobs{phase="Suspended"}'):
                return float(line.split()[-1])
        return 0.0

    wait_for(lambda: suspended_jobs() >= 1, "the jobs-by-phase gauge to count the suspended job")
    text = operator.metrics() or ""
    assert "codex_operator_reconcile_seconds_count" in text
    assert 'codex_operator_api_calls_total{kind="Job",outcome="ok",verb="create"}' in text
    # the attempt Jobs a reconcile needs come from the watch (the informer's index), never from a LIST per
    # reconcile: the informer lists them once when it starts (again only if its watch falls 410 Gone behind)
    calls = [line for line in text.splitlines() if line.startswith("codex_operator_api_calls_total{")]
    job_lists = [line for line in calls if 'kind="Job"' in line and 'verb="list"' in line]
    assert sum(float(line.split()[-1]) for line in job_lists) <= 2, calls
    assert any('kind="Job"' in line and 'verb="watch"' in line for line in calls), calls
    # rank 0 and why pods wait come from a watch of the trainer pods, which the chart's RBAC allows
    assert any('kind="Pod"' in line and 'outcome="ok"' in line and 'verb="watch"' in line for line in calls), calls


COMPARE = """
import sys
from safetensors.torch import load_file
a = load_file("/a/final/adapter_model.safetensors")
b = load_file("/b/final/adapter_model.safetensors")
assert a.keys() == b.keys(), (sorted(a), sorted(b))
print("max_abs_diff", max((a[k] - b[k]).abs().max().item() for k in a))
"""


def test_two_nodes_rendezvous_through_the_service_and_match_one_node_with_twice_the_batch(
    operator, jobs, trainer_image
):
    """Two jobs of 12 steps each (one of two pods, one of one pod), then a pod comparing the adapters: the
    time is three pods starting torch on a 2-core node and the gloo rendezvous, not the training."""
    same = ("training.maxSteps=12", "checkpoint.everySteps=6", "eval.everySteps=6", "peft.dropout=0",
            "resources={requests: {cpu: 250m, memory: 1Gi}, limits: {memory: 3Gi}}")  # fmt: skip
    jobs.apply(manifest("two", *same, "numNodes=2", "training.batchSize=4"))
    jobs.apply(manifest("one", *same, "numNodes=1", "training.batchSize=8"))
    two = jobs.wait_phase("two", "Succeeded", timeout=600)
    jobs.wait_phase("one", "Succeeded", timeout=600)
    assert two["restarts"] == 0
    (attempt,) = jobs.children("job", "two")
    assert attempt["spec"]["completions"] == 2 and attempt["status"]["succeeded"] == 2
    assert '"world_size": 2' in jobs.on_volume("two", trainer_image, "cat /checkpoints/run.json")

    claims = {"/a": "two-checkpoints", "/b": "one-checkpoints"}
    out = jobs.run_pod("compare", trainer_image, ["python3", "-c", COMPARE], claims)
    diff = float(out.split("max_abs_diff")[-1])
    assert diff < 1e-5, out


def test_a_job_reads_its_data_from_an_existing_claim_mounted_read_only(operator, jobs, trainer_image):
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "corpus"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Mi"}}}}  # fmt: skip
    jobs.apply(json.dumps(claim))
    script = "cp /app/configs/data/tiny-code.jsonl /corpus/train.jsonl"
    jobs.run_pod("writer", trainer_image, ["sh", "-c", script], {"/corpus": "corpus"})
    jobs.apply(manifest("fromclaim", *SHORT, "data.existingClaim=corpus", "data.train=[/data/train.jsonl]"))
    done = jobs.wait_phase("fromclaim", "Succeeded", timeout=300)
    assert done["restarts"] == 0
    (attempt,) = jobs.children("job", "fromclaim")
    mounts = attempt["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in mounts


def test_progress_read_through_the_api_server_by_an_operator_outside_the_cluster(cluster, crd, trainer_image, tmp_path):
    """The laptop path: `codex-operator run` on this machine reads rank 0's metrics through the API
    server's pods/proxy (the suite's own operator runs in the cluster and reads them by pod IP). It
    watches namespaces of its own (p-*), so the suite's operator and this one never share a job. A
    200-step job, so progress is read through the proxy several times (about 30 s, 90 s under a hog)."""
    from conftest import OperatorProcess

    ns = f"p-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    op = OperatorProcess(Path(cluster.kubeconfig), trainer_image, tmp_path / "op.log", namespaces="p-*", via="proxy")
    op.start()
    try:
        jobs = Jobs(cluster, ns)
        jobs.apply(manifest("viaproxy", *SHORT, "training.maxSteps=200"))
        seen = wait_for(lambda: (jobs.status("viaproxy").get("progress") or {}).get("step"), "progress via proxy", 300)
        done = jobs.wait_phase("viaproxy", "Succeeded", timeout=300)
        assert seen > 0 and done["progress"]["stepText"] == "200/200"
        assert 'codex_operator_api_calls_total{kind="pods/proxy",outcome="ok",verb="get"}' in (op.metrics() or "")
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_progress_writes_over_their_budget_wait_their_turn_and_every_job_shows_its_progress(
    cluster, crd, trainer_image, tmp_path
):
    """An operator allowed one progress write a round (--progress-writes-per-second 0.5 × a 2 s interval)
    and two jobs training at once: some readings wait for a later round (its deferred counter), and both
    jobs still show their progress while they run and their final numbers. Its own namespaces (b-*)."""
    from conftest import OperatorProcess

    ns = f"b-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    op = OperatorProcess(Path(cluster.kubeconfig), trainer_image, tmp_path / "op.log", namespaces="b-*",
                         extra=("--progress-writes-per-second", "0.5"))  # fmt: skip
    op.start()
    try:
        jobs = Jobs(cluster, ns)
        names = ("budget-a", "budget-b")
        for name in names:
            jobs.apply(manifest(name, *SHORT, "training.maxSteps=200"))
        seen: dict[str, int] = {}

        def both_moving() -> bool:
            for name in names:
                st = jobs.status(name)
                if st.get("phase") == "Running" and (st.get("progress") or {}).get("step"):
                    seen[name] = st["progress"]["step"]
            return len(seen) == 2

        wait_for(both_moving, "progress of both jobs while they run", 420, interval=1)
        for name in names:
            assert jobs.wait_phase(name, "Succeeded", timeout=600)["progress"]["stepText"] == "200/200"
        deferred = [
            float(line.split()[-1])
            for line in (op.metrics() or "").splitlines()
            if line.startswith("codex_operator_progress_writes_deferred_total")
        ]
        assert deferred and deferred[0] > 0, "no reading waited for its turn: the budget was never reached"
    finally:
        op.stop()
        print("the operator's log, its end:\n" + op.log.read_text()[-4000:])  # shown when the test fails
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
