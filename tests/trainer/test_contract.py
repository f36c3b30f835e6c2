"""The exit-code contract under a changed job, a full disk, two runs at once, an unreachable Hub and signals.

What the user sees: the exit code, one line on stderr naming the problem, no traceback, and what is left
in the output directory. Runs are a few steps of the tiny example."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest
from transformers import PreTrainedModel

from codex_trainer import checkpoint, mlflow_sink
from codex_trainer import metrics as metrics_module
from codex_trainer.cli import main
from support import ROOT, TINY, one_line, run_cli

pytestmark = pytest.mark.slow

QUICK = ["--set", "tracking.mlflow.enabled=false", "--set", "checkpoint.everySteps=2", "--set", "eval.everySteps=100"]


def run(out, *overrides: str, steps: int = 2) -> int:
    args = ["run", str(TINY), "--output-dir", str(out), *QUICK, "--set", f"training.maxSteps={steps}"]
    for o in overrides:
        args += ["--set", o]
    return main(args)


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_data_is_identified_by_content_not_by_path(tmp_path, capsys, monkeypatch):
    data = tmp_path / "train.jsonl"
    shutil.copy(ROOT / "configs/data/tiny-code.jsonl", data)
    out = tmp_path / "out"
    assert run(out, f"data.train=[{data}]", "data.validationFraction=0") == 0
    out_text = capsys.readouterr().out
    assert "no validation sequences, so evaluation will not run: validationFraction is 0" in out_text
    assert '"evaluating"' not in out_text  # and it does not say it evaluates

    monkeypatch.chdir(tmp_path)  # the same file, named relatively: the same data, so the run resumes
    assert run(out, "data.train=[train.jsonl]", "data.validationFraction=0", steps=4) == 0
    assert '"resumed", "step": 2' in capsys.readouterr().out

    data.write_text("".join(json.dumps({"text": f"def other_{i}(): return {i}"}) + "\n" for i in range(400)))
    assert run(out, "data.train=[train.jsonl]", "data.validationFraction=0", steps=6) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("codex-train: invalid spec.data: the data files' contents, or their order, differ from")
    assert max(r["step"] for r in metrics(out)) == 4


def test_a_local_base_model_is_identified_by_content_not_by_path(tmp_path, capsys, monkeypatch):
    """Moved elsewhere, the same model files resume; other weights under the same path are refused (they
    resumed before, the adapters put on weights they were not trained with); a checkpoint from before models
    had a digest resumes as it did."""
    from codex_trainer import train as train_module

    for seed, made in ((42, "made-a"), (7, "made-b")):  # two tiny models of one shape, other weights
        assert run(tmp_path / made, f"training.seed={seed}", steps=1) == 0
    base, moved = tmp_path / "base", tmp_path / "moved"
    shutil.copytree(tmp_path / "made-a" / "base-model", base)
    out = tmp_path / "out"

    def local(path):
        return f"model={{source: '{path}'}}"

    real = train_module.resume_identity
    monkeypatch.setattr(train_module, "resume_identity", lambda spec, digest, *model: real(spec, digest))
    assert run(out, local(base)) == 0  # as a version before the digest wrote it: by path
    monkeypatch.setattr(train_module, "resume_identity", real)
    base.rename(moved)
    assert run(out, local(moved), steps=3) == 2  # a checkpoint by path: the path counts, as it did
    assert "changed: model.source" in one_line(capsys.readouterr().err)
    moved.rename(base)
    assert run(out, local(base), steps=3) == 0  # and it resumes where it is
    assert '"resumed", "step": 2' in capsys.readouterr().out

    base.rename(moved)  # step 3 was written with the model's digest: the same files, moved, resume
    assert run(out, local(moved), steps=4) == 0
    assert '"resumed", "step": 3' in capsys.readouterr().out

    for weights in moved.glob("*.safetensors"):
        shutil.copy(tmp_path / "made-b" / "base-model" / weights.name, weights)
    assert run(out, local(moved), steps=6) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"codex-train: invalid spec.model.source: the base model's files in '{moved}' differ"), line
    assert "(changed: model.safetensors)" in line, line
    assert "Use a new --output-dir, or restore the earlier model files" in line
    assert max(r["step"] for r in metrics(out)) == 4


def lowercased(folder: pathlib.Path) -> None:
    """A tokenizer saved in `folder`, made to lowercase its text: it encodes the same data otherwise."""
    saved = json.loads((folder / "tokenizer.json").read_text())
    saved["normalizer"] = {"type": "Lowercase"}
    (folder / "tokenizer.json").write_text(json.dumps(saved))


def test_a_hub_model_resumes_at_the_commit_it_started_on_when_its_branch_moves(tmp_path):
    """hf://org/name names main, which moves when the repository is pushed to: a run resumed after a push
    loaded the new weights under its adapters, and the new tokenizer. It resumes at the commit it started on,
    its tokenizer with it (the same repository however spelled), its adapter names that commit, and eval of a
    checkpoint loads it there too. (A Hub cache made here, read offline.)"""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from codex_trainer.tokenizer import byte_tokenizer

    repo = tmp_path / "hub" / "models--codex-test--tiny"
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=259)  # fmt: skip
    first, pushed = "a" * 40, "b" * 40
    for commit, seed in ((first, 1), (pushed, 2)):
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(repo / "snapshots" / commit)
        byte_tokenizer().save_pretrained(repo / "snapshots" / commit)
    lowercased(repo / "snapshots" / pushed)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(first)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = tmp_path / "out"
    hub = ["--set", "model={source: 'hf://codex-test/tiny'}", "--set", "tokenizer=hf://codex-test/tiny@main"]

    def run_hub(steps: int):
        args = [*hub, *QUICK, "--set", f"training.maxSteps={steps}"]
        r = run_cli("run", str(TINY), "--output-dir", str(out), *args, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        return [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]

    def eval_loss(path) -> float:
        r = run_cli("eval", str(path), "--max-batches", "2", env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.splitlines()[-1])["loss"]

    assert next(e for e in run_hub(2) if e["event"] == "start")["base_commit"] == first
    before = eval_loss(out / "checkpoints" / "step-2")
    (repo / "refs" / "main").write_text(pushed)  # a push to main
    events = run_hub(4)
    assert next(e for e in events if e["event"] == "start")["base_commit"] == first
    assert next(e for e in events if e["event"] == "data")["cached"] is True  # the same tokenizer's tokens
    assert any(e["event"] == "resumed" and e["step"] == 2 for e in events)
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    assert (adapter["base_model_name_or_path"], adapter["revision"]) == ("codex-test/tiny", first)
    assert eval_loss(out / "checkpoints" / "step-2") == pytest.approx(before, abs=1e-6)

    fresh = tmp_path / "fresh"  # a new run starts on main as it is now
    r = run_cli("run", str(TINY), "--output-dir", str(fresh), *hub, *QUICK, "--set", "training.maxSteps=1", env=env)
    assert r.returncode == 0 and f'"base_commit": "{pushed}"' in r.stdout, r.stderr[-2000:]


def test_a_tokenizer_counts_by_the_tokens_it_makes_not_by_where_it_is(tmp_path, capsys):
    """A tokenizer folder moved resumes; one whose files changed (it lowercases now) made other tokens of the
    same data, and resumed on them without a word before: refused, naming spec.tokenizer."""
    from codex_trainer.tokenizer import byte_tokenizer

    tok, moved, out = tmp_path / "tok", tmp_path / "moved", tmp_path / "out"
    byte_tokenizer().save_pretrained(tok)
    assert run(out, f"tokenizer={tok}") == 0
    tok.rename(moved)
    assert run(out, f"tokenizer={moved}", steps=3) == 0
    assert '"resumed", "step": 2' in capsys.readouterr().out
    lowercased(moved)
    assert run(out, f"tokenizer={moved}", steps=4) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("codex-train: invalid spec.tokenizer: the tokenizer makes other tokens of the same"), line
    assert max(r["step"] for r in metrics(out)) == 3


def test_a_changed_learning_rate_on_resume_is_applied_and_recorded(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    fixed = ["training.scheduler=constant", "training.warmupSteps=0", "model.config.max_position_embeddings=64"]
    assert run(out, *fixed) == 0
    first = capsys.readouterr().out
    assert "maxSeqLength 128 is beyond the 64 positions this model is configured for" in first  # rotary: a warning
    assert run(out, *fixed, "training.learningRate=1e-5", "training.weightDecay=0.1", steps=4) == 0
    changed = json.loads(next(line for line in capsys.readouterr().out.splitlines() if '"changed"' in line))
    assert changed["changes"]["training.learningRate"] == {"was": 0.003, "now": 1e-05}
    rates = {r["step"]: r["learning_rate"] for r in metrics(out) if "loss" in r}
    assert rates == {1: 0.003, 2: 0.003, 3: 1e-05, 4: 1e-05}
    info = json.loads((out / "run.json").read_text())
    assert info["spec"]["training"]["learningRate"] == 1e-05 and info["resumed_from_step"] == 2
    assert info["changed_on_resume"]["training.weightDecay"] == {"was": 0.0, "now": 0.1}
    assert [s["training"]["learningRate"] for s in info["earlier_starts"]] == [0.003]

    # the adapter names its base by absolute path, which PEFT's own loaders find from any working directory;
    # a copy of the run elsewhere loads with load_trained (from its own base-model/)
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base-model").resolve())
    moved = tmp_path / "elsewhere" / "mounted"
    shutil.copytree(out, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    from codex_trainer.model import load_trained

    model, tokenizer = load_trained(moved / "final")
    ids = tokenizer("def ", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4


def test_a_resumed_run_serves_its_last_loss_before_its_first_step(tmp_path, capsys, monkeypatch):
    """A pod started again resumes from a checkpoint: until its first step the operator reads the endpoint, and
    a loss missing there would blank the LOSS column of `kubectl get ctj` for that while."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from codex_trainer import contract

    out = tmp_path / "out"
    assert run(out) == 0
    capsys.readouterr()
    last = [r["loss"] for r in metrics(out) if "loss" in r][-1]
    seen: dict = {}
    resumed_from = metrics_module.Sink.resumed_from

    def scraped(sink, *args):
        resumed_from(sink, *args)
        text = generate_latest(sink.prometheus.registry).decode()
        seen.update({s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples})

    monkeypatch.setattr(metrics_module.Sink, "resumed_from", scraped)
    assert run(out, steps=4) == 0  # the default port: the trainer serves its endpoint as in a pod
    assert seen[contract.METRIC_STEP] == 2 and seen[contract.METRIC_LOSS] == pytest.approx(last)
    done = json.loads(next(line for line in capsys.readouterr().out.splitlines() if '"done"' in line))
    assert done["step"] == 4 and done["loss"] != last


def test_another_jobs_run_on_the_same_volume_is_refused_not_taken_over(tmp_path, capsys):
    """Two jobs on one existingClaim (or one --output-dir): the second resumed the first's checkpoints, or, the
    first finished, said Succeeded with its numbers, having trained nothing (a new-user check on kind)."""
    out = tmp_path / "out"
    assert run(out) == 0
    other = tmp_path / "other.yaml"
    other.write_text(TINY.read_text().replace("name: tiny-cpu", "name: tiny-other", 1))
    capsys.readouterr()
    assert main(["run", str(other), "--output-dir", str(out), *QUICK, "--set", "training.maxSteps=4"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("codex-train: invalid metadata.name: ") and "holds the run of job 'tiny-cpu'" in line, line
    assert "name it 'tiny-cpu' to continue that run" in line, line
    assert max(r["step"] for r in metrics(out)) == 2  # nothing trained into it


@pytest.mark.parametrize("change", ["training.batchSize=4", "training.seed=7"])
def test_a_changed_batch_size_or_seed_on_resume_is_refused_naming_its_field(tmp_path, capsys, change):
    out = tmp_path / "out"
    assert run(out) == 0
    capsys.readouterr()
    assert run(out, change, steps=4) == 2
    refused = capsys.readouterr()
    line = one_line(refused.err)
    field = change.split("=")[0]
    assert line.startswith(f"codex-train: invalid spec.{field}: differs from the run that wrote"), line
    assert '"event": "data"' not in refused.out  # refused before the data is read and tokenized, not after


def test_a_run_stopped_before_its_first_checkpoint_restarts_with_the_model_it_now_names(tmp_path, capsys):
    """Killed (say, for memory) before any checkpoint, then started again with a smaller model: it trains
    the smaller model, and base-model/ is that model, as run.json says."""
    out = tmp_path / "out"
    assert run(out) == 0
    for made_later in ("checkpoints", "final"):  # what a kill before the first checkpoint leaves: the base alone
        shutil.rmtree(out / made_later)
    capsys.readouterr()
    assert run(out, "model.config.hidden_size=32", "model.config.intermediate_size=64") == 0
    start = next(json.loads(x) for x in capsys.readouterr().out.splitlines() if '"start"' in x)
    saved = json.loads((out / "base-model" / "config.json").read_text())
    assert saved["hidden_size"] == 32 and saved["intermediate_size"] == 64
    assert start["parameters"] < 156_736  # the example's model (hidden size 64) has that many


def test_a_checkpoint_of_the_earlier_packing_is_refused_not_resumed(tmp_path, capsys, monkeypatch):
    """Checkpoints written before packing kept documents apart hold no packingScheme in their identity."""
    from codex_trainer import train as train_module

    real = train_module.resume_identity

    def earlier(spec, digest, *model):
        identity = real(spec, digest, *model)
        del identity["data"]["packingScheme"]
        return identity

    out = tmp_path / "out"
    monkeypatch.setattr(train_module, "resume_identity", earlier)
    assert run(out) == 0
    monkeypatch.setattr(train_module, "resume_identity", real)
    capsys.readouterr()
    assert run(out, steps=4) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("codex-train: invalid spec.data.packing: "), line
    assert "earlier packing" in line and "new --output-dir" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]  # nothing trained on top

    # packing turned off under a run of this version is a plain change of settings, said as one
    assert run(out, "data.packing=false", steps=4) == 2
    line = one_line(capsys.readouterr().err)
    assert "changed: data.packing)" in line and "earlier packing" not in line, line  # packingScheme: not a field


def test_compile_trains_to_the_same_loss_and_without_a_compiler_is_one_line(tmp_path, capsys, monkeypatch):
    assert run(tmp_path / "eager", steps=2) == 0
    assert run(tmp_path / "compiled", "training.compile=true", steps=2) == 0
    eager, compiled = (m for m in (metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")))
    assert [r["loss"] for r in compiled if "loss" in r] == pytest.approx(
        [r["loss"] for r in eager if "loss" in r], abs=1e-4
    )

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    capsys.readouterr()
    assert run(tmp_path / "none", "training.compile=true") == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("codex-train: invalid spec.training.compile: torch.compile needs a C++ compiler"), line
    assert main(["validate", str(TINY), "--set", "training.compile=true"]) == 0  # a pod's image has one: said
    assert "not checked here: spec.training.compile: torch.compile needs a C++ compiler" in capsys.readouterr().err

    monkeypatch.undo()
    monkeypatch.setenv("CXX", str(tmp_path / "no" / "g++"))  # a CXX naming nothing: said before any step
    assert run(tmp_path / "bad-cxx", "training.compile=true") == 2
    line = one_line(capsys.readouterr().err)
    assert "torch.compile builds with $CXX" in line and "which is not a program here; fix or unset CXX" in line, line
    assert not (tmp_path / "bad-cxx" / "checkpoints").exists()


def test_a_full_disk_while_checkpointing_is_one_line_and_the_rerun_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real_save = checkpoint.save_file

    def full_after_step_2(tensors, path, *a, **k):
        if "step-4" in str(path):
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", full_after_step_2)
    assert run(out, steps=6) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"codex-train: disk full: writing checkpoint step-4 in {out / 'checkpoints'} needed about")
    assert "MiB free" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]  # no .tmp left behind

    monkeypatch.setattr(checkpoint, "save_file", real_save)
    assert run(out, steps=6) == 0
    assert '"resumed", "step": 2' in capsys.readouterr().out


class _SafetensorsFull(Exception):
    """How safetensors reports a full disk: its own exception, not an OSError."""


def test_a_full_disk_while_writing_the_scratch_model_is_one_line_and_the_rerun_trains(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real_save = PreTrainedModel.save_pretrained

    def full(self, path, *a, **k):
        (path / "model.safetensors").write_bytes(b"partial")
        raise _SafetensorsFull("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    assert run(out) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"codex-train: disk full: writing the scratch model (base-model/) in {out} needed about"), (
        line
    )
    assert not [p.name for p in out.iterdir() if p.name.startswith("base-model")]  # nothing half-written left

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    assert run(out) == 0


def test_an_mlflow_database_left_half_made_is_made_again_and_a_full_disk_there_is_one_line(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    out.mkdir()
    # what a full disk (or a kill) in the middle of MLflow building its tables leaves: some tables, no run
    with sqlite3.connect(out / "mlflow.db") as db:
        db.execute("CREATE TABLE secrets (id INTEGER)")
    assert run(out, "tracking.mlflow.enabled=true") == 0
    assert (out / "mlflow_run_id").is_file()
    with sqlite3.connect(out / "mlflow.db") as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (1,)

    again = tmp_path / "again"
    real_start = mlflow_sink.Mlflow.__init__

    def full(self, *a, **k):
        (again / "mlflow.db").write_bytes(b"SQLite format 3\0half")
        raise RuntimeError("(sqlite3.OperationalError) database or disk is full")

    monkeypatch.setattr(mlflow_sink.Mlflow, "__init__", full)
    capsys.readouterr()
    assert run(again, "tracking.mlflow.enabled=true") == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"codex-train: disk full: writing the MLflow database (mlflow.db) in {again}"), line
    monkeypatch.setattr(mlflow_sink.Mlflow, "__init__", real_start)
    assert run(again, "tracking.mlflow.enabled=true") == 0  # the half-made database, with no run in it, made again
    with sqlite3.connect(again / "mlflow.db") as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_a_disk_that_fills_under_mlflow_mid_run_is_one_line_naming_the_database(tmp_path, capfd, monkeypatch):
    """The new-user CLI check filled the disk at step 9: MLflow's logger printed SQLAlchemy's tracebacks three
    times, then 'disk full: (raised as a result of Query-invoked autoflush; ...)'."""
    import sqlalchemy

    def full(session, *a, **k):
        raise sqlalchemy.exc.OperationalError(
            "INSERT INTO metrics", {}, sqlite3.OperationalError("database or disk is full")
        )

    real_log = mlflow_sink.Mlflow.log

    def log(self, figures, step):
        if step == 2:  # from here on, no write to mlflow.db succeeds, the run's end included
            monkeypatch.setattr(sqlalchemy.orm.Session, "commit", full)
        return real_log(self, figures, step)

    monkeypatch.setattr(mlflow_sink.Mlflow, "log", log)
    out = tmp_path / "out"
    assert run(out, "tracking.mlflow.enabled=true", steps=4) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "SQLAlchemy" not in err, err
    line = one_line(err)
    assert line.startswith(f"codex-train: disk full: writing the MLflow database (mlflow.db) in {out} needed about"), (
        line
    )


def test_steps_a_killed_run_logged_after_its_last_checkpoint_are_in_mlflow_once_after_the_resume(tmp_path):
    import mlflow

    out = tmp_path / "out"
    assert run(out, "tracking.mlflow.enabled=true", steps=4) == 0
    # as a run killed after logging steps 3 and 4 but before checkpointing step 4 leaves its directory
    shutil.rmtree(out / "checkpoints" / "step-4")
    shutil.rmtree(out / "final")
    assert run(out, "tracking.mlflow.enabled=true", steps=4) == 0  # resumes from step 2, does 3 and 4 again

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    history = client.get_metric_history((out / "mlflow_run_id").read_text().strip(), "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x] == [
        1, 2, 3, 4
    ]  # fmt: skip


def test_a_run_that_starts_again_from_step_0_gets_a_new_mlflow_run_with_its_own_figures(tmp_path):
    import mlflow

    out = tmp_path / "out"
    assert run(out, "tracking.mlflow.enabled=true", "training.learningRate=0.0001", steps=4) == 0
    first = (out / "mlflow_run_id").read_text().strip()
    # as a start killed before its first checkpoint leaves its directory; the job is edited, and run again
    shutil.rmtree(out / "checkpoints")
    shutil.rmtree(out / "final")
    assert run(out, "tracking.mlflow.enabled=true", "training.learningRate=0.01", steps=4) == 0

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    second = (out / "mlflow_run_id").read_text().strip()
    assert second != first and client.get_run(first).info.status == "KILLED"
    logged = {m.step: m.value for m in client.get_metric_history(second, "learning_rate")}
    written = {r["step"]: r["learning_rate"] for r in metrics(out) if "learning_rate" in r}
    assert logged == pytest.approx(written) and len(logged) == 4


def test_a_second_run_on_the_same_directory_exits_2_and_a_killed_runs_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'{os.getpid()} {os.uname().nodename}\\n'.encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n",
            str(out / ".codex-train.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run(out) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith(f"codex-train: another run (pid {holder.pid}) is using {out};"), line
        assert sorted(p.name for p in out.iterdir()) == [".codex-train.lock"]  # nothing loaded, nothing written
    finally:
        holder.kill()
        holder.wait()
    assert run(out) == 0  # the kernel dropped the dead run's lock
    assert (out / ".codex-train.lock").read_text().split()[0] == str(os.getpid())


def test_an_output_directory_that_is_a_file_or_not_writable_exits_2(tmp_path, capsys):
    a_file = tmp_path / "out"
    a_file.write_text("")
    assert run(a_file) == 2
    assert (
        one_line(capsys.readouterr().err) == f"codex-train: invalid --output-dir: '{a_file}' is a file, not a directory"
    )
    assert run(a_file / "sub") == 2
    assert "invalid --output-dir: cannot write to" in one_line(capsys.readouterr().err)


def test_a_read_only_output_directory_exits_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    if os.getuid() == 0:  # root writes anyway: make the write probe meet what another user would
        real = pathlib.Path.write_bytes

        def refuse(self, data):
            if self.name.startswith(".write-test"):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, data)

        monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)
    assert run(out) == 2
    line = one_line(capsys.readouterr().err)
    assert line == (
        f"codex-train: invalid --output-dir: cannot write to '{out}' as uid {os.getuid()}: Permission denied; "
        "choose a writable --output-dir"
    )


def test_a_metrics_port_in_use_exits_2_before_loading_anything(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.monotonic()
        assert main(["run", str(TINY), "--output-dir", str(tmp_path), "--metrics-port", str(port)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"codex-train: invalid --metrics-port: cannot serve metrics on port {port}: ")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "base-model").exists()
    assert time.monotonic() - start < 10


def test_a_metrics_port_past_65535_exits_2_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", str(TINY), "--output-dir", str(tmp_path), "--metrics-port", "70000"])
    line = one_line(capsys.readouterr().err)
    assert e.value.code == 2 and not (tmp_path / "base-model").exists()
    assert line.startswith("codex-train: argument --metrics-port: '70000' is not a port number (1 to 65535, or 0"), line


def test_a_hub_that_cannot_be_reached_is_one_line_within_seconds(tmp_path):
    """A closed port on this machine stands for the Hub: no retries, no warnings, exit 1 (retryable)."""
    start = time.monotonic()
    r = run_cli(
        "run",
        str(TINY),
        "--output-dir",
        str(tmp_path),
        "--set",
        "model={source: hf://codex-test/absent}",
        "--set",
        "tokenizer=null",
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert r.returncode == 1, r.stderr[-2000:]
    line = one_line(r.stderr)
    assert line.startswith("codex-train: could not fetch a tokenizer 'hf://codex-test/absent' from the Hub (retryable)")
    assert time.monotonic() - start < 30


def test_a_finished_run_asked_again_with_another_learning_rate_claims_no_change_applied(tmp_path, capsys):
    """Nothing is left to train: no 'applied from this step on (recorded in run.json)', which neither happened."""
    out = tmp_path / "out"
    assert run(out) == 0
    recorded = json.loads((out / "run.json").read_text())
    capsys.readouterr()
    assert run(out, "training.learningRate=0.0001") == 0
    said = capsys.readouterr().out
    assert '"event": "changed"' not in said and "applied from this step on" not in said
    assert "nothing to do (changed since its checkpoint: training.learningRate; no step is left" in said, said
    assert json.loads((out / "run.json").read_text()) == recorded


def test_peft_merge_asked_of_a_finished_run_writes_the_merged_model_without_training_again(tmp_path, capsys):
    """peft.merge changes what is written, not what is trained: a finished run rerun with it keeps its steps
    and adapter, and gains final/merged, which gives the adapter's logits; asked again, there is nothing to do."""
    import torch
    from transformers import AutoModelForCausalLM

    from codex_trainer.model import load_trained

    out = tmp_path / "out"
    assert run(out) == 0
    adapter = (out / "final" / "adapter_model.safetensors").read_bytes()
    steps = [r["step"] for r in metrics(out) if "loss" in r]
    capsys.readouterr()
    assert run(out, "peft.merge=true") == 0
    assert (out / "final" / "adapter_model.safetensors").read_bytes() == adapter
    assert [r["step"] for r in metrics(out) if "loss" in r] == steps  # no step trained again
    merged = AutoModelForCausalLM.from_pretrained(out / "final" / "merged")
    trained, _ = load_trained(out / "final")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.allclose(merged(ids).logits, trained(ids).logits, atol=1e-4)
    capsys.readouterr()
    assert run(out, "peft.merge=true") == 0
    assert "already complete at step 2; nothing to do" in capsys.readouterr().out


def test_a_constant_rate_warms_up_and_each_step_reports_the_rate_it_trained_at(tmp_path):
    """warmupSteps applies to every scheduler (transformers' "constant" has none), and metrics.jsonl's
    learning_rate is the rate the step used, not the next step's: a linear warmup from 0 over 4 steps."""
    out = tmp_path / "out"
    assert run(out, "training.scheduler=constant", "training.warmupSteps=4", steps=6) == 0
    rates = [r["learning_rate"] for r in metrics(out) if "loss" in r]
    assert rates == pytest.approx([0.0, 0.00075, 0.0015, 0.00225, 0.003, 0.003])


def test_a_max_steps_lowered_below_the_newest_checkpoint_is_said(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(out, steps=4) == 0
    shutil.rmtree(out / "final")  # as a run stopped after its last checkpoint, before its result
    capsys.readouterr()
    assert run(out, steps=2) == 0
    said = capsys.readouterr().out
    assert "the newest checkpoint, step 4, is past the 2 steps the job now asks for" in said, said[-2000:]
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_a_finished_full_fine_tune_with_merge_asked_has_nothing_to_do(tmp_path, capsys):
    """peft.merge means nothing to a full fine-tune (final/ is the whole model): a rerun writes nothing again."""
    out = tmp_path / "out"
    assert run(out, "peft.method=none", "peft.merge=true", "peft.modulesToSave=[]") == 0
    capsys.readouterr()
    assert run(out, "peft.method=none", "peft.merge=true", "peft.modulesToSave=[]") == 0
    assert "already complete at step 2; nothing to do" in capsys.readouterr().out


def test_a_constant_run_checkpointed_without_its_warmup_keeps_going_without_it(tmp_path, monkeypatch):
    """Checkpoints of a constant schedule made before warmupSteps applied to it: resumed, the rate does not
    drop back into a warmup the run never had."""
    from codex_trainer import train as train_module

    real = train_module.get_scheduler

    def as_before(kind, *args, **kwargs):  # what the trainer built for 'constant' before: no warmup
        return real("constant" if kind == "constant_with_warmup" else kind, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(train_module, "get_scheduler", as_before)
    assert run(out, "training.scheduler=constant", "training.warmupSteps=10") == 0
    monkeypatch.setattr(train_module, "get_scheduler", real)
    assert run(out, "training.scheduler=constant", "training.warmupSteps=10", steps=4) == 0
    assert [r["learning_rate"] for r in metrics(out) if "loss" in r] == pytest.approx([0.003] * 4)
