"""The API server, with the generated CRD, refuses exactly what `codex-train validate` refuses: each
manifest in tests/invalid is refused by `kubectl apply --dry-run=server` with the same words, the
examples pass, and the fields that cannot change safely (what a job's checkpoints, volume and queue depend
on) cannot change after it is created, while the rest can."""

from __future__ import annotations

import copy
import json
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from support import EXAMPLES, ROOT, TINY, without_empties

sys.path.insert(0, str(ROOT / "tests" / "invalid"))
from corpus import FILES, expectations  # noqa: E402

from codex_trainer.errors import SpecError  # noqa: E402
from codex_trainer.manifest import load_manifest, parse_manifest  # noqa: E402

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ns(cluster, crd):
    name = f"corpus-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def dry_run(cluster, ns: str, path: Path, *extra: str):
    return cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(path), *extra, check=False)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_the_api_server_refuses_it_with_the_same_words(cluster, ns, path):
    r = dry_run(cluster, ns, path)
    assert r.returncode != 0, f"{path.name} was accepted:\n{r.stdout}"
    for text in expectations(path, server=True):
        assert text in r.stderr, f"{path.name}: expected {text!r} in:\n{r.stderr}"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_the_examples_pass_and_the_server_fills_in_the_trainers_defaults(cluster, ns, path):
    r = dry_run(cluster, ns, path, "-o", "json")
    assert r.returncode == 0, r.stderr
    stored = json.loads(r.stdout)["spec"]
    local = load_manifest(path).spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert without_empties(stored) == without_empties(local)


def test_unknown_fields_are_pruned_silently_when_validation_is_off(cluster, ns):
    """Why docs/jobs.md says to keep kubectl's default (strict) field validation."""
    path = ROOT / "tests" / "invalid" / "unknown-field-nested.yaml"
    r = dry_run(cluster, ns, path, "--validate=false", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert "batchSze" not in json.loads(r.stdout)["spec"]["training"]


def test_kubectl_explain_shows_the_descriptions(cluster, crd):
    def explain(path: str) -> str:
        return " ".join(cluster.kubectl("explain", path).stdout.split())  # kubectl wraps lines

    assert "mounted read-only at /data in every trainer pod" in explain("codextrainingjob.spec.data.existingClaim")
    assert "'all-linear' must be the only item" in explain("ctj.spec.peft.targetModules")


QUANTITIES = ["1", "500m", "4Gi", "1.5G", "0.5", "1e3", "1E3", "+2", ".5Mi", "2.", "0", "100Ki", "1n", "3u", "12k"]
NOT_QUANTITIES = ["-1", "1.5.5", "Gi", ".", "1gi", "1 Gi", "1e", "0x10", "1Gib", "", "1K", "4GB", "1e3Gi", " 1"]
SOURCES = [
    "hf://Qwen/Qwen2.5-0.5B@main",
    "hf://gpt2",
    "hf://org/name@refs/pr/1",
    "hf://a_b.c-d/x.y",
    "./models/m",
    "scratch",
]
NOT_SOURCES = ["hf://", "hf://org/", "hf://-x/y", "hf://org/na me", "hf://a/b/c", "hf://org/name@", "hf://ünï/x",
               "hf://org/name\n", "hf://org/name@re v"]  # fmt: skip


GPU = "nvidia.com/gpu"
RESOURCES = [
    {"gpus": 2, "limits": {GPU: "2"}},
    {"gpus": 2, "limits": {GPU: "4"}},
    {"gpus": 1, "requests": {GPU: "1"}},
    {"gpus": 1, "requests": {GPU: "1000m"}},
    {"gpus": 2, "requests": {GPU: "1"}},
    {"limits": {GPU: "1"}, "requests": {GPU: "1"}},
    {"limits": {GPU: "2"}, "requests": {GPU: "1"}},
    {"requests": {GPU: "1"}},
    {"limits": {GPU: "1"}},
    {"gpus": 1, "limits": {GPU: "1500m"}},
    {"limits": {GPU: "500m"}},
    {"limits": {GPU: "1000m"}},
    {"limits": {GPU: "2"}, "requests": {GPU: "2000m"}},
]


ALLOW = "MLFLOW_ALLOW_FILE_STORE"
TRACKING = [  # what the spec's env may allow: MLflow's file store (a folder) where the pod's env says so
    {"tracking": {"mlflow": {"trackingUri": uri}}} | where
    for uri in ("file:///data/mlruns", "/data/mlruns", "mlruns", "sqlite:///data/m.db", "https://mlflow", "databricks")
    for where in (
        {},
        {"env": [{"name": ALLOW, "value": "true"}]},
        {"env": [{"name": ALLOW, "value": "no"}]},
        {"env": [{"name": ALLOW, "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]},
        {"envFrom": [{"configMapRef": {"name": "tracking"}}]},
    )
] + [{"tracking": {"mlflow": {"trackingUri": "/data/mlruns", "enabled": False}}}]


def locally_valid(manifest: dict) -> bool:
    try:
        parse_manifest(manifest)
    except SpecError:
        return False
    return True


@pytest.mark.parametrize(
    ("where", "value"),
    [("storage.size", q) for q in QUANTITIES + NOT_QUANTITIES]
    + [("model.source", s) for s in SOURCES + NOT_SOURCES]
    + [("metadata.name", n) for n in ["a", "a-1", "x" * 40, "x" * 41, "1a", "a-", "a.b", "A", "a\n"]]
    + [("resources", r) for r in RESOURCES]
    + [("spec", t) for t in TRACKING],
    ids=repr,
)
def test_the_api_server_and_the_trainer_agree(cluster, ns, where, value, monkeypatch):
    """The same verdict on each value, from both sides: a regex here, a CEL rule (isQuantity, matches, the
    quantity library) there."""
    monkeypatch.delenv(ALLOW, raising=False)  # the trainer's own env would allow a folder; the server knows none
    job = yaml.safe_load(TINY.read_text())
    if where == "storage.size":
        job["spec"]["storage"]["size"] = value
    elif where == "model.source":
        job["spec"]["model"] = {"source": value}  # (no config: only scratch takes one)
        if value == "scratch":
            job["spec"]["model"]["config"] = {"model_type": "llama"}
    elif where == "resources":
        job["spec"]["resources"] = value
    elif where == "spec":
        job["spec"] |= value
    else:
        job["metadata"]["name"] = value
    server_ok = apply(cluster, ns, job, "--dry-run=server").returncode == 0
    assert server_ok == locally_valid(job), f"{where}={value!r}: API server {server_ok}, trainer {not server_ok}"


def apply(cluster, ns: str, manifest: dict, *extra: str):
    # JSON, not YAML: PyYAML writes the string 1e3 unquoted and kubectl's YAML 1.2 reads it as a number
    return cluster.kubectl("apply", "-n", ns, "-f", "-", *extra, input=json.dumps(manifest), check=False)


def refused_as_immutable(r, field: str) -> None:
    assert r.returncode != 0, f"spec.{field} could be changed"
    assert f"spec.{field} is immutable: " in r.stderr and "; create a new job to change it" in r.stderr, r.stderr


def test_what_cannot_change_safely_is_refused_and_the_rest_is_accepted(cluster, ns):
    """Each field whose change could only end in a failure (or a fight with the volume or Kueue) is refused
    at `kubectl apply`, saying why; the fields the operator applies to a live job are accepted."""
    job = yaml.safe_load(TINY.read_text())
    job["metadata"]["name"] = "immutable"
    job["spec"]["runPolicy"] = {"suspend": True}  # an operator watching this cluster starts nothing
    r = apply(cluster, ns, job)
    assert r.returncode == 0, r.stderr

    changes = {
        "model": lambda s: s["model"]["config"].update(hidden_size=128),  # inside the free-form config
        "data": lambda s: s["data"].update(maxSeqLength=64),
        "peft": lambda s: s["peft"].update(r=4),
        "tokenizer": lambda s: s.update(tokenizer="hf://Qwen/Qwen2.5-0.5B"),
        "training.seed": lambda s: s["training"].update(seed=7),
        "training.batchSize": lambda s: s["training"].update(batchSize=4),
        "training.gradientAccumulation": lambda s: s["training"].update(gradientAccumulation=2),
        "numNodes": lambda s: s.update(numNodes=2),
        "processesPerNode": lambda s: s.update(processesPerNode=2),
        "storage.size": lambda s: s["storage"].update(size="2Gi"),
        "storage.storageClassName": lambda s: s["storage"].update(storageClassName="fast"),  # added
        "storage.existingClaim": lambda s: s["storage"].update(existingClaim="mine"),
        "runPolicy.queueName": lambda s: s["runPolicy"].update(queueName="team-a"),
    }
    for field, change in changes.items():
        changed = copy.deepcopy(job)
        change(changed["spec"])
        refused_as_immutable(apply(cluster, ns, changed, "--dry-run=server"), field)

    editable = {
        "training.maxSteps": lambda s: s["training"].update(maxSteps=600),  # it resumes from the checkpoints
        "training.learningRate": lambda s: s["training"].update(learningRate=1.0e-3),
        "storage.retain": lambda s: s["storage"].update(retain=True),
        "runPolicy.backoffLimit": lambda s: s["runPolicy"].update(backoffLimit=5),
        "runPolicy.maxDisruptions": lambda s: s["runPolicy"].update(maxDisruptions=3),
        "runPolicy.suspend": lambda s: s["runPolicy"].update(suspend=False),
    }
    for field, change in editable.items():
        changed = copy.deepcopy(job)
        change(changed["spec"])
        r = apply(cluster, ns, changed, "--dry-run=server")
        assert r.returncode == 0, f"spec.{field}: {r.stderr}"
    cluster.kubectl("delete", "-n", ns, "ctj", "immutable", "--wait=false", check=False)


def test_optional_immutable_fields_cannot_be_removed_or_changed(cluster, ns):
    job = yaml.safe_load(TINY.read_text())
    job["metadata"]["name"] = "immutable-set"
    job["spec"]["storage"] |= {"storageClassName": "fast", "existingClaim": "mine"}
    job["spec"]["runPolicy"] = {"suspend": True, "queueName": "team-a"}
    r = apply(cluster, ns, job)
    assert r.returncode == 0, r.stderr

    for field in ("storage.storageClassName", "storage.existingClaim", "runPolicy.queueName"):
        section, name = field.split(".")
        removed = copy.deepcopy(job)
        del removed["spec"][section][name]  # kubectl apply removes what its last-applied configuration had
        refused_as_immutable(apply(cluster, ns, removed, "--dry-run=server"), field)
        changed = copy.deepcopy(job)
        changed["spec"][section][name] = "other"
        refused_as_immutable(apply(cluster, ns, changed, "--dry-run=server"), field)

    retained = copy.deepcopy(job)
    retained["spec"]["storage"]["retain"] = True
    r = apply(cluster, ns, retained, "--dry-run=server")
    assert r.returncode == 0, r.stderr
    cluster.kubectl("delete", "-n", ns, "ctj", "immutable-set", "--wait=false", check=False)
