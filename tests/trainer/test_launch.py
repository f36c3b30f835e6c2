"""`codex-train launch`, a trainer pod's entry point: the job is checked before any worker starts, one
process trains in-process, several go through torch.distributed.run, and the exit code keeps the
contract torchrun alone loses (2 for a bad job, 143 after SIGTERM, 1 for anything else)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from codex_trainer.cli import main
from codex_trainer.contract import ENV_WORKER_MESSAGES
from codex_trainer.errors import SpecError, read_worker_messages, write_termination_message
from codex_trainer.launch import Rendezvous, outcome
from support import ROOT, TINY, run_cli, wait_for

FAST = ["--set", "tracking.mlflow.enabled=false", "--set", "training.batchSize=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path, **extra) -> dict:
    return {"CODEX_TERMINATION_LOG": str(tmp_path / "termination-log"), "MASTER_PORT": str(_free_port()), **extra}


# ---------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("codes", "signum", "expected"),
    [
        ({0: 0, 1: 0}, None, 0),
        ({1: 2}, None, 2),  # a worker found a bad spec or data: permanent, whatever the others did
        ({0: 1, 1: 2}, None, 2),
        ({0: -9, 1: 2}, None, 2),
        ({1: 1}, None, 1),
        ({0: -9}, None, 1),  # killed (OOM, say): retried
        ({0: 143, 1: 143}, None, 143),  # the workers were stopped gracefully
        ({0: 143, 1: 1}, None, 1),
        ({}, signal.SIGTERM, 143),  # the launcher was stopped: forwarded, then 128+signal
        ({1: 2}, signal.SIGINT, 130),
    ],
)
def test_outcome_maps_worker_exits_onto_the_contract(codes, signum, expected):
    assert outcome(codes, signum) == expected


def test_rendezvous_from_the_environment():
    assert Rendezvous.from_env({}) == Rendezvous(1, 1, 0, "localhost", 29500)
    r = Rendezvous.from_env({"NNODES": "2", "NPROC_PER_NODE": "4", "NODE_RANK": "1", "MASTER_ADDR": "a-0.svc"})
    assert (r.world_size, r.node_rank, r.master_addr, r.master_port) == (8, 1, "a-0.svc", 29500)
    with pytest.raises(SpecError, match="NODE_RANK"):
        Rendezvous.from_env({"NNODES": "2", "NODE_RANK": "2"})
    with pytest.raises(SpecError, match="NNODES"):
        Rendezvous.from_env({"NNODES": "two"})


def test_a_worker_writes_its_message_for_the_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_WORKER_MESSAGES, str(tmp_path))
    monkeypatch.setenv("CODEX_TERMINATION_LOG", str(tmp_path / "pod-log"))
    monkeypatch.setenv("RANK", "3")
    write_termination_message("invalid spec.data.train: file 'x' not found\n")
    assert read_worker_messages(tmp_path) == {3: "invalid spec.data.train: file 'x' not found"}
    assert not (tmp_path / "pod-log").exists()  # the launcher alone writes the pod's message


def test_a_missing_data_file_exits_2_before_training_with_the_message_in_the_termination_log(
    tmp_path, monkeypatch, capsys, in_root
):
    log = tmp_path / "termination-log"
    monkeypatch.setenv("CODEX_TERMINATION_LOG", str(log))
    monkeypatch.setenv("NPROC_PER_NODE", "2")  # checked before any worker would start
    missing = tmp_path / "missing.jsonl"
    args = ["launch", str(TINY), "--output-dir", str(tmp_path / "out"), "--set", f"data.train=[{missing}]"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        err.strip() == f"codex-train: invalid spec.data.train: file '{missing}' not found"  # absolute: no word on where
    )
    assert log.read_text().strip() == err.strip().removeprefix("codex-train: ")
    assert not (tmp_path / "out").exists()


def test_the_real_process_exits_2_with_no_traceback(tmp_path):
    r = run_cli("launch", str(TINY), "--output-dir", str(tmp_path / "out"), "--set", "peft.r=0", env=_env(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip() == "codex-train: invalid spec.peft.r: Input should be greater than 0 (got 0)"
    assert (tmp_path / "termination-log").read_text() == "invalid spec.peft.r: Input should be greater than 0 (got 0)\n"


def test_a_node_whose_master_never_resolves_exits_1_retryable(tmp_path, monkeypatch, capsys, in_root):
    log = tmp_path / "termination-log"
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "no-such-host.invalid", "CODEX_DNS_TIMEOUT": "1"}
    for k, v in {**env, "CODEX_TERMINATION_LOG": str(log)}.items():
        monkeypatch.setenv(k, v)
    assert main(["launch", str(TINY), "--output-dir", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == "codex-train: MASTER_ADDR no-such-host.invalid did not resolve within 1 s"
    assert log.read_text() == "MASTER_ADDR no-such-host.invalid did not resolve within 1 s\n"


def test_launch_needs_an_output_dir(capsys):
    with pytest.raises(SystemExit) as e:
        main(["launch", str(TINY)])
    assert e.value.code == 2 and "--output-dir" in capsys.readouterr().err


# ---------------------------------------------------------------------- training


@pytest.mark.slow
def test_one_process_trains_in_process_and_exits_0(tmp_path):
    out = tmp_path / "out"
    r = run_cli("launch", str(TINY), "--output-dir", str(out), "--set", "training.maxSteps=5", *FAST,
                env=_env(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch.distributed" not in r.stderr  # no launcher in between
    assert json.loads((out / "run.json").read_text())["world_size"] == 1
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "termination-log").read_text())["step"] == 5  # the finished run's last step


@pytest.mark.slow
def test_two_processes_train_and_exit_0(tmp_path):
    out = tmp_path / "out"
    r = run_cli("launch", str(TINY), "--output-dir", str(out), "--set", "training.maxSteps=4", *FAST,
                env=_env(tmp_path, NPROC_PER_NODE="2"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4"]


@pytest.mark.slow
def test_a_worker_that_finds_bad_data_makes_the_launch_exit_2_not_1(tmp_path):
    # valid on paper and the file exists, so the workers start; they find the data too small for the batch
    r = run_cli("launch", str(TINY), "--output-dir", str(tmp_path / "out"), *FAST, "--set", "training.batchSize=100000",
                env=_env(tmp_path, NPROC_PER_NODE="2"))  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    assert "codex-train launch: worker rank" in r.stderr and "invalid spec or data (exit 2)" in r.stderr
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith("invalid spec.training.batchSize: the training data makes"), message
    assert len(message.strip().splitlines()) == 1  # the ranks said the same thing: once
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_sigterm_during_a_two_process_launch_checkpoints_and_exits_143(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "codex_trainer.cli", "launch", str(TINY), "--output-dir", str(out), *FAST],
        cwd=ROOT,
        env={**os.environ, **_env(tmp_path, NPROC_PER_NODE="2")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 2,
             "two training steps", timeout=180)  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    stopped = json.loads([line for line in stdout.splitlines() if '"stopped"' in line][-1])
    step = stopped["checkpoint_step"]
    assert step == stopped["step"] < 300
    assert (out / "checkpoints" / f"step-{step}" / "MANIFEST.json").is_file()
    assert (tmp_path / "termination-log").read_text() == f"stopped by SIGTERM after checkpoint at step {step}\n"
    assert "codex-train launch: stopped by SIGTERM" in stderr
