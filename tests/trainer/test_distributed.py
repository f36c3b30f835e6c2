"""The same trainer as two processes (torchrun, gloo on CPU): only rank 0 writes, and the result
equals one process with the same global batch."""

from __future__ import annotations

import json
import os
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


def hub_cache(root, main: str, commits: dict[str, int]):
    """A Hub cache of codex-test/tiny (read offline): a tiny Llama at each commit, its weights from the seed
    given, refs/main at `main`; the tokenizer of each commit but the first lowercases its text."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from codex_trainer.tokenizer import byte_tokenizer

    repo = root / "models--codex-test--tiny"
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=259)  # fmt: skip
    for n, (commit, seed) in enumerate(commits.items()):
        torch.manual_seed(seed)
        snapshot = repo / "snapshots" / commit
        LlamaForCausalLM(config).save_pretrained(snapshot)
        byte_tokenizer().save_pretrained(snapshot)
        if n:  # other tokens of the same data (every row of the example's data has capitals)
            saved = json.loads((snapshot / "tokenizer.json").read_text())
            saved["normalizer"] = {"type": "Lowercase"}
            (snapshot / "tokenizer.json").write_text(json.dumps(saved))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main)
    return root


def test_ranks_whose_caches_hold_other_commits_of_a_branch_train_on_rank_0s(tmp_path):
    """hf://org/name on a fresh multi-node start: each node resolved main in its own cache (or downloaded it), and a
    push between them gave the ranks other weights and tokens under one adapter. Every rank loads the model and its
    tokenizer at rank 0's commit, and one whose cache says otherwise says so: the result equals one process on rank
    0's commit. (Rank 1's cache is another folder.)"""
    first, pushed = "a" * 40, "b" * 40
    cache0 = hub_cache(tmp_path / "hub0", first, {first: 1, pushed: 2})
    cache1 = hub_cache(tmp_path / "hub1", pushed, {first: 1, pushed: 2})
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nif os.environ.get('RANK') == '1':\n    os.environ['HF_HUB_CACHE'] = os.environ['RANK1_CACHE']\n"
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache0), "RANK1_CACHE": str(cache1)}
    hub = ["--set", "model={source: 'hf://codex-test/tiny'}", "--set", "tokenizer=hf://codex-test/tiny",
           "--set", "training.maxSteps=4", *COMMON[2:]]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m",
         "codex_trainer.cli", "run", str(TINY), "--output-dir", str(two), *hub, "--set", "training.batchSize=4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": path},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    said = f"rank 1 finds hf://codex-test/tiny at commit {pushed}, rank 0 at {first}: every rank loads {first}"
    assert said in r.stderr, r.stderr[-3000:]
    r1 = run_cli("run", str(TINY), "--output-dir", str(one), *hub, "--set", "training.batchSize=8", env=env)
    assert r1.returncode == 0, r1.stderr[-3000:]
    a = load_file(two / "final" / "adapter_model.safetensors")
    b = load_file(one / "final" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert json.loads((two / "final" / "adapter_config.json").read_text())["revision"] == first
