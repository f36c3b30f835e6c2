"""The job spec: what a user's YAML turns into, and the messages for what is wrong with it."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from codex_trainer.errors import SpecError
from codex_trainer.manifest import apply_overrides, load_manifest, parse_manifest, parse_yaml
from support import EXAMPLES, ROOT, TINY


def manifest(**spec) -> dict:
    base = {"model": {"source": "scratch", "config": {"model_type": "llama"}}, "data": {"train": ["d.jsonl"]}}
    return {
        "apiVersion": "codex.ml/v1alpha1",
        "kind": "CodexTrainingJob",
        "metadata": {"name": "t"},
        "spec": {**base, **spec},
    }


def problems(raw: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as e:
        parse_manifest(raw)
    return dict(e.value.problems)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_a_valid_manifest(path):
    m = load_manifest(path)
    assert m.kind == "CodexTrainingJob"


def test_defaults_are_filled_in():
    spec = parse_manifest(manifest()).spec
    assert spec.peft.method == "lora" and spec.peft.r == 8
    assert spec.training.max_steps is None and spec.training.epochs is None
    assert spec.data.packing is True and spec.data.text_field == "text"
    assert spec.tokenizer_source == "bytes"  # a scratch model needs no download
    assert spec.num_nodes == 1 and spec.run_policy.backoff_limit == 3


def test_tokenizer_defaults_to_the_models_own():
    raw = manifest(model={"source": "hf://Qwen/Qwen2.5-0.5B@main"})
    assert parse_manifest(raw).spec.tokenizer_source == "hf://Qwen/Qwen2.5-0.5B@main"


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"training": {"learningRate": -1}}, "spec.training.learningRate", "greater than 0"),
        ({"training": {"maxSteps": "twenty"}}, "spec.training.maxSteps", "valid integer"),
        ({"data": {"train": ["d.jsonl"], "maxSeqLength": 0}}, "spec.data.maxSeqLength", "greater than or equal to 2"),
        ({"data": {"train": ["d.jsonl"], "maxSeqLength": 1}}, "spec.data.maxSeqLength", "greater than or equal to 2"),
        ({"peft": {"r": 0}}, "spec.peft.r", "greater than 0"),
        ({"peft": {"method": "qlora"}}, "spec.peft.method", "'lora' or 'none'"),
        ({"training": {"batchSze": 4}}, "spec.training.batchSze", "did you mean 'batchSize'"),
        ({"data": {"train": ["d.jsonl"], "validationFraction": 1.5}}, "spec.data.validationFraction", "less than 1"),
        ({"model": {"source": "scratch"}}, "spec.model", "needs model.config"),
        ({"model": {"source": "hf://"}}, "spec.model.source", "hf://org/name"),
        ({"training": {"precision": "fp8"}}, "spec.training.precision", "'auto', 'fp32', 'bf16' or 'fp16'"),
        (
            {"data": {"train": "d.jsonl"}},
            "spec.data.train",
            "valid list (got 'd.jsonl'); write it as a list: [d.jsonl]",
        ),
        ({"data": {"train": []}}, "spec.data.train", "at least 1 item"),
        ({"peft": {"targetModules": "all-linear"}}, "spec.peft.targetModules", "write it as a list: [all-linear]"),
        ({"peft": {"targetModules": ["all-linear", "q_proj"]}}, "spec.peft.targetModules", "only item"),
        ({"resources": {"limits": {"memory": "4 GB"}}}, "spec.resources.limits.memory", "quantity"),
        ({"storage": {"size": "-1Gi"}}, "spec.storage.size", "quantity"),
        ({"storage": {"size": "Gi"}}, "spec.storage.size", "quantity"),
        ({"model": {"source": "hf://org/name\n"}}, "spec.model.source", "hf://org/name"),
        ({"resources": {"gpus": -1}}, "spec.resources.gpus", "greater than or equal to 0"),
        ({"runPolicy": {"ttlSecondsAfterFinished": -5}}, "spec.runPolicy.ttlSecondsAfterFinished", "greater than"),
        ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy", "'Always', 'IfNotPresent' or 'Never'"),
        ({"tolerations": [{"operator": "Maybe"}]}, "spec.tolerations.0.operator", "'Exists' or 'Equal'"),
        ({"env": [{"value": "x"}]}, "spec.env.0.name", "required field is missing"),
        ({"tokenizer": "hf://a b"}, "spec.tokenizer", "hf://org/name"),
        ({"model": {"source": "hf://Qwen/Qwen2.5-0.5B", "config": {"model_type": "qwen2"}}}, "spec.model", "only used"),
        ({"training": {"learningRate": float("inf")}}, "spec.training.learningRate", "finite number"),
        ({"training": {"epochs": float("inf")}}, "spec.training.epochs", "finite number"),
        ({"peft": {"alpha": float("nan")}}, "spec.peft.alpha", "finite number"),
        (
            {"data": {"train": ["d.jsonl"], "validation": ["v.jsonl", "d.jsonl"]}},
            "spec.data.validation",
            "also a training file",
        ),
    ],
)
def test_bad_fields_are_named_with_a_reason(spec, field, words):
    found = problems(manifest(**spec))
    assert field in found, found
    assert words in found[field]


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"training": {"maxSteps": "20"}}, "spec.training.maxSteps", "write the number without quotes, 20:"),
        ({"data": {"train": ["d.jsonl"], "packing": "on"}}, "spec.data.packing", "write true without quotes:"),
        ({"tracking": {"tensorboard": "yes"}}, "spec.tracking.tensorboard", "write true without quotes:"),
        ({"tracking": {"wandb": {"enabled": "false"}}}, "spec.tracking.wandb.enabled", "write false without quotes:"),
        ({"metrics": {"port": "9400"}}, "spec.metrics.port", "write the number without quotes, 9400:"),
        ({"resources": {"gpus": " 1 "}}, "spec.resources.gpus", "write the number without quotes, 1:"),
    ],
)
def test_a_quoted_number_or_boolean_is_refused_as_the_crd_refuses_it(spec, field, words):
    """The CRD types these fields integer and boolean, so kubectl apply refuses a string there."""
    found = problems(manifest(**spec))
    assert list(found) == [field], found
    assert found[field].startswith(words) and "not a string" in found[field], found[field]


@pytest.mark.parametrize(
    "spec, field, words",
    [
        ({"training": {"maxSteps": True}}, "spec.training.maxSteps", "write a number, not true: this field is an"),
        ({"training": {"learningRate": False}}, "spec.training.learningRate", "write a number, not false:"),
        ({"checkpoint": {"keepLast": True}}, "spec.checkpoint.keepLast", "write a number, not true:"),
        ({"data": {"train": ["d.jsonl"], "packing": 1}}, "spec.data.packing", "write true or false, not 1:"),
        ({"tracking": {"tensorboard": 0.0}}, "spec.tracking.tensorboard", "write true or false, not 0.0:"),
    ],
)
def test_a_boolean_for_a_number_or_a_number_for_a_boolean_is_refused_as_the_crd_refuses_it(spec, field, words):
    """YAML reads `on` and `yes` as true, and pydantic would take true as 1 (maxSteps: on trained one step); the
    CRD types these fields integer, number and boolean, so the API server refuses both."""
    found = problems(manifest(**spec))
    assert list(found) == [field], found
    assert found[field].startswith(words), found[field]


def test_a_boolean_for_a_number_in_a_set_value_is_refused():
    with pytest.raises(SpecError) as e:
        load_manifest(TINY, ["training.maxSteps=on"])
    assert [f for f, _ in e.value.problems] == ["spec.training.maxSteps"]


def test_a_quoted_number_in_a_file_is_refused_naming_the_field(tmp_path):
    job = yaml.safe_load(TINY.read_text())
    job["spec"]["training"]["maxSteps"] = "300"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    with pytest.raises(SpecError) as e:
        load_manifest(tmp_path / "job.yaml")
    assert [f for f, _ in e.value.problems] == ["spec.training.maxSteps"]


@pytest.mark.parametrize(
    "extra, key",
    [
        ("  training:\n    maxSteps: 7\n", "training"),  # a second block would replace the first whole
        ("", "maxSteps"),  # the same field twice in one block: one of the two values would be lost
    ],
)
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, extra, key):
    text = TINY.read_text()
    if not extra:
        text = text.replace("    maxSteps:", "    maxSteps: 9\n    maxSteps:", 1)
    (tmp_path / "job.yaml").write_text(text + extra)
    lines = (tmp_path / "job.yaml").read_text().splitlines()
    first = 1 + next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    second = 1 + next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:") and i + 1 > first)
    with pytest.raises(SpecError) as e:
        load_manifest(tmp_path / "job.yaml")
    assert f"'{key}' is given twice (lines {first} and {second})" in str(e.value), str(e.value)


def test_a_key_given_twice_in_a_set_value_is_refused():
    with pytest.raises(SpecError, match="'maxSteps' is given twice"):
        apply_overrides(yaml.safe_load(TINY.read_text()), ["training={maxSteps: 5, maxSteps: 6}"])


def test_a_quoted_float_is_refused_as_the_crd_refuses_it():
    """An unquoted 1e-4 is a number (below); a quoted one is a string, which the API server refuses for a
    number field, so validate does too, with the fix."""
    found = problems(manifest(training={"learningRate": "2e-4", "weightDecay": 0.01}))
    assert list(found) == ["spec.training.learningRate"], found
    assert found["spec.training.learningRate"].startswith(
        "write the number without quotes, 0.0002: this field is a number"
    )


@pytest.mark.parametrize(
    "written, value", [("1e-6", 1e-6), ("1E+5", 1e5), ("-2e3", -2000.0), ("1.5e6", 1.5e6), (".5e-1", 0.05)]
)
def test_a_number_with_an_exponent_is_a_number_as_kubectl_reads_it(tmp_path, written, value):
    """kubectl reads YAML 1.2, where 1e-6 is a number; PyYAML (1.1) wants a dot and a signed exponent. A
    model.config copied from a config.json (`rms_norm_eps: 1e-06`) must build the same model locally as on
    the cluster, not fail as a string."""
    text = TINY.read_text().replace(
        "      tie_word_embeddings: false", f"      tie_word_embeddings: false\n      rms_norm_eps: {written}"
    )
    (tmp_path / "job.yaml").write_text(text)
    spec = load_manifest(tmp_path / "job.yaml", [f"training.learningRate={written.lstrip('-')}"]).spec
    assert spec.model.config["rms_norm_eps"] == value and isinstance(spec.model.config["rms_norm_eps"], float)
    assert spec.training.learning_rate == abs(value)


@pytest.mark.parametrize("written", ["1e", "e5", "1e-6x", "1.2.3", "1e 5", "1_0e5"])
def test_what_is_not_a_number_stays_a_string(tmp_path, written):
    assert parse_yaml(f"name: {written}", "t")["name"] == written


def test_the_yaml_in_docs_jobs_md_is_valid():
    text = (ROOT / "docs" / "jobs.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    assert blocks
    for block in blocks:
        if "apiVersion" not in block:  # a fragment of a spec: added to a whole job
            block = manifest(**block["spec"])
        parse_manifest(block)


QUEUE_NAME = (
    "must be a Kubernetes label value (it becomes the label kueue.x-k8s.io/queue-name): letters, digits, "
    "'-', '_' and '.', beginning and ending with a letter or digit, at most 63 characters"
)


@pytest.mark.parametrize("name", ["team-a", "a", "A.b_c-9", "x" * 63, "9"])
def test_a_queue_name_that_is_a_label_value_is_accepted(name):
    assert parse_manifest(manifest(runPolicy={"queueName": name})).spec.run_policy.queue_name == name


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("team a", QUEUE_NAME),
        ("-team", QUEUE_NAME),
        ("team.", QUEUE_NAME),
        ("team/a", QUEUE_NAME),
        ("kueue.x-k8s.io/queue-name", QUEUE_NAME),
        ("team-a\n", QUEUE_NAME),  # Python's `$` would match before the newline; RE2's does not
        ("ünï", QUEUE_NAME),
        ("x" * 64, "at most 63 characters"),
        ("", "at least 1 character"),
    ],
)
def test_a_queue_name_must_be_a_label_value(name, words):
    found = problems(manifest(runPolicy={"queueName": name}))
    assert list(found) == ["spec.runPolicy.queueName"], found
    assert words in found["spec.runPolicy.queueName"]


def test_a_priority_class_must_be_a_label_value_and_the_message_names_its_label():
    assert parse_manifest(manifest(runPolicy={"workloadPriorityClass": "high"})).spec.run_policy.workload_priority_class
    found = problems(manifest(runPolicy={"workloadPriorityClass": "very high"}))
    assert list(found) == ["spec.runPolicy.workloadPriorityClass"], found
    assert "it becomes the label kueue.x-k8s.io/priority-class" in found["spec.runPolicy.workloadPriorityClass"]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("progressDeadlineSeconds", 0, "greater than 0"),
        ("terminationGracePeriodSeconds", 0, "greater than or equal to 1"),
        ("terminationGracePeriodSeconds", 86401, "less than or equal to 86400"),
    ],
)
def test_deadlines_out_of_range_are_refused_naming_the_field(field, value, words):
    found = problems(manifest(runPolicy={field: value}))
    assert list(found) == [f"spec.runPolicy.{field}"] and words in found[f"spec.runPolicy.{field}"], found


def test_max_disruptions_defaults_to_twenty_and_may_be_zero():
    assert parse_manifest(manifest()).spec.run_policy.max_disruptions == 20
    assert parse_manifest(manifest(runPolicy={"maxDisruptions": 0})).spec.run_policy.max_disruptions == 0
    assert parse_manifest(manifest(runPolicy={"maxDisruptions": 1000})).spec.run_policy.max_disruptions == 1000
    found = problems(manifest(runPolicy={"maxDisruptions": -1}))
    assert found == {"spec.runPolicy.maxDisruptions": "Input should be greater than or equal to 0 (got -1)"}, found
    found = problems(manifest(runPolicy={"maxDisruptions": "many"}))
    assert "valid integer" in found["spec.runPolicy.maxDisruptions"], found


@pytest.mark.parametrize(
    ("name", "words"),
    [("x" * 41, "at most 40 characters"), ("1job", "start with a lowercase letter"), ("Job", "lowercase")],
)
def test_job_names_leave_room_for_child_names(name, words):
    raw = manifest()
    raw["metadata"]["name"] = name
    assert words in problems(raw)["metadata.name"]


def test_metadata_the_api_server_would_refuse_is_refused_here_too():
    """Labels, annotation keys and the namespace follow the API server's own rules (the CRD cannot state them),
    so `validate` gives the answer `kubectl apply` would."""
    raw = manifest()
    raw["metadata"] |= {
        "namespace": "Team_A",
        "labels": {"team": "a b", "bad key!": "x", "example.com/ok": "fine", "empty": ""},
        "annotations": {"a/b/c": "x", "bad_prefix.example.com/x": "y", "Owner.Example.com/Team": "any value"},
    }
    found = problems(raw)
    assert "a namespace is at most 63 lowercase letters" in found["metadata.namespace"]
    labels = found["metadata.labels"]
    assert "label team: value 'a b'" in labels and "label key 'bad key!'" in labels and "example.com/ok" not in labels
    notes = found["metadata.annotations"]
    assert "'a/b/c' has more than one '/'" in notes and "'bad_prefix.example.com/x' its prefix" in notes
    assert "Owner.Example.com/Team" not in notes  # the API server takes annotation keys in any case
    good = manifest()
    good["metadata"] |= {"namespace": "team-a", "labels": {"app.kubernetes.io/name": "codex", "x": ""}}
    assert parse_manifest(good).metadata.labels == {"app.kubernetes.io/name": "codex", "x": ""}


def test_all_linear_becomes_the_peft_string_and_names_stay_a_list():
    spec = parse_manifest(manifest()).spec
    assert spec.peft.target_modules == ["all-linear"] and spec.peft.peft_target_modules == "all-linear"
    spec = parse_manifest(manifest(peft={"targetModules": ["q_proj"]})).spec
    assert spec.peft.peft_target_modules == ["q_proj"]


@pytest.mark.parametrize("q", ["1", "500m", "4Gi", "1.5G", "0.5", "1e3", "+2", ".5Mi"])
def test_kubernetes_quantities_are_accepted(q):
    spec = parse_manifest(manifest(resources={"requests": {"cpu": q}}, storage={"size": q})).spec
    assert spec.resources.requests["cpu"] == q and spec.storage.size == q


@pytest.mark.parametrize(
    ("request_", "limit", "refused"),
    [("1500m", "1", True), ("1Gi", "1024Mi", False), ("0.5", "500m", False), ("1e3", "999", True),
     ("2G", "2Gi", False), ("2Gi", "2G", True), ("+1k", "1000", False), ("1.9n", "1.5n", False),
     ("1234567890123456789012345678901", "1234567890123456789012345678900", True), ("1e1000000", "1Gi", False)],
)  # fmt: skip
def test_a_request_above_its_limit_is_refused_naming_both_as_a_pod_would_be(request_, limit, refused):
    """The API server takes such a job, then refuses its pods' Job (422): said at validate and apply instead.
    Compared as Kubernetes does (rounded up to 1n, exactly); one too large to reckon is left to the API server."""
    job = manifest(resources={"requests": {"cpu": request_}, "limits": {"cpu": limit}})
    if not refused:
        assert parse_manifest(job).spec.resources.limits == {"cpu": limit}
        return
    with pytest.raises(SpecError) as e:
        parse_manifest(job)
    [(field, message)] = e.value.problems
    assert field == "spec.resources.requests.cpu"
    assert message.startswith(f"{request_} is more than spec.resources.limits.cpu, {limit}: a pod may not request")


def test_cluster_only_fields_parse_into_typed_values():
    spec = parse_manifest(
        manifest(
            nodeSelector={"gpu": "h100"},
            tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            affinity={"nodeAffinity": {}},
            priorityClassName="high",
            imagePullSecrets=[{"name": "regcred"}],
            imagePullPolicy="Never",
            env=[{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            envFrom=[{"secretRef": {"name": "s"}}],
            resources={"gpus": 2},
            storage={"retain": True},
            runPolicy={"ttlSecondsAfterFinished": 0},
            data={"train": ["/data/a.jsonl"], "existingClaim": "corpus"},
        )
    ).spec
    assert spec.image is None and spec.resources.gpus == 2 and spec.storage.retain is True
    assert spec.tolerations[0].operator == "Exists" and spec.image_pull_secrets[0].name == "regcred"
    assert spec.env[1].value_from == {"secretKeyRef": {"name": "s", "key": "k"}}
    assert spec.run_policy.ttl_seconds_after_finished == 0 and spec.data.existing_claim == "corpus"


def test_unknown_fields_at_the_top_and_in_metadata_are_refused():
    raw = manifest()
    raw["specs"] = {}
    raw["metadata"]["lables"] = {}
    found = problems(raw)
    assert "specs" in found and "did you mean 'labels'" in found["metadata.lables"]


def test_every_problem_is_reported_at_once():
    found = problems(manifest(training={"learningRate": 0, "batchSize": -2}, peft={"r": 0}))
    assert {"spec.training.learningRate", "spec.training.batchSize", "spec.peft.r"} <= set(found)


def test_missing_required_fields_and_wrong_kind():
    raw = manifest()
    del raw["spec"]["data"]
    raw["kind"] = "TrainingJob"
    found = problems(raw)
    assert found["spec.data"] == "required field is missing"
    assert "kind" in found


def test_set_overrides_use_camel_case_paths_and_yaml_values():
    raw = apply_overrides(
        manifest(), ["training.maxSteps=20", "checkpoint.everySteps=5", "peft.targetModules=[q_proj, v_proj]"]
    )
    spec = parse_manifest(raw).spec
    assert spec.training.max_steps == 20
    assert spec.checkpoint.every_steps == 5
    assert spec.peft.target_modules == ["q_proj", "v_proj"]


def test_a_bad_override_is_refused():
    with pytest.raises(SpecError, match="PATH=VALUE"):
        apply_overrides(manifest(), ["training.maxSteps"])


def test_an_unreadable_file_is_a_spec_error(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_manifest(bad)
    with pytest.raises(SpecError, match="file not found"):
        load_manifest(tmp_path / "nope.yaml")


def test_spec_models_import_without_torch():
    """The operator image has no torch: the spec must not need it."""
    import subprocess

    code = "import sys; import codex_trainer.spec, codex_trainer.manifest; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_round_trip_through_yaml_keeps_camel_case():
    spec = load_manifest(TINY).spec
    dumped = yaml.safe_dump(spec.model_dump(mode="json", by_alias=True))
    assert "maxSeqLength" in dumped and "max_seq_length" not in dumped
    again = parse_manifest({**manifest(), "spec": yaml.safe_load(dumped)}).spec
    assert again == spec


@pytest.mark.parametrize(
    "uri",
    [
        "https://alice:s3cret-pw@mlflow.example.com",
        "http://s3cret-pw@mlflow:5000/",
        "databricks://s3cret-pw@ws",
        "http://mlflow:5000/?token=s3cret-pw",
        "https://mlflow.example.com/api?team=a&Access_Token=s3cret-pw",
        "http://mlflow:5000/?api-key=s3cret-pw#x",
        "http://mlflow:5000/?password=s3cret-pw",
        "http://mlflow:5000/?pwd=s3cret-pw",
        "http://mlflow:5000/path;token=s3cret-pw",
        "http://mlflow:5000/?X.Auth=s3cret-pw",
        "https://mlflow.example.com/#access_token=s3cret-pw",
        "https://mlflow.example.com/?team=a#state=x&id_token=s3cret-pw",
        # a name written with %-escapes hides the word (?%74oken= is ?token=; found by a new-user check)
        "https://mlflow.example.com/?%74oken=s3cret-pw",
        "http://mlflow:5000/?team=a&access%5Ftoken=s3cret-pw",
        "http://mlflow:5000/?jwt=s3cret-pw",
        "http://mlflow:5000/?Bearer=s3cret-pw",
    ],
)
def test_credentials_in_the_tracking_uri_are_refused_without_printing_them(uri):
    found = problems(manifest(tracking={"mlflow": {"trackingUri": uri}}))
    message = found["spec.tracking.mlflow.trackingUri"]
    assert "must not carry credentials" in message and "secretKeyRef" in message
    assert "s3cret-pw" not in str(found)


@pytest.mark.parametrize(
    "uri",
    [
        "http://mlflow:5000",
        "https://h/path@v2",
        "sqlite:///runs/mlflow.db",
        "databricks",
        "http://h/?team=a",
        "http://h/?design=x&author=y&monkey=z",
        "http://h/#section-2",
        "http://h/?q=100%25&path=a%2Fb",  # %-escapes in values are not names
        "http://h/my%20runs/?team=a",
    ],
)
def test_tracking_uris_without_credentials_are_accepted(uri):
    assert parse_manifest(manifest(tracking={"mlflow": {"trackingUri": uri}})).spec.tracking.mlflow.tracking_uri == uri


def test_an_env_value_is_shown_by_nothing_the_trainer_prints_or_writes(capsys):
    """run.json, MLflow's params and `codex-train validate` show the spec through JobSpec.shown()."""
    from codex_trainer.cli import main

    token = "hf_" + "x1y2" * 8
    env = f"env=[{{name: HF_TOKEN, value: {token}}}, {{name: HUB, valueFrom: {{secretKeyRef: {{name: s, key: k}}}}}}]"
    assert main(["validate", str(TINY), "--set", env]) == 0
    out = capsys.readouterr().out
    assert token not in out and '"value": "(set, not shown)"' in out and '"secretKeyRef"' in out
    spec = parse_manifest(manifest(env=[{"name": "HF_TOKEN", "value": token}])).spec
    assert token not in str(spec.shown()) and spec.env[0].value == token  # the pod still gets it


def test_the_rendezvous_port_is_refused_for_metrics_only_where_processes_meet_on_it():
    """Several processes meet on MASTER_PORT 29500, where rank 0 could not serve metrics (a new-user check:
    the pod failed naming a command-line flag); one process alone binds no port, so a job that served metrics
    there before is not refused now (an operator upgrade re-reads every stored job)."""
    assert parse_manifest(manifest(metrics={"port": 29500})).spec.metrics.port == 29500
    for world in ({"numNodes": 2}, {"processesPerNode": 2}):
        found = problems(manifest(metrics={"port": 29500}, **world))
        assert list(found) == ["spec.metrics.port"], found
        assert "rendezvous port (MASTER_PORT)" in found["spec.metrics.port"]
    assert parse_manifest(manifest(metrics={"port": 29501}, numNodes=2)).spec.metrics.port == 29501


@pytest.mark.parametrize("uri", ["file:///data/mlruns", "/data/mlruns", "mlruns"])
def test_a_tracking_uri_that_is_a_folder_is_refused_before_the_run_unless_an_env_allows_it(uri, monkeypatch):
    """MLflow's file store, which the trainer refuses at its start: `kubectl apply` accepted it and the pod then
    failed. Refused at the spec, as by the CRD's rule, unless MLFLOW_ALLOW_FILE_STORE may be true where it runs."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    tracking = {"mlflow": {"trackingUri": uri}}
    found = problems(manifest(tracking=tracking))
    assert list(found) == ["spec.tracking.mlflow.trackingUri"], found
    assert f"{uri} is a folder, which MLflow no longer writes runs to" in found["spec.tracking.mlflow.trackingUri"]
    assert problems(manifest(tracking=tracking, env=[{"name": "MLFLOW_ALLOW_FILE_STORE", "value": "no"}]))
    allowed = [
        {"env": [{"name": "MLFLOW_ALLOW_FILE_STORE", "value": "True"}]},  # the pod's env
        {"env": [{"name": "MLFLOW_ALLOW_FILE_STORE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]},
        {"envFrom": [{"configMapRef": {"name": "tracking"}}]},  # what it holds is known only in the pod
        {"tracking": {"mlflow": {"trackingUri": uri, "enabled": False}}},
    ]
    for other in allowed:
        assert parse_manifest(manifest(**{"tracking": tracking, **other})).spec.tracking.mlflow.tracking_uri == uri
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "1")  # a run on this machine, allowed in its shell
    assert parse_manifest(manifest(tracking=tracking)).spec.tracking.mlflow.tracking_uri == uri
    for uri in ("sqlite:///data/mlflow.db", "http://mlflow:5000", "databricks", "postgresql://db/mlflow"):
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
        assert parse_manifest(manifest(tracking={"mlflow": {"trackingUri": uri}}))
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")


def test_a_field_left_empty_or_set_to_null_takes_its_default_as_the_api_server_prunes_it(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(manifest(training={"maxSteps": 4, "warmupSteps": None, "learningRate": 1e-3})))
    job.write_text(job.read_text().replace("warmupSteps: null", "warmupSteps:"))
    assert "warmupSteps:\n" in job.read_text()
    spec = load_manifest(job, ["eval=null", "metadata.labels=null", "peft.r=~"]).spec
    defaults = parse_manifest(manifest()).spec
    assert spec.training.warmup_steps == defaults.training.warmup_steps
    assert spec.eval == defaults.eval and spec.peft.r == 8
    assert spec.training.max_steps == 4 and spec.training.learning_rate == 1e-3


def test_a_null_where_a_value_is_required_is_refused_naming_the_field():
    found = problems(manifest(data={"train": ["d.jsonl", None]}, model=None))
    assert found["spec.model"] == "required field is missing"
    assert "spec.data.train.1" in found
    # free-form mappings lose their nulls too (kubectl apply --dry-run=server shows it); a list keeps its items
    config = {"model_type": "llama", "rope_scaling": None, "nested": {"a": None, "b": [1, None]}}
    spec = parse_manifest(manifest(model={"source": "scratch", "config": config}, affinity={"nodeAffinity": None})).spec
    assert spec.model.config == {"model_type": "llama", "nested": {"b": [1, None]}}


def test_an_unquoted_date_is_the_string_written_as_kubectl_reads_it(tmp_path):
    job = tmp_path / "job.yaml"
    text = yaml.safe_dump(manifest(runPolicy={"queueName": "QUEUE"}, data={"train": ["DATA"]}))
    job.write_text(text.replace("QUEUE", "2026-12-01").replace("DATA", "2026-12-01 10:00:00"))
    spec = load_manifest(job).spec
    assert spec.run_policy.queue_name == "2026-12-01" and spec.data.train == ["2026-12-01 10:00:00"]
