"""Signals to a run (`codex-train run` as a subprocess): SIGTERM and Ctrl-C stop it at the step with a checkpoint
(143, 130), a second Ctrl-C at once, a closed terminal (SIGHUP) as SIGTERM with 129, and none of them prints a
traceback."""

from __future__ import annotations

import json
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from support import ROOT, TINY, run_cli, wait_for

QUICK = ["--set", "tracking.mlflow.enabled=false", "--set", "checkpoint.everySteps=2", "--set", "eval.everySteps=100"]


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_during_a_long_evaluation_stops_it_checkpoints_and_exits_143_soon(tmp_path):
    """Evaluation every 2 steps over about 41,000 validation sequences, one at a time: minutes, far longer
    than a step. SIGTERM goes in once the trainer says the evaluation at step 2 has started; the rerun's
    evaluations are capped (eval.maxBatches, which may change on resume) so the test takes seconds."""
    valid = tmp_path / "valid.jsonl"
    rows = (ROOT / "configs/data/tiny-code.jsonl").read_text()
    valid.write_text(rows * 6)
    out = tmp_path / "out"
    args = ["--set", f"data.validation=[{valid}]", "--set", "data.maxSeqLength=32", "--set", "eval.batchSize=1"]
    args += ["--set", "eval.everySteps=2", "--set", "training.maxSteps=10", "--set", "tracking.mlflow.enabled=false"]
    err = (tmp_path / "stderr").open("w+")  # a file: a full stderr pipe must not stall the trainer
    proc = subprocess.Popen(
        [sys.executable, "-m", "codex_trainer.cli", "run", str(TINY), "--output-dir", str(out), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=lambda: [*map(lines.put, proc.stdout or []), lines.put(None)], daemon=True).start()
    seen = []
    while True:  # JSON lines (the pipe is not a terminal), until the evaluation at step 2 starts
        line = lines.get(timeout=300)
        if line is None:
            pytest.fail(f"the run ended before its evaluation at step 2: {proc.wait()}\n{''.join(seen)[-2000:]}")
        seen.append(line)
        if '"event": "evaluating", "step": 2' in line:
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    stdout = "".join(seen) + "".join(iter(lambda: lines.get(timeout=10) or "", ""))
    err.seek(0)
    stderr = err.read()
    assert proc.returncode == 143, stderr[-2000:]
    assert time.monotonic() - sent < 10
    assert "evaluation at step 2 stopped early by a signal; not recorded" in stdout
    assert (out / "checkpoints" / "step-2" / "MANIFEST.json").is_file()
    assert not any("eval_loss" in row for row in metrics(out))
    assert "Traceback" not in stderr

    # the evaluation the signal cut short is still owed: the rerun does it before its first step
    r = run_cli(
        "run", str(TINY), "--output-dir", str(out), *args, "--set", "training.maxSteps=4", "--set", "eval.maxBatches=50"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert [row["step"] for row in metrics(out) if "eval_loss" in row] == [2, 4]
    assert '"event": "evaluating", "step": 2' in r.stdout.split('"event": "resumed"', 1)[1].split('"step": 3')[0]


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path):
    """Long steps (gradient accumulation 32), so both signals land inside one step."""
    out = tmp_path / "out"
    slow = ["--set", "training.gradientAccumulation=32", "--set", "training.batchSize=16"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "codex_trainer.cli", "run", str(TINY), "--output-dir", str(out), *QUICK, *slow],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text(), "a first step")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopped at once by a second Ctrl-C; the last complete checkpoint stays" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]


def _slow_run(out: pathlib.Path, ignore_hangup: bool = False) -> subprocess.Popen:
    """A run of long steps (gradient accumulation 32), its output in files: a closed terminal's pipe is not read."""
    slow = ["--set", "training.gradientAccumulation=32", "--set", "training.batchSize=16"]
    return subprocess.Popen(
        [sys.executable, "-m", "codex_trainer.cli", "run", str(TINY), "--output-dir", str(out), *QUICK, *slow],
        cwd=ROOT,
        stdout=(out.parent / "stdout").open("w"),
        stderr=(out.parent / "stderr").open("w"),
        # SIGHUP as a terminal's run has it, whatever the tests' own (a suite run under nohup ignores it)
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN if ignore_hangup else signal.SIG_DFL),
    )


def test_a_closed_terminal_stops_the_run_with_a_checkpoint_and_nohup_keeps_it_going(tmp_path):
    """SIGHUP (the terminal closed, an ssh session dropped) is a stop like SIGTERM: the step is finished and
    checkpointed, exit 129. Under nohup (SIGHUP ignored) the run goes on."""
    out = tmp_path / "out"
    proc = _slow_run(out)
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text(), "a first step")
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=120) == 129, (tmp_path / "stderr").read_text()[-2000:]
    step = max(r["step"] for r in metrics(out) if "loss" in r)
    assert (out / "checkpoints" / f"step-{step}" / "MANIFEST.json").is_file()
    # output to files stays there (only a terminal's is dropped): the stop is said, and nothing went wrong
    assert "SIGHUP received: finishing this step and checkpointing" in (tmp_path / "stderr").read_text()
    assert (
        '"event": "stopped"' in (tmp_path / "stdout").read_text()
        and '"signal": "SIGHUP"' in (tmp_path / "stdout").read_text()
    )
    assert "Traceback" not in (tmp_path / "stderr").read_text()

    kept = tmp_path / "nohup"
    kept.mkdir()
    proc = _slow_run(kept / "out", ignore_hangup=True)
    wait_for(lambda: (kept / "out" / "metrics.jsonl").is_file(), "a first step")
    proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert proc.poll() is None  # still training
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143


def test_a_closed_output_pipe_stops_the_run_with_a_checkpoint_and_a_rerun_resumes(tmp_path):
    """`codex-train run job.yaml | head -3`: the reader goes away. The run failed on its next line (a
    BrokenPipeError traceback, exit 1, the steps since the last checkpoint lost). It stops as for a signal now:
    the step finished and checkpointed, exit 141 (SIGPIPE's), and the rerun resumes there."""
    out = tmp_path / "out"
    args = [*QUICK, "--set", "checkpoint.everySteps=1000", "--set", "training.maxSteps=400"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "codex_trainer.cli", "run", str(TINY), "--output-dir", str(out), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr").open("w"),
    )
    assert proc.stdout is not None
    for _ in range(3):  # head -3
        proc.stdout.readline()
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text(), "a first step")
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141, (tmp_path / "stderr").read_text()[-2000:]
    err = (tmp_path / "stderr").read_text()
    assert "the output's reader is gone (a closed pipe): finishing this step and checkpointing" in err
    assert "Traceback" not in err and "BrokenPipeError" not in err
    step = max(r["step"] for r in metrics(out) if "loss" in r)
    assert 0 < step < 400 and (out / "checkpoints" / f"step-{step}" / "MANIFEST.json").is_file()
    rerun = run_cli("run", str(TINY), "--output-dir", str(out), *QUICK, "--set", f"training.maxSteps={step + 2}")
    assert rerun.returncode == 0 and f'"event": "resumed", "step": {step}' in rerun.stdout, rerun.stderr[-2000:]


def test_ctrl_c_while_the_process_exits_after_its_checkpoint_prints_no_traceback(tmp_path):
    """Ctrl-C pressed again and again: the first stops the run at its step, a second stops at once, and any that
    land while the process winds down (libraries' exit hooks) end it quietly, with 130 all the same."""
    out = tmp_path / "out"
    proc = _slow_run(out)
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text(), "a first step")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: '"event": "stopped"' in (tmp_path / "stdout").read_text(), "the stop", timeout=120)
    while proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    stderr = (tmp_path / "stderr").read_text()
    # -2: killed by the SIGINT itself in the interpreter's last moments, which a shell shows as 130 too
    assert proc.returncode in (130, -signal.SIGINT), stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and "Exception ignored" not in stderr, stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_after_the_run_is_done_leaves_its_exit_code(monkeypatch, signum):
    """SIGTERM (a pod deleted, a scheduler's timeout) that lands after `done`, while the process winds down
    (MLflow's and the other libraries' exit hooks take seconds): the run finished and its result is written, so
    the process leaves with the run's exit code, 0, not 143, which says it stopped early and makes the operator
    start another attempt (found by a new-user check: `kill -TERM` after the done line gave 143)."""
    from codex_trainer import cli

    left: list[int] = []
    monkeypatch.setattr(cli, "_main", lambda argv: 0)
    monkeypatch.setattr(cli.os, "_exit", left.append)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # not ignored (nohup, some CI runners), where it is left so
        assert cli.main() == 0  # the program (argv None): from here it only exits
        handler = signal.getsignal(signum)
        assert callable(handler)
        handler(signum, None)
        assert left == [0]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@pytest.mark.skipif(not shutil.which("unshare") or os.geteuid() != 0, reason="needs unshare and root")
def test_a_stop_while_the_pods_program_starts_is_taken_as_its_first_process():
    """In a pod, codex-train is PID 1, to which the kernel delivers no signal it has no handler for: a SIGTERM
    (the job deleted, a preemption) that came while Python imported the trainer was lost, and the pod trained on
    for its whole grace period. Here it is PID 1 of a PID namespace of its own, signalled while it starts."""
    import psutil

    program = pathlib.Path(sys.executable).parent / "codex-train"  # the script itself: Python is PID 1, no shim
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", str(program), "validate", str(TINY)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = wait_for(lambda: psutil.Process(outer.pid).children(), "the namespace's first process", 10)[0]
        time.sleep(0.3)  # Python is importing the trainer (a validate takes seconds in all)
        first.send_signal(signal.SIGTERM)
        assert outer.wait(timeout=30) == 128 + signal.SIGTERM, outer.stderr.read()[-2000:]
    finally:
        outer.kill()
