"""The CRD is generated from the spec models: the committed file must match, and what the API server
shows users (kubectl explain, get -o yaml, printer columns) must be complete."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from codex_operator import crd, names
from codex_trainer import fields as F
from codex_trainer import spec as S
from codex_trainer.runinfo import identity_changes, resume_identity
from support import EXAMPLES, without_empties


@pytest.fixture(scope="module")
def generated() -> dict:
    return crd.crd()


def schema_of(generated: dict) -> dict:
    return generated["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict, path: str = "spec"):
    """Every (path, schema) below node, through properties, items and map values."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def at(root: dict, path: str) -> dict:
    node = root
    for part in path.split("."):
        node = node["properties"][part]
    return node


def test_committed_crd_is_what_the_models_generate():
    committed = crd.OUTPUT.read_text() if crd.OUTPUT.is_file() else ""
    assert committed == crd.render(), f"{crd.OUTPUT.name} is out of date with codex_trainer/spec.py: run `make crds`"


def test_the_charts_copy_is_what_the_models_generate():
    committed = crd.CHART_OUTPUT.read_text() if crd.CHART_OUTPUT.is_file() else ""
    assert committed == crd.render_chart_template(), "charts/codex-operator/templates/crd.yaml: run `make crds`"


def test_the_charts_copy_differs_from_crds_only_by_its_wrapping_and_the_keep_annotation():
    lines = crd.render_chart_template().splitlines(keepends=True)
    assert lines[0].startswith("{{- /* Generated") and lines[1] == "{{- if .Values.crds.install }}\n"
    assert lines[-1] == "{{- end }}\n"
    body = "".join(lines[2:-1]).replace(f"  annotations:\n    {crd.KEEP}\n", "", 1)
    assert crd.HEADER + body == crd.render()


def test_the_check_flag_reports_drift(tmp_path, capsys):
    stale, chart = tmp_path / "crd.yaml", tmp_path / "chart-crd.yaml"
    stale.write_text("# old\n")
    paths = ["--output", str(stale), "--chart-output", str(chart)]
    assert crd.main(["--check", *paths]) == 1
    err = capsys.readouterr().err
    assert "make crds" in err and str(stale) in err and str(chart) in err
    assert crd.main(paths) == 0
    assert crd.main(["--check", *paths]) == 0
    chart.write_text(chart.read_text().replace("keep", "delete"))  # a hand edit of the chart's copy
    assert crd.main(["--check", *paths]) == 1
    assert str(chart) in capsys.readouterr().err


def test_names_come_from_the_shared_module(generated):
    s = generated["spec"]
    assert generated["metadata"]["name"] == names.CRD_NAME
    assert (s["group"], s["scope"], s["versions"][0]["name"]) == (names.GROUP, "Namespaced", names.VERSION)
    assert s["names"]["kind"] == names.KIND and s["names"]["plural"] == names.PLURAL
    assert s["names"]["shortNames"] == names.SHORT_NAMES and s["names"]["categories"] == names.CATEGORIES
    assert s["versions"][0]["subresources"] == {"status": {}}
    assert (F.NAME_PATTERN, F.MAX_NAME_LENGTH) == (names.NAME_PATTERN, names.MAX_NAME_LENGTH)
    spec = schema_of(generated)["properties"]["spec"]
    assert f"at {names.DATA_DIR} in every trainer pod" in at(spec, "data.existingClaim")["description"]


def test_printer_columns(generated):
    cols = {c["name"]: (c["type"], c["jsonPath"]) for c in generated["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert cols == {
        "Phase": ("string", ".status.phase"),
        "Progress": ("string", ".status.progress.percentText"),
        "Step": ("string", ".status.progress.stepText"),
        "Loss": ("number", ".status.progress.loss"),
        "Eval": ("number", ".status.progress.evalLoss"),
        "Restarts": ("integer", ".status.restarts"),
        "Age": ("date", ".metadata.creationTimestamp"),
        "Message": ("string", ".status.message"),
    }


def test_every_spec_field_has_a_description_for_kubectl_explain(generated):
    spec = schema_of(generated)["properties"]["spec"]
    missing = [path for path, node in walk(spec) if not path.endswith(("[]", "{}")) and not node.get("description")]
    assert not missing, f"fields without a description: {missing}"


def test_the_schema_is_structural(generated):
    """No $ref, no unions, no nulls, no `additionalProperties: false`; every node has a type."""
    text = yaml.safe_dump(generated)
    assert "$ref" not in text and "anyOf" not in text and "null" not in text and "title" not in text
    for path, node in walk(schema_of(generated)["properties"]["spec"]):
        assert "type" in node, path
        assert node.get("additionalProperties", {}) is not False, path
        if "exclusiveMinimum" in node or "exclusiveMaximum" in node:
            assert node["type"] == "number", path
            assert node.get("exclusiveMinimum", True) is True and node.get("exclusiveMaximum", True) is True


def test_users_see_the_shape_they_write(generated):
    spec = schema_of(generated)["properties"]["spec"]
    assert spec["required"] == ["model", "data"]
    assert at(spec, "data.train")["type"] == "array" and at(spec, "data.train")["minItems"] == 1
    assert at(spec, "peft.targetModules")["default"] == ["all-linear"]
    assert at(spec, "peft.method")["enum"] == ["lora", "none"]
    assert at(spec, "training.batchSize") | {"description": "", "x-kubernetes-validations": []} == {
        "type": "integer",
        "description": "",
        "minimum": 1,
        "default": 8,
        "x-kubernetes-validations": [],  # immutability: below
    }
    assert at(spec, "training.learningRate")["exclusiveMinimum"] is True
    assert at(spec, "data.validationFraction")["exclusiveMaximum"] is True
    assert at(spec, "imagePullPolicy")["enum"] == ["Always", "IfNotPresent", "Never"]
    assert "default" not in at(spec, "image")  # absent means the operator's image
    assert at(spec, "tolerations")["items"]["properties"]["operator"]["enum"] == ["Exists", "Equal"]
    assert at(spec, "affinity")["x-kubernetes-preserve-unknown-fields"] is True
    assert at(spec, "env")["items"]["required"] == ["name"]
    config = at(spec, "model.config")
    assert config["x-kubernetes-preserve-unknown-fields"] is True and config["required"] == ["model_type"]
    status = schema_of(generated)["properties"]["status"]
    assert status == status | {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_nested_sections_default_to_empty_so_the_server_fills_their_defaults(generated):
    spec = schema_of(generated)["properties"]["spec"]
    for section in ("peft", "training", "eval", "checkpoint", "tracking", "metrics", "resources", "storage"):
        assert at(spec, section)["default"] == {}, section
    assert at(spec, "storage.size")["default"] == "10Gi"
    assert at(spec, "runPolicy.backoffLimit")["default"] == 3


def apply_defaults(schema: dict, value):
    """What the API server's structural defaulting does to an object."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], v) for v in value]
    return value


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_the_servers_defaults_are_the_trainers_defaults(generated, path):
    """The spec the API server stores (its defaults filled in) is the spec the trainer resolves."""
    raw = yaml.safe_load(path.read_text())["spec"]
    stored = apply_defaults(schema_of(generated)["properties"]["spec"], copy.deepcopy(raw))
    local = S.JobSpec.model_validate(raw).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert S.JobSpec.model_validate(stored).model_dump(mode="json", by_alias=True, exclude_none=True) == local
    assert without_empties(stored) == without_empties(local)


def cel_rules(node: dict) -> list[str]:
    return [v["rule"] for v in node.get("x-kubernetes-validations", [])]


def test_cel_rules_for_what_the_structure_cannot_say(generated):
    root = schema_of(generated)
    spec = root["properties"]["spec"]
    assert any("scratch" in r and "has(self.config)" in r for r in cel_rules(at(spec, "model")))
    hf = [r for r in cel_rules(at(spec, "model.source")) if "matches" in r]
    assert hf and F.HF_PATTERN in hf[0] and hf == [r for r in cel_rules(at(spec, "tokenizer")) if "matches" in r]
    assert any("all-linear" in r for r in cel_rules(at(spec, "peft.targetModules")))
    for quantity in (at(spec, "storage.size"), at(spec, "resources.requests")["additionalProperties"]):
        assert any("isQuantity(self)" in r for r in cel_rules(quantity))
    assert f"self.metadata.name.size() <= {names.MAX_NAME_LENGTH}" in cel_rules(root)
    assert any(F.LABEL_VALUE_PATTERN in r for r in cel_rules(at(spec, "runPolicy.queueName")))
    assert at(spec, "runPolicy.queueName")["maxLength"] == 63


def immutability_rules(node: dict) -> list[dict]:
    return [v for v in node.get("x-kubernetes-validations", []) if "oldSelf" in v["rule"]]


def test_immutable_fields_have_their_rule_where_it_runs(generated):
    """A field that always has a value carries `self == oldSelf`; an optional one without a default is
    watched from its parent (adding and removing it are changes too), with a fieldPath naming it."""
    spec = schema_of(generated)["properties"]["spec"]
    on_field = ["model", "data", "peft", "training.seed", "training.batchSize", "training.gradientAccumulation"]
    on_field += ["numNodes", "processesPerNode", "storage.size"]
    on_parent = ["tokenizer", "storage.storageClassName", "storage.existingClaim", "runPolicy.queueName"]
    assert set(crd.IMMUTABLE) == set(on_field + on_parent)
    for path in on_field:
        assert immutability_rules(at(spec, path)) == [
            {"rule": "self == oldSelf", "message": crd.immutable_message(path)}
        ], path
    for path in on_parent:
        parent, _, name = path.rpartition(".")
        owner = at(spec, parent) if parent else spec
        rules = [r for r in immutability_rules(owner) if r.get("fieldPath") == f".{name}"]
        has = f"has(self.{name}) == has(oldSelf.{name})"
        assert rules == [
            {
                "rule": f"{has} && (!has(self.{name}) || self.{name} == oldSelf.{name})",
                "message": crd.immutable_message(path),
                "fieldPath": f".{name}",
            }
        ], path
        assert "default" not in at(spec, path), path
    for section in ("training", "storage", "runPolicy"):  # oldSelf.<section> always exists
        assert at(spec, section)["default"] == {}, section


def test_immutable_messages_say_why_and_what_to_do():
    for path in crd.IMMUTABLE:
        message = crd.immutable_message(path)
        assert re.fullmatch(rf"spec\.{re.escape(path)} is immutable: [^;]+; create a new job to change it", message)
    assert crd.immutable_message("training.seed") == (
        "spec.training.seed is immutable: checkpoints of this job were written with it; create a new job to change it"
    )


def test_only_the_fields_that_cannot_change_safely_are_immutable(generated):
    """No other transition rule: everything else (storage.retain, training.maxSteps, runPolicy.suspend ...)
    stays editable, and the operator applies it."""
    spec = schema_of(generated)["properties"]["spec"]
    found = []
    for path, node in walk(spec):
        for rule in immutability_rules(node):
            found.append((path + rule.get("fieldPath", "")).removeprefix("spec."))
    assert sorted(found) == sorted(crd.IMMUTABLE)


TRANSITION = re.compile(
    r"has\(self\.(\w+)\) == has\(oldSelf\.\1\) && \(!has\(self\.\1\) \|\| self\.\1 == oldSelf\.\1\)"
)


def refusals(schema: dict, new, old) -> list[str]:
    """The messages of the transition rules an update from `old` to `new` breaks, as the API server applies
    them: a rule runs where both objects have a value. Knows the two rule shapes crd.py writes, no other."""
    found = []
    for v in immutability_rules(schema) if new is not None and old is not None else []:
        m = TRANSITION.fullmatch(v["rule"])
        if v["rule"] == "self == oldSelf":
            ok = new == old
        elif m:
            ok = (m[1] in new) == (m[1] in old) and new.get(m[1]) == old.get(m[1])
        else:
            raise AssertionError(f"a transition rule this test cannot read: {v['rule']}")
        if not ok:
            found.append(v["message"])
    if isinstance(new, dict) and isinstance(old, dict):
        for name, sub in schema.get("properties", {}).items():
            found += refusals(sub, new.get(name), old.get(name))
    return found


EDITS = {
    "training.seed": 7,
    "training.batchSize": 4,
    "training.gradientAccumulation": 2,
    "numNodes": 2,
    "processesPerNode": 2,
    "storage.size": "2Gi",
    "storage.storageClassName": "fast",
    "storage.existingClaim": "mine",
    "runPolicy.queueName": "team-a",
    "peft.r": 4,
    "data.maxSeqLength": 64,
    "tokenizer": "hf://Qwen/Qwen2.5-0.5B",
    # editable
    "storage.retain": True,
    "training.maxSteps": 600,
    "training.learningRate": 1.0e-3,
    "runPolicy.backoffLimit": 5,
    "runPolicy.maxDisruptions": 3,
    "runPolicy.suspend": True,
    "checkpoint.everySteps": 25,
    "eval.everySteps": 10,
}
EDITABLE = {"storage.retain", "training.maxSteps", "training.learningRate", "checkpoint.everySteps", "eval.everySteps"}
EDITABLE |= {"runPolicy.backoffLimit", "runPolicy.maxDisruptions", "runPolicy.suspend"}


def edited(spec: dict, path: str, value) -> dict:
    spec = copy.deepcopy(spec)
    *parents, name = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[name] = value
    return spec


@pytest.mark.parametrize("path", sorted(EDITS))
def test_an_edit_is_refused_exactly_when_the_field_is_immutable(generated, path):
    schema = schema_of(generated)["properties"]["spec"]
    stored = apply_defaults(schema, copy.deepcopy(yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())["spec"]))
    new = apply_defaults(schema, edited(stored, path, EDITS[path]))
    assert refusals(schema, stored, stored) == []
    top = path.split(".")[0] if path.split(".")[0] in crd.IMMUTABLE else path
    assert refusals(schema, new, stored) == ([] if path in EDITABLE else [crd.immutable_message(top)])
    if path in ("storage.storageClassName", "storage.existingClaim", "runPolicy.queueName"):  # set, then removed
        assert refusals(schema, stored, new) == [crd.immutable_message(path)]


def test_what_the_checkpoints_depend_on_is_immutable(generated):
    """Every field the trainer's resume identity holds (runinfo.resume_identity) cannot change on a cluster:
    a change of one would only fail every attempt after it."""
    schema = schema_of(generated)["properties"]["spec"]
    stored = apply_defaults(schema, copy.deepcopy(yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())["spec"]))
    before = resume_identity(S.JobSpec.model_validate(stored), "digest")
    for path, value in EDITS.items():
        new = edited(stored, path, value)
        if identity_changes(before, resume_identity(S.JobSpec.model_validate(new), "digest")):
            assert refusals(schema, apply_defaults(schema, new), stored), f"spec.{path} can change on a cluster"
    for path in crd.IMMUTABLE:
        assert path in EDITS or path in ("model", "data", "peft"), path


def test_cel_iterations_and_matches_are_bounded(generated):
    """The API server refuses a CRD whose CEL cost it cannot bound: lists and strings a rule reads need limits."""
    for path, node in walk(schema_of(generated)["properties"]["spec"]):
        rules = " ".join(cel_rules(node))
        if node["type"] == "array" and rules:
            assert "maxItems" in node and "maxLength" in node["items"], path
        if node["type"] == "string" and re.search(r"matches|isQuantity|oldSelf", rules):
            assert "maxLength" in node, path
        for name in re.findall(r"oldSelf\.(\w+)", rules):  # a string compared by a rule on its parent
            if node["properties"][name]["type"] == "string":
                assert "maxLength" in node["properties"][name], f"{path}.{name}"
        values = node.get("additionalProperties")
        if node["type"] == "object" and isinstance(values, dict) and cel_rules(values):
            assert "maxProperties" in node, path


@pytest.mark.parametrize("pattern", [F.HF_PATTERN, F.QUANTITY_PATTERN, F.NAME_PATTERN, F.LABEL_VALUE_PATTERN])
def test_patterns_are_re2_safe_for_cel(pattern):
    """CEL `matches` uses RE2 inside a single-quoted CEL string: no backslashes, no quotes, no lookaround."""
    assert "\\" not in pattern and "'" not in pattern and "(?=" not in pattern
