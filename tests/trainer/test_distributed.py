"""The same trainer as two processes (torchrun, gloo on CPU): only rank 0 writes, and the result
equals one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from support import ROOT, TINY, run_cli

pytestmark = pytest.mark.slow

COMMON = [
    "--set",
    "training.maxSteps=20",
    "--set",
    "peft.dropout=0",
    "--set",
    "tracking.mlflow.enabled=false",
    "--set",
    "checkpoint.everySteps=10",
    "--set",
    "eval.everySteps=10",
]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """Two runs of a few steps (torchrun with two worker processes and gloo, then one process): the time is
    torch starting in each process and the rendezvous, about 40 s under coverage."""
    two = tmp_path / "two"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",  # its rendezvous store takes a free port itself: no port to pick and race for
            "-m",
            "codex_trainer.cli",
            "run",
            str(TINY),
            "--output-dir",
            str(two),
            *COMMON,
            "--set",
            "training.batchSize=4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    one = tmp_path / "one"
    r1 = run_cli("run", str(TINY), "--output-dir", str(one), *COMMON, "--set", "training.batchSize=8")
    assert r1.returncode == 0, r1.stderr[-3000:]

    # rank 0 alone wrote: one line per step, one start event, the run records two processes
    rows = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == list(range(1, 21))
    assert r.stdout.count('"event": "start"') == 1
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-10", "step-20"]

    a = load_file(two / "final" / "adapter_model.safetensors")
    b = load_file(one / "final" / "adapter_model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    evals_two = [row["eval_loss"] for row in rows if "eval_loss" in row]
    evals_one = [
        json.loads(x)["eval_loss"] for x in (one / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x
    ]
    assert evals_two == pytest.approx(evals_one, abs=1e-5)

    # resumed on one process: allowed (a node lost), but said with what changes and how to keep the training
    more = [*COMMON, "--set", "training.maxSteps=22", "--set", "training.batchSize=4"]
    r2 = run_cli("run", str(TINY), "--output-dir", str(two), *more)
    assert r2.returncode == 0, r2.stderr[-3000:]
    said = "resuming on 1 process, saved on 2: a step now trains 4 sequences instead of 8"
    assert said in r2.stdout and "resume on 2 processes to continue the same training" in r2.stdout
