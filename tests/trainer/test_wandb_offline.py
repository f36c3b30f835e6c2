"""Weights & Biases offline in real runs of the tiny example: the run W&B recorded is read back from its own
transaction logs and matches metrics.jsonl; a job killed between checkpoints and resumed continues the same
W&B run with every step once; W&B's service process does not outlive the trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest

from codex_trainer.wandb_sink import RUN_ID_FILE, read_history, read_records
from support import ROOT, TINY, run_cli, wait_for

pytestmark = pytest.mark.slow

ARGS = [
    "--set", "tracking.mlflow.enabled=false", "--set", "tracking.wandb.enabled=true",
    "--set", "tracking.wandb.project=tests", "--set", "training.maxSteps=10",
    "--set", "checkpoint.everySteps=4", "--set", "eval.everySteps=4", "--set", "eval.maxBatches=2",
]  # fmt: skip


def service_of(pid: int) -> list[psutil.Process]:
    """W&B's service processes started for the trainer process `pid` (wandb-core watches its --pid)."""
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if "wandb-core" in (p.info["name"] or "") and "--pid" in cmd and cmd[cmd.index("--pid") + 1] == str(pid):
            found.append(p)
    return found


def run_and_kill_at(out, step: int, args: list[str], env: dict) -> None:
    """`codex-train run` killed (SIGKILL) once metrics.jsonl has `step`; returns when W&B's service is gone too."""
    cmd = [sys.executable, "-m", "codex_trainer.cli", "run", str(TINY), "--output-dir", str(out), *args]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    metrics = out / "metrics.jsonl"

    def reached() -> bool:
        return metrics.is_file() and any(f'"step": {step},' in line for line in metrics.read_text().splitlines())

    wait_for(lambda: proc.poll() is not None or reached(), f"step {step}", 180, interval=0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.kill()
    proc.communicate(timeout=60)
    wait_for(lambda: not service_of(proc.pid), "W&B's service to end with the killed trainer", 30)


def test_an_offline_run_killed_and_resumed_is_one_wandb_run_matching_metrics_jsonl(tmp_path):
    out = tmp_path / "run"
    env = {"WANDB_API_KEY": "", "WANDB_MODE": "online", "HOME": str(tmp_path)}  # no account: the spec's offline wins
    run_and_kill_at(out, 6, ARGS, env)  # between checkpoints: the resume redoes the steps after 4, some W&B has
    metrics = out / "metrics.jsonl"

    r = run_cli("run", str(TINY), "--output-dir", str(out), *ARGS, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wandb" not in r.stdout.lower() and "wandb:" not in r.stderr  # W&B says nothing on the console

    run_id = (out / RUN_ID_FILE).read_text().strip()
    logs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [p.name for p in logs] == [f"run-{run_id}.wandb"] * 2  # one W&B run, one directory per start
    rows = [row for p in logs for row in read_history(p)]
    assert [s for s, _ in rows] == list(range(1, 11))  # every step once, in order, across both starts

    jsonl = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = {m["step"]: m for m in jsonl if "loss" in m}
    evals = {m["step"]: m for m in jsonl if "eval_loss" in m}
    for step, row in rows:  # a redone step comes out as it did before, so either start's figures match
        assert row["train/loss"] == pytest.approx(train[step]["loss"], rel=1e-5), step
        assert row["train/learning_rate"] == pytest.approx(train[step]["learning_rate"], rel=1e-6), step
        assert row["train/grad_norm"] > 0 and row["train/tokens_per_second"] > 0
        assert row["resources/process_memory_mb"] > 0
    assert {s: r["eval/loss"] for s, r in rows if "eval/loss" in r} == {s: e["eval_loss"] for s, e in evals.items()}
    assert {s: r["eval/perplexity"] for s, r in rows if "eval/perplexity" in r} == pytest.approx(
        {s: e["perplexity"] for s, e in evals.items()}
    )
    assert sorted(evals) == [4, 8, 10]

    from wandb.proto import wandb_internal_pb2 as pb

    records = [pb.Record.FromString(raw) for raw in read_records(logs[-1])]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_id, run.project, run.display_name) == (run_id, "tests", "tiny-cpu")
    training = json.loads(next(i.value_json for i in run.config.update if i.key == "training"))
    assert training["maxSteps"] == 10  # the config is the spec, as run.json shows it
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]


def test_a_job_killed_before_its_first_checkpoint_starts_a_new_wandb_run_matching_metrics_jsonl(tmp_path):
    """No checkpoint to resume: the next start is a fresh one, in W&B too (a new run holding its own figures)."""
    out = tmp_path / "run"
    env = {"WANDB_API_KEY": "", "HOME": str(tmp_path)}
    no_checkpoint = [*ARGS, "--set", "checkpoint.everySteps=100"]
    run_and_kill_at(out, 5, no_checkpoint, env)
    killed = (out / RUN_ID_FILE).read_text().strip()

    again = [*no_checkpoint, "--set", "training.learningRate=0.001", "--set", "training.maxSteps=4"]
    r = run_cli("run", str(TINY), "--output-dir", str(out), *again, env=env)
    assert r.returncode == 0, r.stderr[-3000:]

    fresh = (out / RUN_ID_FILE).read_text().strip()
    assert fresh != killed
    (log,) = (out / "wandb").glob(f"offline-run-*/run-{fresh}.wandb")
    rows = dict(read_history(log))
    train = {m["step"]: m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m}
    assert sorted(rows) == sorted(train) == [1, 2, 3, 4]
    for step, row in rows.items():
        assert row["train/learning_rate"] == pytest.approx(train[step]["learning_rate"], rel=1e-6), step
        assert row["train/loss"] == pytest.approx(train[step]["loss"], rel=1e-5), step
