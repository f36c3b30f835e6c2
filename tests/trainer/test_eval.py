"""codex-train eval on the result of a short run of the shipped example: it reproduces the run's own
evaluation, reads checkpoints and merged models, compares with the untrained base, and refuses bad
paths and mismatched adapters with one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, LlamaConfig

from support import ROOT, TINY, run_cli

pytestmark = pytest.mark.slow

# 20 steps; the run evaluates at step 20 in batches of 4, at most 6 of them, which eval must reproduce
SHORT = [
    *("--set", "training.maxSteps=20"),
    *("--set", "eval.everySteps=20"),
    *("--set", "eval.batchSize=4"),
    *("--set", "eval.maxBatches=6"),
    *("--set", "checkpoint.everySteps=10"),
    *("--set", "checkpoint.keepLast=5"),
    *("--set", "peft.merge=true"),
    *("--set", "tracking.mlflow.enabled=false"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def evaluate(*args: str) -> list[dict]:
    r = run_cli("eval", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


def last_eval_loss(out) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "eval_loss" in row][-1]["eval_loss"]


def fails_with_one_line(*args: str) -> str:
    r = run_cli("eval", *args)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("codex-train: "), r.stderr[-3000:]
    assert "Traceback" not in r.stderr and r.stdout == ""
    return lines[0]


def test_eval_of_final_reproduces_the_runs_last_eval_loss(run, tmp_path):
    """From another directory than the run's: the run's relative data paths are read from where it ran."""
    out_file = tmp_path / "eval.jsonl"
    r = run_cli("eval", str(run / "final"), "--output", str(out_file), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == ""
    summary, split = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert summary["type"] == "summary" and summary["kind"] == "adapter" and summary["step"] == 20
    # one function (evalloss.eval_loss) evaluates in both: the same number, to float rounding
    assert summary["loss"] == pytest.approx(last_eval_loss(run), rel=1e-6, abs=0)
    assert summary["batch_size"] == 4 and summary["max_batches"] == 6 and summary["batches"] == 6
    # packed blocks of 128: 127 predictions each, less the first token of each document that starts in one
    assert summary["sequences"] == 24 and 24 * 127 * 0.9 < summary["tokens"] < 24 * 127
    assert summary["perplexity"] == pytest.approx(2.718281828459045 ** summary["loss"])
    assert 0 < summary["accuracy"] < 1
    assert split["type"] == "file" and split["split"] == "validation" and split["loss"] == summary["loss"]


def test_eval_from_a_directory_with_another_file_of_the_same_name_still_reads_the_runs_data(run, tmp_path):
    shadow = tmp_path / "configs" / "data" / "tiny-code.jsonl"  # the run's relative data path, other contents
    shadow.parent.mkdir(parents=True)
    shadow.write_text("".join((ROOT / "configs/data/tiny-code.jsonl").read_text().splitlines(True)[:700]))
    r = run_cli("eval", str(run / "final"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.splitlines()[0])["loss"] == pytest.approx(last_eval_loss(run), rel=1e-6, abs=0)


def test_a_checkpoint_and_the_merged_model_give_the_same_loss(run):
    """The first test of this file pays for the module's training run (the `run` fixture, 20 steps with a
    merged model), then evaluates two models in two processes that each import torch."""
    final = evaluate(str(run / "final"))[0]
    step20 = evaluate(str(run / "checkpoints" / "step-20"))[0]
    merged = evaluate(str(run / "final" / "merged"))[0]
    step10 = evaluate(str(run / "checkpoints" / "step-10"))[0]
    assert step20["kind"] == "checkpoint" and step20["step"] == 20 and step10["step"] == 10
    assert abs(step20["loss"] - final["loss"]) < 1e-6
    assert merged["kind"] == "model" and abs(merged["loss"] - final["loss"]) < 1e-4
    assert step10["loss"] > step20["loss"]


def test_the_untrained_base_model_has_a_higher_loss(run):
    base, final = evaluate(str(run / "base-model"))[0], evaluate(str(run / "final"))[0]
    assert base["kind"] == "model" and base["tokens"] == final["tokens"]
    assert base["loss"] > last_eval_loss(run) + 0.5, base
    assert base["accuracy"] < final["accuracy"]


def test_data_files_are_evaluated_one_line_each(run, tmp_path):
    extra = tmp_path / "more.txt"
    extra.write_text("".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(200)))
    # PATH after the files, as one types it: --data takes every word after it, the last is still the PATH
    rows = evaluate("--data", "configs/data/tiny-code.jsonl", str(extra), str(run / "final"), "--max-batches", "2")
    summary, *files = rows
    assert [f["file"] for f in files] == ["configs/data/tiny-code.jsonl", str(extra)]
    assert all(f["batches"] == 2 and f["sequences"] == 8 for f in files)  # the run's batch size 4 for eval
    assert summary["tokens"] == sum(f["tokens"] for f in files)
    weighted = sum(f["loss"] * f["tokens"] for f in files) / summary["tokens"]
    assert summary["loss"] == pytest.approx(weighted, rel=1e-9)


def test_prompts_write_greedy_completions(run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\ufeffdef add(a, b):\r\n\r\nimport os\n", encoding="utf-8")  # an editor's BOM and CRLF
    rows = evaluate(str(run / "final"), "--prompts", str(prompts), "--max-new-tokens", "7", "--max-batches", "1")
    completions = [r for r in rows if r["type"] == "completion"]
    assert [c["prompt"] for c in completions] == ["def add(a, b):", "import os"]
    assert all(isinstance(c["completion"], str) and 0 < c["new_tokens"] <= 7 for c in completions)
    assert rows[0]["type"] == "summary" and rows[0]["batches"] == 1


def test_prompts_come_from_stdin_or_a_pipe_and_an_empty_source_is_said_before_the_evaluation(run, tmp_path):
    """`--prompts -` and `--prompts <(...)` were "not found"; /dev/null was too, after the whole evaluation."""
    args = [sys.executable, "-m", "codex_trainer.cli", "eval", str(run / "final"), "--max-batches", "1"]
    piped = subprocess.run([*args, "--prompts", "-"], input="def add(a, b):\n", capture_output=True, text=True,
                           cwd=ROOT, timeout=300)  # fmt: skip
    assert piped.returncode == 0, piped.stderr[-3000:]
    rows = [json.loads(line) for line in piped.stdout.splitlines()]
    assert [r["prompt"] for r in rows if r["type"] == "completion"] == ["def add(a, b):"]
    fifo = tmp_path / "prompts.fifo"  # what <(printf ...) gives: a pipe, read once
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"printf 'import os\\n' > '{fifo}'"])
    rows = evaluate(str(run / "final"), "--prompts", str(fifo), "--max-batches", "1")
    writer.wait(timeout=60)
    assert [r["prompt"] for r in rows if r["type"] == "completion"] == ["import os"]
    assert fails_with_one_line(str(run / "final"), "--prompts", "/dev/null") == (
        "codex-train: invalid --prompts: '/dev/null' holds no prompts (one per line)"
    )
    assert fails_with_one_line(str(run / "final"), "--prompts", "/dev/zero") == (
        "codex-train: invalid --prompts: '/dev/zero' is a device; give a file, a pipe (<(...)) or - for stdin"
    )


def test_bad_paths_exit_2_with_one_line(run, tmp_path):
    assert "does not exist" in fails_with_one_line(str(tmp_path / "nope"))
    assert "is a file" in fails_with_one_line(str(run / "run.json"))
    assert "holds no model" in fails_with_one_line(str(run / "cache"))
    assert f"for this run's result give {run / 'final'}" in fails_with_one_line(str(run))  # the run, not its final/
    unfinished = tmp_path / "unfinished"  # a run stopped before its end: no final/, its checkpoints there
    shutil.copytree(run / "checkpoints", unfinished / "checkpoints")
    said = fails_with_one_line(str(unfinished))
    newest = max(int(d.name.removeprefix("step-")) for d in (run / "checkpoints").iterdir())
    assert f"the run has not finished: evaluate its newest checkpoint, {unfinished}/checkpoints/step-{newest}" in said
    # a checkpoint copied under a later step's name is none: a rerun would not resume from it, eval not suggest it
    shutil.copytree(unfinished / "checkpoints" / f"step-{newest}", unfinished / "checkpoints" / f"step-{newest + 90}")
    assert f"its newest checkpoint, {unfinished}/checkpoints/step-{newest}" in fails_with_one_line(str(unfinished))
    assert "hf://org/name" in fails_with_one_line("hf://not a repo")
    lone = tmp_path / "lone" / "step-10"
    shutil.copytree(run / "checkpoints" / "step-10", lone)
    assert "run.json" in fails_with_one_line(str(lone))
    assert "not found" in fails_with_one_line(str(run / "final"), "--data", str(tmp_path / "missing.jsonl"))
    assert "name what to evaluate" in fails_with_one_line("--data", "configs/data/tiny-code.jsonl")
    other = tmp_path / "other.jsonl"
    other.write_text('{"code": "x = 1"}\n')
    assert fails_with_one_line(str(run / "final"), "--data", str(other), "--text-field", "text").startswith(
        f"codex-train: invalid --text-field: 'text' is not a field of '{other}' line 1 (fields there: code)"
    )
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "x = 1"}\n{"text": "y = 2"}\n')
    assert fails_with_one_line(str(run / "final"), "--data", str(short)) == (
        f"codex-train: invalid --data: '{short}' makes 12 tokens, fewer than one packed sequence of 128; "
        "lower --max-seq-length or add data"
    )
    damaged = run.parent / "damaged"
    shutil.copytree(run, damaged, ignore=shutil.ignore_patterns("final", "cache"))
    (damaged / "checkpoints" / "step-20" / "trainable.safetensors").write_bytes(b"x" * 10)
    assert "damaged" in fails_with_one_line(str(damaged / "checkpoints" / "step-20"))


def test_an_output_that_would_replace_an_input_or_a_file_of_the_run_is_refused_and_left_as_it_was(run, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"text": "x = 1"}\n' * 50)
    before = {p: p.read_bytes() for p in [data, run / "run.json", run / "final" / "adapter_config.json"]}
    said = fails_with_one_line(str(run / "final"), "--data", str(data), "--output", str(data))
    assert said == f"codex-train: invalid --output: '{data}' is a --data file; writing there would replace it: " + (
        "name another file"
    )
    os.link(data, tmp_path / "hard-link.jsonl")  # another name of the same file (the new-user check's wipe)
    assert "is a --data file" in fails_with_one_line(
        str(run / "final"), "--data", str(data), "--output", str(tmp_path / "hard-link.jsonl")
    )
    assert "inside the model evaluated" in fails_with_one_line(
        str(run / "final"), "--output", str(run / "final" / "adapter_config.json")
    )
    assert "a data file of the run" in fails_with_one_line(
        str(run / "final"), "--output", str(ROOT / "configs/data/tiny-code.jsonl")
    )
    assert all(p.read_bytes() == b for p, b in before.items())


def test_eval_refuses_the_runs_own_split_once_its_data_files_changed(run, tmp_path):
    """The split drawn from other contents would hold other rows, some of them trained on: said, not evaluated."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("cache", "checkpoints"))
    grown = tmp_path / "tiny-code.jsonl"  # the run's file with rows added since, where the run read it
    rows = (ROOT / "configs/data/tiny-code.jsonl").read_text().splitlines(True)
    grown.write_text("".join(rows + rows[:100]))
    info = json.loads((copy / "run.json").read_text())
    assert len(info["data_sha256"]) == 64
    info["spec"]["data"]["train"] = [str(grown)]
    (copy / "run.json").write_text(json.dumps(info))
    line = fails_with_one_line(str(copy / "final"))
    assert line.startswith("codex-train: the run's data files changed since it ran (sha256 "), line
    assert line.endswith("pass --data FILE to evaluate on files of your own"), line
    assert evaluate(str(copy / "final"), "--data", str(grown))[0]["type"] == "summary"  # the way out works
    grown.write_text('{"type": "summary", "loss": 1.5}\n')  # changed so that it no longer parses as the run's data
    line = fails_with_one_line(str(copy / "final"))
    assert line.startswith("codex-train: the run's data files changed since it ran (sha256 "), line  # not textField


def test_a_run_whose_data_is_gone_says_where_it_looked_and_to_pass_data(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("cache", "checkpoints"))
    info = json.loads((copy / "run.json").read_text())
    info["spec"]["data"]["train"] = ["data/gone.jsonl"]
    (copy / "run.json").write_text(json.dumps(info))
    line = fails_with_one_line(str(copy / "final"))
    assert line.startswith(
        "codex-train: the run's data, from which its validation split is rebuilt, cannot be read (from the "
        "directory it ran in, nor from here): spec.data.train: file 'data/gone.jsonl' not found"
    ), line
    assert line.endswith("; pass --data FILE to evaluate on files of your own"), line


def test_a_run_without_validation_sequences_says_to_pass_data(run, tmp_path):
    """No --data given: the message names no option the user did not pass, and says which one to pass."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("cache", "checkpoints"))
    info = json.loads((copy / "run.json").read_text())
    info["spec"]["data"]["validationFraction"] = 0.0
    (copy / "run.json").write_text(json.dumps(info))
    assert fails_with_one_line(str(copy / "final")) == (
        "codex-train: the run has no validation sequences (validationFraction is 0 and there is no "
        "data.validation); pass --data FILE to evaluate on files of your own"
    )


def test_a_longer_max_seq_length_than_the_split_makes_is_named_as_the_cause(run):
    """The run's own split makes sequences at its length: a --max-seq-length past its texts is what to change."""
    r = run_cli("eval", str(run / "final"), "--max-seq-length", "100000")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    warning, problem = r.stderr.strip().splitlines()  # the model's 256 positions are said first, as for a run
    assert warning.startswith("codex-train: warning: --max-seq-length 100000 is beyond the 256 positions"), warning
    assert problem == (
        "codex-train: invalid --max-seq-length: the run's validation split makes no sequence of 100000 tokens (the "
        "run trained on 128); lower --max-seq-length, or pass --data FILE with longer texts"
    )


def test_an_adapter_that_does_not_match_its_base_exits_2(run, tmp_path):
    other = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=259,
        max_position_embeddings=256,
    )
    AutoModelForCausalLM.from_config(other).save_pretrained(tmp_path / "other-base")
    adapter = tmp_path / "adapter"
    shutil.copytree(run / "final", adapter, ignore=shutil.ignore_patterns("merged"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "../other-base"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    line = fails_with_one_line(str(adapter), "--data", str(TINY.parents[1] / "data" / "tiny-code.jsonl"))
    assert "does not match its base model" in line and "size mismatch" in line, line

    config["base_model_name_or_path"] = "../no-such-base"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    line = fails_with_one_line(str(adapter), "--data", str(TINY.parents[1] / "data" / "tiny-code.jsonl"))
    assert "no-such-base" in line and "not there" in line, line


def fresh_python(code: str, cwd) -> list:
    """Run `code` in a new Python process in `cwd`; the JSON of its last line of output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


LOGITS = """
ids = torch.tensor([[100, 101, 32, 102, 40, 58, 10]])
with torch.no_grad():
    print(json.dumps([m(ids).logits[0, :, :32].tolist() for m in models]))
"""


def test_the_result_loads_with_peft_alone_from_any_working_directory(run, tmp_path):
    """As a Hugging Face user would, in a fresh process that imports nothing of ours and works in another
    directory: AutoPeftModelForCausalLM finds the base by itself (the adapter names it by absolute path), with
    the same logits as the adapter put on the run's base-model by hand."""
    final, base = str(run / "final"), str(run / "base-model")
    code = f"""import json, torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM
models = [
    AutoPeftModelForCausalLM.from_pretrained({final!r}),
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), {final!r}),
]
{LOGITS}"""
    one_liner, by_hand = fresh_python(code, cwd=tmp_path)
    assert one_liner == by_hand


def test_a_moved_run_still_loads_with_load_trained(run, tmp_path):
    """A run written in one directory (its adapter naming that directory's base-model/) and then moved: the
    absolute path names nothing now, and load_trained takes the run's own base-model/ beside final/."""
    written = tmp_path / "written-here"
    shutil.copytree(run, written, ignore=shutil.ignore_patterns("cache", "checkpoints", "merged"))
    config = json.loads((written / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run / "base-model")  # what training wrote, absolute
    config["base_model_name_or_path"] = str(written / "base-model")  # as a run trained here would name it
    (written / "final" / "adapter_config.json").write_text(json.dumps(config))
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    written.rename(moved)
    (tmp_path / "cwd").mkdir()
    code = f"""import json, torch
from codex_trainer.model import load_trained
from peft import AutoPeftModelForCausalLM
models = [
    load_trained({str(moved / "final")!r})[0],
    AutoPeftModelForCausalLM.from_pretrained({str(run / "final")!r}),
]
{LOGITS}"""
    moved_run, original = fresh_python(code, cwd=tmp_path / "cwd")
    assert moved_run == original
