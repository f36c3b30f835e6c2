"""The chart on the real cluster: what it renders is accepted by the API server, two replicas hand over
without a duplicate child, `helm upgrade` mid-job loses nothing, `helm uninstall` keeps the CRD and the
jobs, and a Secret's value shows up nowhere a user or an operator log would print it.

The suite's `operator` fixture is this chart's release (conftest.HelmOperator): every test in
test_operator.py also runs against the operator in its pod, under the chart's RBAC."""

from __future__ import annotations

import json
import secrets

import pytest
import yaml
from test_operator import SHORT, Jobs, manifest

from chart_support import VALUE_SETS, render
from support import wait_for

pytestmark = pytest.mark.cluster

# prometheus-operator's kinds, so the server can take the monitors' dry run; their schema is not ours to check
STAND_IN_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }
    for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PodMonitor", "podmonitors"))
]  # fmt: skip


# where the value sets put the chart's namespaced objects
DRY_RUN_NAMESPACES = ("codex-system", "team-a", "team-b")


@pytest.fixture(scope="module")
def dry_run_targets(cluster):
    """The namespaces and prometheus-operator's kinds the dry runs need, made where missing and removed after:
    only what this made (a real ServiceMonitor CRD is never replaced), and a namespace only while it holds no
    Deployment, pod or Secret (the suite's operator may have been installed into codex-system meanwhile)."""

    def made(*args: str, input: str | None = None) -> bool:
        return cluster.kubectl("create", *args, input=input, check=False).returncode == 0  # False: it was there

    made_crds = [doc["metadata"]["name"] for doc in STAND_IN_CRDS if made("-f", "-", input=json.dumps(doc))]
    for name in made_crds:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    made_ns = [ns for ns in DRY_RUN_NAMESPACES if made("namespace", ns)]
    yield
    for ns in made_ns:
        held = cluster.kubectl("get", "deployments,pods,secrets", "-n", ns, "-o", "name", check=False)
        if held.returncode == 0 and not held.stdout.strip():
            cluster.kubectl("delete", "namespace", ns, "--timeout=60s", check=False)
    for name in made_crds:
        cluster.kubectl("delete", "crd", name, "--timeout=60s", check=False)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_what_the_chart_renders_is_accepted_by_the_api_server(cluster, crd, dry_run_targets, name):
    docs = render(VALUE_SETS[name])
    r = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs), check=False)
    assert r.returncode == 0, r.stderr
    assert len([line for line in r.stdout.splitlines() if "(server dry run)" in line]) == len(docs), r.stdout


def _leader_pod(operator) -> str:
    return wait_for(lambda: operator.leader() in {p["metadata"]["name"] for p in operator.pods()} and operator.leader(),
                    "a Lease holder among the operator pods", 60)  # fmt: skip


def writes(metrics_text: str | None) -> list[str]:
    """The API writes a replica's /metrics counts, but those on the Lease (a standby's only business)."""
    return [
        line
        for line in (metrics_text or "").splitlines()
        if line.startswith("codex_operator_api_calls_total")
        and any(f'verb="{v}"' in line for v in ("create", "patch", "delete", "update"))
        and 'kind="Lease"' not in line
    ]


def test_helm_upgrade_to_two_replicas_mid_job_then_the_leader_deleted_the_standby_finishes_it(operator, jobs):
    """A 600-step job outlasting a helm upgrade and a handover (about 1.5 min of training, 3 min under a CPU
    hog). As the first test to ask for the operator it also pays, in its setup, for building the images,
    loading the 6 GB trainer image into the node and installing the chart."""
    if not hasattr(operator, "helm"):
        pytest.skip("the operator runs as a process here (CODEX_OPERATOR=process), not from the chart")
    # long enough to outlast the upgrade and the handover on a slow machine (about 1.5 min of training)
    jobs.apply(manifest("handover", *SHORT, "training.maxSteps=600", "checkpoint.everySteps=100"))
    jobs.wait_phase("handover", "Running", timeout=240)
    try:
        operator.install(replicaCount=2)  # a helm upgrade with a changed value while the job runs
        first = _leader_pod(operator)
        (standby,) = [p["metadata"]["name"] for p in operator.pods() if p["metadata"]["name"] != first]
        assert writes(operator.metrics(standby)) == [], "a standby wrote to the API"
        assert "codex_operator_leader 0.0" in (operator.metrics(standby) or "")
        assert jobs.status("handover")["phase"] == "Running", "the job ended before the handover: make it longer"
        step = (jobs.status("handover").get("progress") or {}).get("step", 0)
        operator.kubectl("delete", "pod", first, "--wait=false")  # SIGTERM: it hands the Lease back
        wait_for(lambda: operator.leader() not in ("", first) and operator.leader(), "a new leader", 60)
        # the new leader acts: progress keeps moving, the job finishes in its first attempt
        wait_for(lambda: (jobs.status("handover").get("progress") or {}).get("step", 0) > step, "progress", 180)
        done = jobs.wait_phase("handover", "Succeeded", timeout=600)
        assert done["restarts"] == 0 and done["attempt"] == 1
        for kind in ("pvc", "configmap", "job"):
            assert len(jobs.children(kind, "handover")) == 1, kind
        assert jobs.children("service", "handover") == []  # one node: no rendezvous Service
        posted: dict[str, int] = {}  # reason -> how many times (the API server folds repeats into one Event)
        for e in jobs.events("handover"):
            posted[e["reason"]] = posted.get(e["reason"], 0) + (e.get("count") or 1)
        assert posted.get("Created") == 1 and posted.get("Succeeded") == 1, posted
        # the acting replica says so (read until it answers: under load a probe may restart a pod)
        wait_for(lambda: "codex_operator_leader 1.0" in (operator.metrics() or ""), "the leader's /metrics", 120)
    finally:
        operator.install(replicaCount=1)


def test_helm_uninstall_removes_the_operator_and_keeps_the_crd_and_the_jobs(cluster, operator, jobs):
    if not hasattr(operator, "helm"):
        pytest.skip("the operator runs as a process here (CODEX_OPERATOR=process), not from the chart")
    crd = json.loads(cluster.kubectl("get", "crd", "codextrainingjobs.codex.ml", "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # the chart's copy (crds.install)
    jobs.apply(manifest("outlives", *SHORT, "runPolicy.suspend=true"))
    jobs.wait_phase("outlives", "Suspended", timeout=120)
    try:
        operator.uninstall()
        wait_for(lambda: not operator.pods(), "the operator's pods gone", 120)
        assert "codex-operator" not in operator.kubectl("get", "deployments,serviceaccounts", "-o", "name").stdout
        assert cluster.kubectl("get", "crd", "codextrainingjobs.codex.ml", check=False).returncode == 0
        assert jobs.status("outlives")["phase"] == "Suspended"
    finally:
        operator.install()
    # the new release adopts both: the kept CRD and the job, which the operator picks up where it was
    jobs.kubectl("patch", "ctj", "outlives", "--type", "merge", "-p", '{"spec": {"runPolicy": {"suspend": false}}}')
    jobs.wait_phase("outlives", "Succeeded", timeout=300)


def test_a_job_stuck_pulling_the_charts_trainer_image_starts_once_helm_upgrade_sets_one_that_exists(operator, jobs):
    """The README's fix for `ErrImagePull`, the chart's `trainer.image`: the job that waited on the old image
    starts with the new one, in its next attempt, and trains to the end."""
    if not hasattr(operator, "helm"):
        pytest.skip("the operator runs as a process here (CODEX_OPERATOR=process), not from the chart")
    good = operator.values["trainer"]["image"]
    try:
        operator.install(trainer={"image": "codex.local/codex-trainer:not-there"})
        jobs.apply(manifest("pulls", *SHORT))
        wait_for(lambda: "codex-trainer:not-there" in (jobs.status("pulls").get("message") or ""),
                 "the pull failure in status.message", 180)  # fmt: skip
        assert jobs.status("pulls")["phase"] == "Pending"
        operator.install(trainer={"image": good})
        done = jobs.wait_phase("pulls", "Succeeded", timeout=400)
        assert done["attempt"] == 2 and not done.get("crashes") and not done.get("disruptions"), done
        assert "ImageChanged" in {e["reason"] for e in jobs.events("pulls")}
        (made,) = jobs.children("job", "pulls")
        assert made["spec"]["template"]["spec"]["containers"][0]["image"] == good
    finally:
        operator.install(trainer={"image": good})


def test_a_release_for_named_namespaces_serves_its_jobs_without_listing_namespaces(cluster, operator, jobs, namespace):
    """watchNamespaces (names, no pattern): the chart grants no namespace list, and the operator needs none. It
    serves the job with no ERROR line; before, kopf retried the refused list nine times (about a minute of ERROR
    lines, no job served) at every start."""
    if not hasattr(operator, "helm"):
        pytest.skip("the operator runs as a process here (CODEX_OPERATOR=process), not from the chart")
    try:
        operator.install(watchNamespacePatterns=[], watchNamespaces=[namespace])
        jobs.apply(manifest("named", *SHORT))
        jobs.wait_phase("named", "Succeeded", timeout=300)
        log = operator.logs()
        assert " ERROR " not in log and "Request attempt" not in log, log[-3000:]
    finally:
        operator.install(watchNamespacePatterns=["t-*"], watchNamespaces=[])


def test_a_secrets_value_is_in_no_configmap_status_event_log_or_file_on_the_volume(
    cluster, operator, jobs, namespace, trainer_image
):
    token = "hf_" + secrets.token_hex(16)  # made up here: it matches nothing anywhere else
    password = secrets.token_hex(12)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "stringData": {"HF_TOKEN": token, "MLFLOW_TRACKING_PASSWORD": password}}  # fmt: skip
    jobs.apply(json.dumps(secret))
    env = "[{name: HF_TOKEN, valueFrom: {secretKeyRef: {name: creds, key: HF_TOKEN}}}]"
    jobs.apply(
        manifest("secretive", *SHORT, "training.maxSteps=20", f"env={env}", "envFrom=[{secretRef: {name: creds}}]")
    )
    done = jobs.wait_phase("secretive", "Succeeded", timeout=300)

    # the trainer saw them (its pod's environment), and nothing a user or an operator prints holds them
    (attempt,) = jobs.children("job", "secretive")
    container = attempt["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "HF_TOKEN"}}} in container["env"]
    places = {
        "configmaps": jobs.kubectl("get", "configmaps", "-o", "yaml").stdout,
        "status": json.dumps(done),
        "events": jobs.kubectl("get", "events", "-o", "yaml").stdout,
        "describe": jobs.kubectl("describe", "ctj", "secretive").stdout,
        "trainer log": jobs.logs("secretive-a1"),
        "operator log": operator.logs() if hasattr(operator, "logs") else operator.log.read_text(),
    }
    for where, text in places.items():
        assert token not in text and password not in text, where
    # nor anything the trainer wrote: run.json, metrics.jsonl, the MLflow store, the checkpoints
    script = f"grep -rlF -e {token} -e {password} /checkpoints || echo none-found"
    assert jobs.on_volume("secretive", trainer_image, script).strip().endswith("none-found")


@pytest.fixture
def jobs(cluster, namespace):
    return Jobs(cluster, namespace)
