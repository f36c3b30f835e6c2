"""Queues for real: Kueue v0.17.0 (built here, tests/cluster/kueue.py) admits, holds and preempts
CodexTrainingJobs on the kind cluster, with the real trainer image; and a stalled trainer is caught.

What a user watches: `kubectl get ctj`, its status, its Events and `kubectl describe`, the pods' logs and
the files on the volume. The module installs Kueue once (about 1 to 2 minutes once its binary is built)
with one ClusterQueue of 2 CPUs, and removes it at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_operator import COMPARE, Jobs, manifest

from codex_operator import names
from support import wait_for

pytestmark = pytest.mark.cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
import kueue as kueue_install  # noqa: E402

CLUSTER_QUEUE = "codex-cq"
LOW, HIGH = "codex-low", "codex-high"


def queue_objects() -> list[dict]:
    """A flavor, a ClusterQueue of 2 CPUs that preempts lower priorities, and two priorities."""
    group = "kueue.x-k8s.io/v1beta2"
    return [
        {"apiVersion": group, "kind": "ResourceFlavor", "metadata": {"name": "codex-flavor"}},
        {
            "apiVersion": group,
            "kind": "ClusterQueue",
            "metadata": {"name": CLUSTER_QUEUE},
            "spec": {
                "namespaceSelector": {},  # every namespace (null would admit from none)
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory"],  # every resource the pods request
                        "flavors": [
                            {
                                "name": "codex-flavor",
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "2"},
                                    {"name": "memory", "nominalQuota": "16Gi"},
                                ],
                            }
                        ],
                    }
                ],
                "preemption": {"withinClusterQueue": "LowerPriority"},
            },
        },
        {"apiVersion": group, "kind": "WorkloadPriorityClass", "metadata": {"name": LOW}, "value": 100},
        {"apiVersion": group, "kind": "WorkloadPriorityClass", "metadata": {"name": HIGH}, "value": 1000},
    ]


def local_queue(namespace: str, name: str = "team-a") -> str:
    return json.dumps(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": CLUSTER_QUEUE},
        }
    )


@pytest.fixture(scope="module")
def kueue(cluster, operator):
    if not hasattr(cluster, "bin"):
        pytest.skip("Kueue is installed by the kind harness (tests/cluster); this cluster was not made by it")
    took = kueue_install.install(cluster)
    print(f"Kueue installed and answering in {took:.0f} s")
    for obj in queue_objects():
        cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))
    yield cluster
    kueue_install.uninstall(cluster)


@pytest.fixture
def jobs(cluster, namespace):
    return Jobs(cluster, namespace)


@pytest.fixture
def queued(kueue, jobs):
    jobs.kubectl("apply", "-f", "-", input=local_queue(jobs.ns))
    return jobs


def attempt_job(jobs: Jobs, name: str, n: int = 1) -> dict:
    return json.loads(jobs.kubectl("get", "job", f"{name}-a{n}", "-o", "json").stdout)


def workloads(jobs: Jobs, name: str, n: int = 1) -> list[dict]:
    uid = attempt_job(jobs, name, n)["metadata"]["uid"]
    out = jobs.kubectl("get", "workloads.kueue.x-k8s.io", "-l", f"kueue.x-k8s.io/job-uid={uid}", "-o", "json")
    return json.loads(out.stdout)["items"]


def pods(jobs: Jobs, name: str, n: int = 1) -> list[dict]:
    out = jobs.kubectl("get", "pods", "-l", f"batch.kubernetes.io/job-name={name}-a{n}", "-o", "json").stdout
    return sorted(json.loads(out)["items"], key=lambda p: p["metadata"]["creationTimestamp"])


def condition(status: dict, ctype: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def stamp(ts: str) -> float:
    return time.mktime(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


def train(cpu: str, *more: str) -> tuple[str, ...]:
    return ("checkpoint.everySteps=10", "eval.everySteps=1000", "peft.dropout=0",
            f"resources={{requests: {{cpu: {cpu}, memory: 1Gi}}, limits: {{memory: 3Gi}}}}", *more)  # fmt: skip


def test_a_full_queue_holds_the_next_job_whole_until_the_first_ends(queued, trainer_image):
    """Two jobs of 1.5 CPUs in a queue of 2: the second, of two nodes, waits as one Workload with no pod, is
    admitted when the first ends, and both succeed."""
    jobs = queued
    jobs.apply(manifest("first", *train("1500m", "training.maxSteps=200"), "runPolicy.queueName=team-a"))
    jobs.wait_phase("first", "Running", timeout=300)
    jobs.apply(manifest("pair", *train("750m", "training.maxSteps=12", "numNodes=2"), "runPolicy.queueName=team-a"))

    def waiting():
        st = jobs.status("pair")
        return st if st.get("phase") == "Suspended" and condition(st, "Suspended").get("reason") == "Queued" else None

    held = wait_for(waiting, "the second job to wait in its queue", 120)
    assert held["message"].startswith("waiting for admission in LocalQueue team-a"), held
    (wl,) = wait_for(lambda: workloads(jobs, "pair"), "the second job's Workload", 60)
    assert [ps["count"] for ps in wl["spec"]["podSets"]] == [2]  # one Workload for both ranks: all or nothing
    said = wait_for(lambda: "insufficient unused quota" in jobs.status("pair")["message"] and jobs.status("pair"),
                    "Kueue's words on why it waits", 90)  # fmt: skip
    assert "LocalQueue team-a: couldn't assign flavors" in said["message"], said
    assert attempt_job(jobs, "pair")["spec"]["suspend"] is True and not pods(jobs, "pair")

    jobs.wait_phase("first", "Succeeded", timeout=600)
    first_done = time.monotonic()
    wait_for(lambda: attempt_job(jobs, "pair")["spec"]["suspend"] is False, "the second job's admission", 120)
    admitted = time.monotonic()
    jobs.wait_phase("pair", "Running", timeout=300)
    running = time.monotonic()
    print(f"first Succeeded → second admitted {admitted - first_done:.1f} s → Running {running - admitted:.1f} s")
    done = jobs.wait_phase("pair", "Succeeded", timeout=600)
    assert done["restarts"] == 0 and done["attempt"] == 1
    assert {"Queued", "Admitted", "Running", "Succeeded"} <= {e["reason"] for e in jobs.events("pair")}


def test_a_preempted_job_checkpoints_and_resumes_at_that_step_with_the_weights_of_an_undisturbed_run(
    queued, trainer_image
):
    """A low-priority job runs; a high-priority one arrives with no room: Kueue evicts the low one, whose
    trainer checkpoints on SIGTERM; the high one succeeds; the low one is admitted again in the same attempt,
    continues at the very step it saved, and ends with the weights of the same job run undisturbed (which
    runs beside it, outside the queue: Kueue leaves a Job without a queue name alone)."""
    jobs = queued
    same = train("1500m", "training.maxSteps=300", "checkpoint.keepLast=40")  # the SIGTERM checkpoint stays
    jobs.apply(manifest("low", *same, "runPolicy.queueName=team-a", f"runPolicy.workloadPriorityClass={LOW}"))
    jobs.apply(manifest("straight", *same))
    wait_for(lambda: (jobs.status("low").get("checkpoint") or {}).get("step", 0) >= 10, "a checkpoint of low", 400)
    (pod,) = [p["metadata"]["name"] for p in pods(jobs, "low")]
    log = subprocess.Popen(
        [*_kubectl(jobs), "logs", "-f", pod], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )

    jobs.apply(manifest("high", *train("1500m", "training.maxSteps=20"), "runPolicy.queueName=team-a",
                        f"runPolicy.workloadPriorityClass={HIGH}"))  # fmt: skip

    def preempted():
        st = jobs.status("low")
        return st if condition(st, "Suspended").get("reason") == "Preempted" and st["phase"] == "Suspended" else None

    st = wait_for(preempted, "low to be preempted", 120)
    assert "preempted (not a failure): Preempted to accommodate a workload" in st["message"], st
    assert st["preemptions"] == 1 and st["restarts"] == 0 and not st.get("crashes"), st
    out, _ = log.communicate(timeout=180)  # the stream ends with the preempted trainer
    stopped = [json.loads(line) for line in out.splitlines() if '"stopped"' in line]
    assert stopped and stopped[-1]["signal"] == "SIGTERM", out[-3000:]
    saved = stopped[-1]["checkpoint_step"]
    (evicted,) = [c for wl in workloads(jobs, "low") for c in wl["status"]["conditions"] if c["type"] == "Evicted"]
    assert evicted["reason"] == "Preempted"

    jobs.wait_phase("high", "Succeeded", timeout=600)
    jobs.wait_phase("low", "Running", timeout=300)
    done = jobs.wait_phase("low", "Succeeded", timeout=900)
    assert done["attempt"] == 1 and done["restarts"] == 0 and done["preemptions"] == 1 and not done.get("crashes")
    resumed_pod = pods(jobs, "low")[-1]["metadata"]["name"]
    resumed_log = jobs.kubectl("logs", resumed_pod).stdout
    resumed = [json.loads(line) for line in resumed_log.splitlines() if '"resumed"' in line]
    assert resumed and resumed[0]["step"] == saved, resumed_log[-3000:]
    jobs.wait_phase("straight", "Succeeded", timeout=900)

    listing = jobs.on_volume(
        "low", trainer_image, f"stat -c %Y /checkpoints/checkpoints/step-{saved}; cat /checkpoints/metrics.jsonl"
    )
    written = int(listing.splitlines()[0])
    steps = [json.loads(line)["step"] for line in listing.splitlines()[1:] if '"loss"' in line]
    first_after = steps[steps.index(saved) + 1]
    assert steps == list(range(1, 301)) and first_after == saved + 1  # one line per step: none lost, none twice
    claims = {"/a": "low-checkpoints", "/b": "straight-checkpoints"}
    diff = float(jobs.run_pod("compare", trainer_image, ["python3", "-c", COMPARE], claims).split("max_abs_diff")[-1])
    assert diff <= 1e-6, diff

    described = jobs.kubectl("describe", "ctj", "low").stdout
    for reason in ("Admitted", "Running", "Preempted", "Resumed", "Succeeded"):
        assert reason in described, described
    preempted_at = stamp(evicted["lastTransitionTime"])
    print(f"preempted at step {saved}: checkpoint written {written - preempted_at:.0f} s after the eviction; "
          f"resumed at step {resumed[0]['step']}, first step logged {first_after}; "
          f"max |Δ| of weights {diff:.2e}")  # fmt: skip


def test_a_frozen_trainer_is_caught_by_the_progress_deadline_and_the_job_recovers(operator, jobs, trainer_image):
    """A trainer stopped with SIGSTOP makes no step: after runPolicy.progressDeadlineSeconds the job says
    Stalled (a condition and a Warning Event naming the last step), its attempt is stopped, and the next
    one resumes from the checkpoint and succeeds. The trainer is its container's init (PID 1), which no
    process inside the container may stop, so the signal comes from its node, as a hung kernel call or a
    dead mount would freeze it."""
    if not hasattr(jobs.cluster, "nodes"):
        pytest.skip("freezing a process needs the kind harness's nodes")
    jobs.apply(manifest("frozen", *train("500m", "training.maxSteps=300"), "runPolicy.progressDeadlineSeconds=30",
                        "runPolicy.terminationGracePeriodSeconds=10"))  # fmt: skip
    wait_for(lambda: (jobs.status("frozen").get("checkpoint") or {}).get("step", 0) >= 10, "a checkpoint", 400)
    (pod,) = pods(jobs, "frozen")
    freeze(jobs.cluster, pod)
    frozen_at = time.monotonic()

    st = wait_for(lambda: condition(jobs.status("frozen"), "Stalled") and jobs.status("frozen"), "Stalled", 120)
    caught = time.monotonic() - frozen_at
    stalled = condition(st, "Stalled")
    assert stalled["reason"] == "Stalled" and "(runPolicy.progressDeadlineSeconds 30)" in stalled["message"], st
    warnings = [e for e in jobs.events("frozen") if e["reason"] == "Stalled"]
    assert warnings and warnings[0]["type"] == "Warning" and "its last step, " in warnings[0]["message"]
    done = jobs.wait_phase("frozen", "Succeeded", timeout=900)
    assert done["attempt"] == 2 and done["crashes"] == 1 and condition(done, "Stalled")["status"] == "False"
    resumed = [json.loads(line) for line in jobs.logs("frozen-a2").splitlines() if '"resumed"' in line]
    assert resumed and resumed[0]["step"] >= 10
    print(f"frozen → Stalled in {caught:.0f} s (deadline 30 s); attempt 2 resumed at step {resumed[0]['step']}")


def test_with_kueue_managing_every_job_the_operator_never_fights_it(kueue, operator, jobs, trainer_image):
    """Kueue with manageJobsWithoutQueueName: true, the chart with kueue.manageJobsWithoutQueueName: true.
    A job without a queue name in a namespace with a LocalQueue named `default` gets that queue from
    Kueue and runs; in a namespace with none it waits, suspended by Kueue, and the operator leaves it so."""
    kueue_install.install(kueue, manage_jobs_without_queue_name=True)
    operator.install(kueue={"manageJobsWithoutQueueName": True})
    try:
        jobs.kubectl("apply", "-f", "-", input=local_queue(jobs.ns, "default"))
        jobs.apply(manifest("plain", *train("500m", "training.maxSteps=12")))
        done = jobs.wait_phase("plain", "Succeeded", timeout=600)
        assert attempt_job(jobs, "plain")["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "default"
        assert done["restarts"] == 0

        other = f"{jobs.ns}-noq"
        kueue.kubectl("create", "namespace", other)
        try:
            alone = Jobs(kueue, other)
            alone.apply(manifest("alone", *train("500m", "training.maxSteps=12")))
            st = alone.wait_phase("alone", "Suspended", timeout=120)
            assert st["message"].startswith("waiting for admission in the queue"), st
            time.sleep(20)
            job = attempt_job(alone, "alone")
            assert job["spec"]["suspend"] is True and alone.status("alone")["phase"] == "Suspended"
            writers = {f.get("manager") for f in job["metadata"].get("managedFields") or [] if "spec" in
                       json.dumps(f.get("fieldsV1", {})) and f.get("operation") == "Update"}  # fmt: skip
            assert not any("kopf" in (w or "") or "codex" in (w or "") for w in writers), writers
        finally:
            kueue.kubectl("delete", "namespace", other, "--wait=false", check=False)
    finally:
        kueue_install.install(kueue, manage_jobs_without_queue_name=False)
        operator.install(kueue={"manageJobsWithoutQueueName": False})


def freeze(cluster, pod: dict) -> None:
    """SIGSTOP to a pod's trainer, from its node (crictl finds the container's process there)."""
    node, name = pod["spec"]["nodeName"], pod["metadata"]["name"]
    script = (f"id=$(crictl ps -q --label io.kubernetes.pod.name={name} "
              f"--label io.kubernetes.container.name={names.CONTAINER}) && "
              "kill -STOP $(crictl inspect -o go-template --template '{{.info.pid}}' $id)")  # fmt: skip
    subprocess.run(["docker", "exec", node, "sh", "-c", script], check=True, capture_output=True, text=True)


def _kubectl(jobs: Jobs) -> list[str]:
    c = jobs.cluster
    return [str(c.bin), "kubectl", "--kubeconfig", str(c.kubeconfig), "-n", jobs.ns]
