"""Bad input: exit code 2 and one clear line naming the field and the fix, never a traceback."""

from __future__ import annotations

import json

import pytest

from codex_trainer.cli import main
from support import TINY, one_line, run_cli


@pytest.fixture
def data_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"content": f"row {i}"}) + "\n" for i in range(50)))
    gap = tmp_path / "gap.jsonl"
    gap.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"body": "b"}) + "\n")
    null = tmp_path / "null.jsonl"
    null.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": None}) + "\n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9\n".encode("latin-1"))
    (tmp_path / "folder.jsonl").mkdir()
    adapter = tmp_path / "final"  # a run's result: an adapter, no model
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"}))
    files = {"empty": empty, "other": other, "gap": gap, "null": null, "latin": latin, "adapter": adapter}
    return {k: str(v) for k, v in files.items()} | {
        "missing": str(tmp_path / "missing.jsonl"),
        "folder": str(tmp_path / "folder.jsonl"),
    }


# CASES pass through str.format: braces doubled
GPT2_64 = "model={{source: scratch, config: {{model_type: gpt2, n_embd: 32, n_layer: 1, n_head: 2, n_positions: 64}}}}"


CASES = {
    "unknown field": (["training.learningRat=0.1"], "spec.training.learningRat", "did you mean 'learningRate'"),
    "negative learning rate": (["training.learningRate=-0.001"], "spec.training.learningRate", "greater than 0"),
    "missing data file": (["data.train=[{missing}]"], "spec.data.train", "not found"),
    "empty data file": (["data.train=[{empty}]"], "spec.data.train", "empty"),
    "wrong textField": (["data.train=[{other}]"], "spec.data.textField", "fields there: content"),
    "maxSeqLength 0": (["data.maxSeqLength=0"], "spec.data.maxSeqLength", "greater than or equal to 2"),
    "peft.r 0": (["peft.r=0"], "spec.peft.r", "greater than 0"),
    "maxSteps not a number": (["training.maxSteps=lots"], "spec.training.maxSteps", "valid integer"),
    "fp16 on a CPU": (["training.precision=fp16"], "spec.training.precision", "needs a GPU"),
    "batch larger than the data": (["training.batchSize=100000"], "spec.training.batchSize", "lower batchSize"),
    "unknown target module": (["peft.targetModules=[nope_proj]"], "spec.peft.targetModules", "nope_proj"),
    "unknown module to save": (["peft.modulesToSave=[wte]"], "spec.peft.modulesToSave", "wte"),
    "tokenizer path absent": (["tokenizer=/no/such/tokenizer"], "spec.tokenizer", "neither hf://"),
    "data path is a directory": (["data.train=[{folder}]"], "spec.data.train", "is a directory"),
    "row without the text field": (["data.train=[{gap}]"], "spec.data.textField", "gap.jsonl' line 2"),
    "null text": (["data.train=[{null}]"], "spec.data.train", "line 2: field 'text' is null, not a string"),
    "txt not UTF-8": (["data.train=[{latin}]"], "spec.data.train", "not UTF-8 text: byte 0xe9 at offset 3"),
    "validationFraction leaves no training batch": (
        ["data.validationFraction=0.999"],
        "spec.data.validationFraction",
        "lower validationFraction",
    ),
    "an adapter as the model": (
        ["model={{source: '{adapter}'}}"],
        "spec.model.source",
        "holds a PEFT adapter (adapter_config.json), not a causal LM: name the adapter's base model here",
    ),
    "positions beyond GPT-2's n_positions": (
        [GPT2_64, "peft={{targetModules: [c_attn]}}"],
        "spec.data.maxSeqLength",
        "learned position embeddings (transformer.wpe) for 64 positions only",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_exits_2_naming_the_field(case, data_files, tmp_path, capsys, in_root):
    overrides, field, words = CASES[case]
    args = ["run", str(TINY), "--output-dir", str(tmp_path / "out"), "--set", "tracking.mlflow.enabled=false"]
    for o in overrides:
        args += ["--set", o.format(**data_files)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"invalid {field}:" in err, err
    assert words in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_the_real_process_exits_2_with_one_line(tmp_path):
    r = run_cli("run", str(TINY), "--output-dir", str(tmp_path), "--set", "peft.r=0", "--set", "training.seed=-1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [
        "codex-train: invalid spec.peft.r: Input should be greater than 0 (got 0)",
        "codex-train: invalid spec.training.seed: Input should be greater than or equal to 0 (got -1)",
    ]


def test_validate_prints_the_resolved_spec(capsys, in_root):
    assert main(["validate", str(TINY), "--set", "training.maxSteps=7"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["training"]["maxSteps"] == 7 and spec["training"]["scheduler"] == "cosine"


@pytest.mark.spawns
def test_a_hub_model_that_cannot_be_fetched_is_retryable_not_a_spec_error(tmp_path):
    """The Hub does not answer (an endpoint where nothing listens, so nothing leaves the machine): exit 1 and
    one line, so the operator retries rather than failing the job for good. Offline (HF_HUB_OFFLINE) with the
    model not in the cache: exit 1 too (the cache may be filled), saying where to put it."""
    overrides = ["--set", "model={source: hf://codex-test/absent}", "--set", "tokenizer=bytes"]
    down = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    r = run_cli("run", str(TINY), "--output-dir", str(tmp_path), *overrides, env=down)
    assert r.returncode == 1, r.stderr
    assert "could not fetch a causal LM 'hf://codex-test/absent' from the Hub (retryable)" in r.stderr
    assert "Traceback" not in r.stderr
    cache = tmp_path / "hub"
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    r = run_cli("run", str(TINY), "--output-dir", str(tmp_path / "o"), *overrides, env=offline)
    assert r.returncode == 1, r.stderr
    assert one_line(r.stderr).startswith(
        f"codex-train: could not fetch a causal LM 'hf://codex-test/absent': HF_HUB_OFFLINE is set and the Hugging "
        f"Face cache ({cache}) does not hold it; put it there (a resumed run needs the commit it started on, after "
        "the @), or unset HF_HUB_OFFLINE where the Hub can be reached (retryable)"
    )


@pytest.mark.spawns
def test_a_missing_data_file_is_a_spec_error_even_when_the_hub_cannot_be_reached(tmp_path):
    """Exit 2 naming the file, not 1 for the Hub: a script that retries on 1 would retry a job that can never
    run (found by a new-user check: `run` asked the Hub for the tokenizer first; `launch` already checked)."""
    overrides = ["--set", "tokenizer=hf://codex-test/absent", "--set", "data.train=[nope.jsonl]"]
    r = run_cli("run", str(TINY), "--output-dir", str(tmp_path), *overrides, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr
    assert "codex-train: invalid spec.data.train: file 'nope.jsonl' not found" in r.stderr, r.stderr
    assert "Hub" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "override, line",
    [
        ("data.train=[/no/such.jsonl]", "invalid spec.data.train: file '/no/such.jsonl' not found"),
        ("peft.targetModules=[nope_proj]", "invalid spec.peft.targetModules: no module named nope_proj"),
        ("data.maxSeqLength=1000000", "invalid spec.data.maxSeqLength: the training data makes"),
        ("data.train[0]=x.jsonl", "invalid --set: 'data.train[0]=x.jsonl': a list is set whole, not item by item"),
        ("resources.requests.cpu=2", "invalid spec.resources.requests.cpu: write the quantity in quotes, '2'"),
        ("training.batchSize=100000", "invalid spec.training.batchSize: the training data makes"),
        (
            "peft.modulesToSave=[embed]",
            "invalid spec.peft.modulesToSave: no module named embed in this model; its linear layers are down_proj, "
            "gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj, its embeddings embed_tokens",
        ),
        ("model.config.hidden_size=lots", "invalid spec.model.config: cannot build"),
    ],
)
def test_validate_checks_data_and_model_without_training(override, line, capsys, in_root):
    assert main(["validate", str(TINY), "--set", override]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"codex-train: {line}") and captured.err.count("\n") == 1, captured.err
    assert captured.out == ""


# A scratch config is completed from the tokenizer in one place (model.scratch_config) for `run` and `validate`
PHI3 = (
    "model.config={model_type: phi3, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, "
    "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 256}"
)


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "model.config.vocab_size=200",
            "invalid spec.model.config.vocab_size: is 200 but the tokenizer has 259 tokens",
        ),
        ("model.config.pad_token_id=300", "invalid spec.model.config: cannot build a causal LM from this config"),
        (  # builds, then fails at the first step: exit 1, retried as a crash on a cluster
            "model.config.num_key_value_heads=3",
            "invalid spec.model.config: a model built from this config cannot run: ",
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_validate_and_run_refuse_a_scratch_config_alike(command, override, line, tmp_path, capsys, in_root):
    out = ["--output-dir", str(tmp_path / "out")] if command == "run" else []
    assert main([command, str(TINY), *out, "--set", override, "--set", "tracking.mlflow.enabled=false"]) == 2
    ours = [x for x in capsys.readouterr().err.splitlines() if x.startswith("codex-train:")]  # transformers warns too
    assert len(ours) == 1 and ours[0].startswith(f"codex-train: {line}"), ours


def test_validate_says_what_run_would_say_of_fp16_on_a_cpu_and_of_no_validation(tmp_path, capsys, in_root):
    """Neither makes the job invalid (fp16 is right on a GPU node; a run without evaluation runs), but `run` here
    would refuse the one and warn of the other: `validate` says both."""
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "def f(x):\n    return x * 2\n" * 8}) + "\n")
    sets = ["--set", "training.precision=fp16", "--set", f"data.train=[{one}]", "--set", "data.maxSeqLength=32"]
    assert main(["validate", str(TINY), *sets, "--set", "training.batchSize=1"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    import torch

    gpu = torch.cuda.is_available()
    assert gpu or "not checked here: spec.training.precision: fp16 needs a GPU, which this machine has not" in err
    assert "no validation sequences, so evaluation will not run" in err


def test_validate_accepts_a_scratch_config_that_run_completes(capsys, in_root):
    """phi3's default pad_token_id (32000) lies beyond the byte tokenizer's vocabulary; `run` sets the
    tokenizer's, so `validate` must too."""
    linear = ["--set", "peft.targetModules=[all-linear]", "--set", "peft.modulesToSave=[]"]
    assert main(["validate", str(TINY), "--set", PHI3, *linear]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["model"]["config"]["model_type"] == "phi3"


QWEN = TINY.parent / "lora-qwen2.5-0.5b.yaml"


def test_validate_names_what_it_cannot_check_off_the_cluster_and_passes_a_valid_job(capsys, in_root):
    """The example's data is on data.existingClaim and its model on the Hub, which the tests cannot reach
    (HF_HUB_OFFLINE): neither is judged, each is named, and the job is valid (exit 0, the spec printed)."""
    assert main(["validate", str(QWEN)]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[0] == (
        "codex-train: not checked here: spec.data.train: '/data/train.jsonl' is on data.existingClaim "
        "'training-data', mounted at /data in the trainer pods only; the pods check it when they start"
    )
    assert any(
        "not checked here: spec.model.source: could not fetch a model config 'hf://Qwen/Qwen2.5-0.5B@main'" in x
        for x in lines
    ), lines
    assert "Traceback" not in captured.err and "invalid" not in captured.err
    assert json.loads(captured.out)["data"]["existingClaim"] == "training-data"


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["data.existingClaim=null"], "invalid spec.data.train: file '/data/train.jsonl' not found"),
        (["data.train=[/elsewhere/train.jsonl]"], "invalid spec.data.train: file '/elsewhere/train.jsonl' not found"),
        (["peft.r=0"], "invalid spec.peft.r: Input should be greater than 0"),
    ],
)
def test_validate_still_refuses_what_it_can_judge_in_a_cluster_job(overrides, line, capsys, in_root):
    """A missing file off the claim, or with no claim at all, and a bad field: exit 2 naming it."""
    args = ["validate", str(QWEN)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"codex-train: {line}" in err, err


@pytest.mark.parametrize(
    "overrides, fields",
    [
        (["data.train=[nope.jsonl]", "data.validation=[nope2.jsonl]"], ["spec.data.train", "spec.data.validation"]),
        (
            ["peft.targetModules=[qproj]", "peft.modulesToSave=[embed]"],
            ["spec.peft.targetModules", "spec.peft.modulesToSave"],
        ),
        (
            ["callbacks=[nope]", "data.train=[nope.jsonl]", "peft.modulesToSave=[embed]"],
            ["spec.callbacks", "spec.data.train", "spec.peft.modulesToSave"],
        ),
    ],
    ids=["train and validation files", "targetModules and modulesToSave", "callbacks, data and model"],
)
def test_validate_names_every_problem_not_only_the_first(overrides, fields, capsys, in_root):
    args = ["validate", str(TINY)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert [line.split(":")[1].removeprefix(" invalid ") for line in lines] == fields, captured.err
    assert captured.out == ""


@pytest.mark.parametrize("command", ["validate", "run"])
def test_validation_data_that_makes_no_sequence_is_refused_before_training(command, tmp_path, capsys, in_root):
    """Given data.validation, evaluation is asked for: data that cannot make one sequence is an input error,
    as too little training data is, not a warning followed by a run without evaluation."""
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "abc"}) + "\n")  # 3 tokens and an EOS
    out = ["--output-dir", str(tmp_path / "out")] if command == "run" else []
    args = [command, str(TINY), *out, "--set", f"data.validation=[{short}]", "--set", "tracking.mlflow.enabled=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "codex-train: invalid spec.data.validation: the validation data (1 example) is shorter than one sequence "
        "of maxSeqLength 128, so there would be no evaluation; add validation data, lower maxSeqLength, or remove "
        "data.validation to hold out validationFraction of the training data instead"
    ], err
    assert not (tmp_path / "out" / "checkpoints").exists()
