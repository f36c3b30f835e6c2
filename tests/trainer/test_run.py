"""codex-train run, end to end on the shipped tiny example: what a user sees and what lands on disk."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request

import pytest
import torch
from safetensors.torch import load_file

from support import ROOT, TINY, run_cli, wait_for

pytestmark = pytest.mark.slow

# Shorter than the example's 300 steps, same model and data; checkpoints every 5 steps.
SHORT = [
    "--set",
    "training.maxSteps=30",
    "--set",
    "checkpoint.everySteps=5",
    "--set",
    "eval.everySteps=10",
    "--set",
    "tracking.mlflow.enabled=false",
    "--set",
    "checkpoint.keepLast=10",
]


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def adapter(out) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "adapter_model.safetensors")


def assert_same_weights(a: dict, b: dict, tol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= tol, f"largest weight difference {worst:.3g} > {tol}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: 30 steps without interruption."""
    out = tmp_path_factory.mktemp("straight")
    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT)
    assert r.returncode == 0, r.stderr
    return out


def test_the_example_trains_and_the_loss_falls(tmp_path):
    """The whole example, 300 steps, as a user runs it (about 15 s alone on 2 cores, 45 s under coverage
    in the full suite): the claim is about the example itself, so it is not shortened."""
    out = tmp_path / "run"
    r = run_cli("run", str(TINY), "--output-dir", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = metrics(out)
    train = [row for row in rows if "loss" in row]
    evals = [row for row in rows if "eval_loss" in row]
    assert len(train) == 300 and train[-1]["step"] == 300
    assert all({"step", "loss", "learning_rate", "tokens_per_second"} <= row.keys() for row in train)
    first = sum(r["loss"] for r in train[:10]) / 10
    last = sum(r["loss"] for r in train[-10:]) / 10
    assert last < first / 3, (first, last)
    assert evals[-1]["step"] == 300 and evals[-1]["eval_loss"] < evals[0]["eval_loss"]

    # the result: adapter + tokenizer in final/, the two newest checkpoints, run.json, an MLflow run
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert (out / "final" / "tokenizer.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-250", "step-300"]
    info = json.loads((out / "run.json").read_text())
    assert info["spec"]["training"]["maxSteps"] == 300 and len(info["spec_sha256"]) == 64
    assert info["packages"]["torch"] and info["seed"] == 42

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run((out / "mlflow_run_id").read_text())
    assert run.data.params["training.maxSteps"] == "300"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 300

    # stdout is JSON lines when not on a terminal, ending with the summary
    last_line = json.loads(r.stdout.strip().splitlines()[-1])
    assert last_line["event"] == "done" and last_line["step"] == 300


def test_an_output_dir_with_url_characters_in_its_name_keeps_the_mlflow_database_inside(tmp_path):
    """`?` and `#` are a file name's characters, not a URI's query or fragment: the database is not written
    beside the directory, nor shared by two runs whose names differ after a `?`."""
    out = tmp_path / "odd" / "a?b#c"
    r = run_cli("run", str(TINY), "--output-dir", str(out), "--set", "training.maxSteps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["a?b#c"]
    from urllib.parse import quote

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{quote(str(out / 'mlflow.db'))}")
    run = client.get_run((out / "mlflow_run_id").read_text())
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2


def test_the_trained_adapter_loads_with_peft_and_generates(tmp_path, monkeypatch):
    from codex_trainer.model import load_trained

    out = tmp_path / "run"
    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT, "--set", "peft.merge=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "UserWarning" not in r.stderr  # PEFT no longer warns about the base model's path
    monkeypatch.chdir(tmp_path)  # another working directory than the run's
    model, tok = load_trained(out / "final")
    ids = tok("def ", return_tensors="pt")["input_ids"]
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 8
    assert (out / "final" / "merged" / "model.safetensors").is_file()


def test_sigterm_checkpoints_exits_143_and_a_rerun_resumes_exactly(tmp_path, straight):
    """Two runs of the trainer (SIGTERM mid-run, then the rerun) compared with an uninterrupted one (the
    `straight` fixture, paid by the first test that asks for it): three processes importing torch."""
    out = tmp_path / "run"
    log = tmp_path / "stdout"
    with log.open("w") as stdout_file:
        proc = subprocess.Popen(  # metrics on port 0: the trainer takes a free port and names it, no race
            [
                sys.executable,
                "-m",
                "codex_trainer.cli",
                "run",
                str(TINY),
                "--output-dir",
                str(out),
                "--metrics-port",
                "0",
                *SHORT,
            ],
            cwd=ROOT,
            stdout=stdout_file,
            stderr=subprocess.PIPE,
            text=True,
        )
    start = wait_for(lambda: _running(proc) and _event(log, "start"), "the start event", 180)
    step = wait_for(lambda: _running(proc) and _metric(start["metrics_port"], "codex_trainer_step", 12), "step 12", 180,
                    interval=0.05)  # fmt: skip
    proc.send_signal(15)
    _, stderr = proc.communicate(timeout=120)
    stdout = log.read_text()
    assert proc.returncode == 143, stderr[-2000:]
    stopped = json.loads([line for line in stdout.splitlines() if '"stopped"' in line][-1])
    assert step <= stopped["step"] < 30 and stopped["checkpoint_step"] == stopped["step"]
    assert (out / "checkpoints" / f"step-{stopped['step']}" / "MANIFEST.json").is_file()

    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'"resumed", "step": {stopped["step"]}' in r.stdout
    assert '"cached": true' in r.stdout  # the rerun did not tokenize again
    assert_same_weights(adapter(out), adapter(straight))
    steps = [row["step"] for row in metrics(out) if "loss" in row]
    assert steps == list(range(1, 31))  # one line per step: no gap, no repeat
    losses = {row["step"]: row["loss"] for row in metrics(out) if "loss" in row}
    reference = {row["step"]: row["loss"] for row in metrics(straight) if "loss" in row}
    assert all(abs(losses[s] - reference[s]) < 1e-6 for s in reference)


def test_kill_9_then_rerun_resumes_from_the_last_complete_checkpoint(tmp_path, straight):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "codex_trainer.cli", "run", str(TINY), "--output-dir", str(out), *SHORT],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(
        lambda: _running(proc) and (out / "checkpoints" / "step-15").is_dir(), "checkpoint step-15", 180, interval=0.05
    )
    proc.kill()
    proc.wait()
    # leftovers a kill or a torn write could leave, newer than anything complete: all must be ignored
    ck = out / "checkpoints"
    (ck / ".step-31.tmp4242").mkdir()
    (ck / ".step-31.tmp4242" / "trainable.safetensors").write_bytes(b"partial")
    newest = max((p for p in ck.iterdir() if p.name.startswith("step-")), key=lambda p: int(p.name[5:]))
    torn = ck / "step-99"
    torn.mkdir()
    for f in newest.iterdir():
        (torn / f.name).write_bytes(f.read_bytes())
    (torn / "trainable.safetensors").write_bytes(b"\0" * (torn / "trainable.safetensors").stat().st_size)

    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ignoring damaged checkpoint" in r.stdout and "step-99" in r.stdout
    assert "ignoring incomplete checkpoint" in r.stdout
    resumed = json.loads([line for line in r.stdout.splitlines() if '"resumed"' in line][0])
    assert resumed["step"] == int(newest.name[5:]) >= 15
    assert_same_weights(adapter(out), adapter(straight))


def test_a_finished_run_is_not_trained_again(straight, tmp_path):
    out = shutil.copytree(straight, tmp_path / "run")  # a copy: the other tests compare with `straight`
    before = (out / "final" / "adapter_model.safetensors").stat().st_mtime_ns
    before_metrics = (out / "metrics.jsonl").read_bytes()
    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT)
    assert r.returncode == 0
    assert "nothing to do" in r.stdout
    assert (out / "final" / "adapter_model.safetensors").stat().st_mtime_ns == before
    assert (out / "metrics.jsonl").read_bytes() == before_metrics  # no output opened


def test_a_result_of_another_step_is_written_again_from_the_newest_checkpoint(straight, tmp_path):
    """final/ from an earlier, shorter run of the directory (a longer run killed as it wrote its own final/, then
    run again; or maxSteps lowered after a stopped run): a rerun said "already complete" over the old weights, and
    eval named them the new step's. Now final/ is written again from the newest checkpoint, and says its step."""
    from safetensors.torch import save_file

    out = shutil.copytree(straight, tmp_path / "run")
    final = out / "final"
    save_file({k: v * 0 for k, v in adapter(out).items()}, final / "adapter_model.safetensors")
    (final / "codex-result.json").write_text('{"step": 20}\n')
    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nothing to do" not in r.stdout
    assert_same_weights(adapter(out), adapter(straight))
    assert json.loads((final / "codex-result.json").read_text()) == {"step": 30}
    ev = run_cli("eval", str(final), "--max-batches", "1")
    lines = [json.loads(x) for x in ev.stdout.splitlines() if x.startswith("{")]
    assert ev.returncode == 0 and [x["step"] for x in lines if x["type"] == "summary"] == [30], ev.stderr[-2000:]
    again = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT)
    assert again.returncode == 0 and "already complete at step 30; nothing to do" in again.stdout


def test_a_finished_runs_result_without_its_checkpoints_is_never_trained_over(straight, tmp_path):
    """Its checkpoints deleted (or another run's final/ in the directory): a run from step 0 would replace the
    result; it exits 2 saying so, before anything is loaded, and the result stays as it was."""
    out = shutil.copytree(straight, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    before = (out / "final" / "adapter_model.safetensors").read_bytes()
    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT[:2])
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        f"codex-train: invalid --output-dir: '{out}' holds an earlier run's result (final/) and no checkpoint to "
        f"resume from: a new run would replace it; give another --output-dir, or move {out / 'final'} away to "
        "train again"
    ]
    assert (out / "final" / "adapter_model.safetensors").read_bytes() == before


def test_a_start_killed_before_its_first_checkpoint_changes_nothing_the_next_start_trains(straight, tmp_path):
    """All such a start leaves is the scratch base it made: the next start, finding it, trains the very model an
    uninterrupted run trains (the same seed gives the same adapter)."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(straight / "base-model", out / "base-model")
    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(adapter(out), adapter(straight))


def test_a_base_model_directory_no_run_made_is_never_replaced(tmp_path):
    """--output-dir . in a project that keeps its own base-model/: the scratch model would replace it."""
    out = tmp_path / "project"
    (out / "base-model").mkdir(parents=True)
    (out / "base-model" / "config.json").write_text('{"mine": true}')
    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT[:2])
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        f"codex-train: invalid --output-dir: '{out}' has a base-model/ that no codex-train run made (no "
        "codex-base.json in it, no run.json beside it): this run would replace it with its scratch model; give "
        f"another --output-dir, or move {out / 'base-model'} away"
    ]
    assert (out / "base-model" / "config.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in (out / "base-model").iterdir()) == ["config.json"]


def test_changing_the_data_under_a_run_is_refused(straight, tmp_path):
    out = shutil.copytree(straight, tmp_path / "run")
    r = run_cli("run", str(TINY), "--output-dir", str(out), *SHORT, "--set", "data.maxSeqLength=64")
    assert r.returncode == 2
    assert "invalid spec.data" in r.stderr and "new --output-dir" in r.stderr
    assert "Traceback" not in r.stderr


def _running(proc) -> bool:
    assert proc.poll() is None, "trainer exited early"
    return True


def _event(log, name) -> dict | None:
    """The first `name` event the trainer printed (JSON lines on stdout), or None yet."""
    for line in log.read_text().splitlines():
        if f'"event": "{name}"' in line:
            return json.loads(line)
    return None


def _metric(port, name, at_least) -> float | None:
    """Gauge `name` from the trainer's /metrics once it reached `at_least` (0.0 counts as reached for 0)."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(name + "{") and float(line.rsplit(" ", 1)[1]) >= at_least:
            assert "codex_trainer_loss{" in body and "codex_trainer_tokens_per_second{" in body
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_local_model_directory_is_fine_tuned_in_full(tmp_path, in_root):
    """model.source as a local path, its own tokenizer, peft.method none: final/ is a whole model."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from codex_trainer.cli import main
    from codex_trainer.tokenizer import byte_tokenizer

    local = tmp_path / "my-model"
    tok = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        eos_token_id=tok.eos_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(local)
    tok.save_pretrained(local)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(TINY),
            "--output-dir",
            str(out),
            "--set",
            f"model={{source: {local}}}",
            "--set",
            "tokenizer=null",
            "--set",
            "peft={method: none}",
            "--set",
            "training.maxSteps=6",
            "--set",
            "tracking.mlflow.enabled=false",
        ]
    )
    assert code == 0
    trained = AutoModelForCausalLM.from_pretrained(out / "final")
    before = AutoModelForCausalLM.from_pretrained(local)
    assert not torch.equal(trained.model.embed_tokens.weight, before.model.embed_tokens.weight)
    assert not (out / "base-model").exists()  # only a scratch model needs its base kept
