"""codex_trainer.contract is what the trainer does: the metrics it serves, where it writes checkpoints, the
environment it reads, the exit codes and termination message it leaves. And it is the only place that
spells those names, importable without torch by the operator."""

from __future__ import annotations

import ast
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from codex_operator import names
from codex_trainer import checkpoint, contract
from codex_trainer.cli import _final_numbers, _stopped_message
from codex_trainer.errors import SpecError, TransientError, write_termination_message
from codex_trainer.launch import Rendezvous, outcome
from codex_trainer.metrics import Prometheus
from codex_trainer.outdir import LOCK_FILE, output_lock
from support import ROOT

METRICS = {k: v for k, v in vars(contract).items() if k.startswith("METRIC_")}
ENVS = {k: v for k, v in vars(contract).items() if k.startswith("ENV_")}


def save(root, step):
    return checkpoint.save(root, step, {"w": torch.zeros(4)}, {"state": {}, "param_groups": []}, {}, {})


# ---------------------------------------------------------------- rank 0's metrics


def served(prom: Prometheus) -> dict:
    """name -> sample, as a scraper (the operator) parses rank 0's endpoint."""
    text = generate_latest(prom.registry).decode()
    return {s.name: s for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_trainers_endpoint_serves_every_metric_the_operator_reads():
    prom = Prometheus(None, "job-a")
    for i, gauge in enumerate(v for v in vars(prom).values() if hasattr(v, "set")):
        gauge.set(i + 1)
    samples = served(prom)
    assert METRICS and set(METRICS.values()) <= set(samples), set(METRICS.values()) - set(samples)
    for name in METRICS.values():
        assert samples[name].labels == {"job_name": "job-a"} and samples[name].value > 0
    prom.step.set(42)
    prom.checkpoint_step.set(40)
    samples = served(prom)
    assert (samples[contract.METRIC_STEP].value, samples[contract.METRIC_CHECKPOINT_STEP].value) == (42, 40)


def test_a_figure_not_measured_yet_is_absent_not_0():
    """Before the first evaluation and checkpoint a scraper sees no eval loss and no checkpoint step (a 0 would
    read as a perfect loss, and a checkpoint at step 0); each appears with its first value."""
    prom = Prometheus(None, "job-a")
    prom.step.set(101)
    samples = served(prom)
    assert contract.METRIC_STEP in samples
    assert not {contract.METRIC_EVAL_LOSS, contract.METRIC_CHECKPOINT_STEP, contract.METRIC_LOSS} & set(samples)
    prom.eval_loss.set(2.5)
    assert served(prom)[contract.METRIC_EVAL_LOSS].value == 2.5


def test_a_resumed_run_serves_its_checkpoints_step_and_eval_loss_before_its_next_evaluation():
    """A pod started again in the same attempt (a suspend, a parallelism edit) resumes from a checkpoint: the
    scraper sees that checkpoint's eval loss at once, not a blank EVAL column until the next evaluation."""
    from codex_trainer.console import Console
    from codex_trainer.metrics import Sink

    prom = Prometheus(None, "job-a")
    Sink(True, Console(False), prom).resumed_from(85, 2.25)
    samples = served(prom)
    assert samples[contract.METRIC_EVAL_LOSS].value == 2.25
    assert (samples[contract.METRIC_STEP].value, samples[contract.METRIC_CHECKPOINT_STEP].value) == (85, 85)
    fresh = Prometheus(None, "job-b")
    Sink(True, Console(False), fresh).resumed_from(10, None)  # no evaluation before that checkpoint: still none
    assert contract.METRIC_EVAL_LOSS not in served(fresh)


# ---------------------------------------------------------------- the output directory


def test_a_saved_checkpoint_lies_where_the_contract_says(tmp_path):
    path = save(tmp_path / contract.CHECKPOINTS_DIR, 5)
    assert path == tmp_path / contract.checkpoint_dir(5)
    assert (path / contract.CHECKPOINT_MANIFEST).is_file()
    assert contract.STEP_DIR.match(path.name).group(1) == "5"
    assert checkpoint.complete(tmp_path / contract.CHECKPOINTS_DIR) == [(5, path)]


def test_a_stopped_run_names_its_newest_checkpoint(tmp_path):
    save(tmp_path / contract.CHECKPOINTS_DIR, 3)
    save(tmp_path / contract.CHECKPOINTS_DIR, 12)
    message = _stopped_message(signal.SIGTERM, tmp_path / contract.CHECKPOINTS_DIR)
    assert message == "stopped by SIGTERM after checkpoint at step 12"
    assert contract.stopped_checkpoint_step(f"some earlier line\n{message}") == 12  # what the operator reads of it
    assert contract.stopped_checkpoint_step(_stopped_message(signal.SIGTERM, tmp_path / "none")) is None


# ---------------------------------------------------------------- the termination message


def test_a_finished_runs_termination_message_has_the_contracts_keys(tmp_path, monkeypatch):
    save(tmp_path / contract.CHECKPOINTS_DIR, 4)
    rows = [{"step": 4, "loss": 1.5}, {"step": 4, "eval_loss": 1.75}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = tmp_path / "termination-log"
    monkeypatch.delenv(contract.ENV_WORKER_MESSAGES, raising=False)
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(log))

    write_termination_message(json.dumps(_final_numbers(tmp_path)))

    final = json.loads(log.read_text())
    assert set(final) == set(contract.FINAL_KEYS)
    assert (final[contract.FINAL_STEP], final[contract.FINAL_LOSS], final[contract.FINAL_EVAL_LOSS]) == (4, 1.5, 1.75)
    ckpt = final[contract.FINAL_CHECKPOINT]
    assert set(ckpt) == {contract.FINAL_CHECKPOINT_STEP, contract.FINAL_CHECKPOINT_SAVED_AT}
    assert ckpt[contract.FINAL_CHECKPOINT_STEP] == 4
    assert datetime.fromisoformat(ckpt[contract.FINAL_CHECKPOINT_SAVED_AT].replace("Z", "+00:00")).tzinfo


def test_a_termination_message_is_cut_to_what_the_kubelet_keeps(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    monkeypatch.delenv(contract.ENV_WORKER_MESSAGES, raising=False)
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(log))
    write_termination_message("x" * (2 * contract.TERMINATION_MESSAGE_LIMIT))
    assert log.read_bytes() == b"x" * contract.TERMINATION_MESSAGE_LIMIT + b"\n"


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("codes", "signum", "expected"),
    [
        ({0: contract.EXIT_OK, 1: contract.EXIT_OK}, None, contract.EXIT_OK),
        ({0: contract.EXIT_OK, 1: contract.EXIT_USER_ERROR}, None, contract.EXIT_USER_ERROR),
        ({0: contract.EXIT_SIGTERM, 1: contract.EXIT_SIGTERM}, None, contract.EXIT_SIGTERM),
        ({0: contract.EXIT_SIGTERM, 1: -signal.SIGKILL}, None, contract.EXIT_RETRYABLE),
        ({}, signal.SIGTERM, contract.EXIT_SIGTERM),
    ],
)
def test_the_launchers_exit_code_is_one_the_operator_knows(codes, signum, expected):
    assert outcome(codes, signum) == expected


# ---------------------------------------------------------------- the pod's environment


def test_the_rendezvous_is_read_from_the_contracts_names():
    env = {
        contract.ENV_NNODES: "3",
        contract.ENV_NPROC_PER_NODE: "2",
        contract.ENV_NODE_RANK: "1",
        contract.ENV_MASTER_ADDR: "job-a1-0.job-workers",
        contract.ENV_MASTER_PORT: "29501",
    }
    assert Rendezvous.from_env(env) == Rendezvous(3, 2, 1, "job-a1-0.job-workers", 29501)
    # unset, the trainer assumes the port the operator sets
    assert Rendezvous.from_env({}).master_port == names.MASTER_PORT
    with pytest.raises(SpecError, match=contract.ENV_NODE_RANK):
        Rendezvous.from_env({contract.ENV_NNODES: "2", contract.ENV_NODE_RANK: "2"})
    with pytest.raises(SpecError, match=f"{contract.ENV_MASTER_PORT}: must be at most 65535 .got 99999"):
        Rendezvous.from_env({contract.ENV_NPROC_PER_NODE: "2", contract.ENV_MASTER_PORT: "99999"})


def test_the_lock_wait_is_read_from_the_contracts_name(tmp_path, monkeypatch, capsys):
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a previous attempt's pod, still checkpointing
    release = threading.Timer(0.3, fcntl.flock, [fd, fcntl.LOCK_UN])  # ... lets go a moment later
    try:
        monkeypatch.delenv(contract.ENV_LOCK_WAIT, raising=False)
        with pytest.raises(SpecError, match="another run"), output_lock(tmp_path):
            pass
        monkeypatch.setenv(contract.ENV_LOCK_WAIT, "30")
        release.start()
        start = time.monotonic()
        with output_lock(tmp_path):
            waited = time.monotonic() - start
        assert 0.2 < waited < 10
        # the pod's log says at once what it waits for, not only when the wait is over
        assert f"waiting up to 30 s for {tmp_path}: another run (pid unknown) holds it" in capsys.readouterr().err
        fcntl.flock(fd, fcntl.LOCK_EX)  # an earlier attempt's process that outlives the wait (its node lost)
        monkeypatch.setenv(contract.ENV_LOCK_WAIT, "0.3")
        # ... or another job given the same volume (storage.existingClaim)
        retried = "still holds .* an earlier attempt .* or another job using the same volume .*existingClaim.* retried"
        with pytest.raises(TransientError, match=retried), output_lock(tmp_path):
            pass
        for bad in ("abc", "-5", "nan", "inf"):
            monkeypatch.setenv(contract.ENV_LOCK_WAIT, bad)
            with pytest.raises(SpecError, match=f"CODEX_LOCK_WAIT.*a number of seconds.*{bad}"), output_lock(tmp_path):
                pass
    finally:
        release.cancel()
        if release.is_alive():
            release.join()
        os.close(fd)


# ---------------------------------------------------------------- one torch-free place


def test_the_operator_imports_the_contract_without_torch():
    code = (
        "import json, sys, codex_operator.names, codex_trainer.contract\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'codex_trainer'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    # no torch, and nothing of the trainer but the contract
    assert json.loads(proc.stdout) == ["codex_trainer", "codex_trainer.contract"]


SPELLED_ONLY_IN_THE_CONTRACT = {
    *ENVS.values(),
    *METRICS.values(),
    contract.CHECKPOINT_MANIFEST,
    "codex_trainer_step",
    "CODEX_TERMINATION_LOG",
    "CODEX_LOCK_WAIT",
    "CODEX_ATTEMPT",
}


def test_no_module_spells_the_contracts_names_itself():
    found = []
    for path in sorted([*(ROOT / "trainer").rglob("*.py"), *(ROOT / "operator").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "trainer/codex_trainer/contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), rel)):
            if isinstance(node, ast.Constant) and node.value in SPELLED_ONLY_IN_THE_CONTRACT:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found, "use codex_trainer.contract's name instead:\n" + "\n".join(found)
