"""Plugins and TensorBoard in real runs of the tiny example: a .csv file trains through a plugin's reader,
callbacks get every hook, a callback that raises is disabled while training goes on, an unknown callback
is exit 2, and TensorBoard's curves continue across a SIGTERM and a resume with no step twice."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from codex_trainer.cli import main
from support import ROOT, TINY, run_cli, wait_for

pytestmark = pytest.mark.slow

QUICK = [
    "--set",
    "tracking.mlflow.enabled=false",
    "--set",
    "training.maxSteps=4",
    "--set",
    "checkpoint.everySteps=2",
    "--set",
    "eval.everySteps=2",
]


def calls(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_csv_file_trains_through_the_plugin_reader_and_a_callback_gets_every_hook(tmp_path, test_plugin):
    rows = [json.loads(line) for line in (ROOT / "configs" / "data" / "tiny-code.jsonl").read_text().splitlines()]
    data = tmp_path / "code.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([row["text"]] for row in rows)
    log = tmp_path / "calls.jsonl"
    out = tmp_path / "run"
    r = run_cli(
        "run", str(TINY), "--output-dir", str(out), *QUICK, "--set", f"data.train=[{data}]",
        "--set", "callbacks=[record]", env={"CODEX_TEST_PLUGIN_LOG": str(log)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"cached": false' in r.stdout and (out / "final" / "adapter_model.safetensors").is_file()
    got = calls(log)
    steps = [c for c in got if c["hook"] == "on_step"]
    assert [c["step"] for c in steps] == [1, 2, 3, 4]
    assert all({"loss", "learning_rate", "tokens_per_second", "total_steps"} <= c.keys() for c in steps)
    assert [(c["step"], c["eval_loss"] > 0, c["perplexity"] > 1) for c in got if c["hook"] == "on_eval"] == [
        (2, True, True),
        (4, True, True),
    ]
    assert [(c["step"], c["path"]) for c in got if c["hook"] == "on_checkpoint"] == [
        (2, str(out / "checkpoints" / "step-2")),
        (4, str(out / "checkpoints" / "step-4")),
    ]
    assert got[-1] == {"hook": "on_end", "status": "FINISHED", "step": 4}
    # run again: complete, nothing to do; the callback still hears of the step it ended at (it heard null)
    again = run_cli(
        "run", str(TINY), "--output-dir", str(out), *QUICK, "--set", f"data.train=[{data}]",
        "--set", "callbacks=[record]", env={"CODEX_TEST_PLUGIN_LOG": str(log)},
    )  # fmt: skip
    assert again.returncode == 0 and "already complete at step 4" in again.stdout, again.stderr[-3000:]
    assert calls(log)[-1] == {"hook": "on_end", "status": "FINISHED", "step": 4}


def test_a_callback_that_raises_is_logged_once_and_disabled_and_the_run_succeeds(tmp_path, test_plugin):
    log = tmp_path / "calls.jsonl"
    r = run_cli(
        "run", str(TINY), "--output-dir", str(tmp_path / "run"), *QUICK, "--set", "callbacks=[explode, record]",
        env={"CODEX_TEST_PLUGIN_LOG": str(log)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    mentions = [line for line in (r.stdout + r.stderr).splitlines() if "explode" in line]
    assert len(mentions) == 1 and "boom at step 1" in mentions[0] and "disabled" in mentions[0], mentions
    got = calls(log)
    assert [c["step"] for c in got if c["hook"] == "explode"] == [1]  # never called again
    assert [c["step"] for c in got if c["hook"] == "on_step"] == [1, 2, 3, 4]  # the other one goes on
    assert got[-1]["hook"] == "on_end"


def test_an_unknown_callback_exits_2_listing_the_installed_ones(tmp_path, capsys, test_plugin):
    for command in ("run", "validate"):
        args = [command, str(TINY), *QUICK, "--set", "callbacks=[record, no-such-thing]"]
        if command == "run":
            args += ["--output-dir", str(tmp_path / "run")]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("codex-train: invalid spec.callbacks:"), err
        assert "'no-such-thing'" in err and "installed: explode, record" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file, as written (no TensorBoard purging applied)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                found.setdefault(v.tag, []).append(
                    (event.step, v.tensor.float_val[0] if v.HasField("tensor") else v.simple_value)
                )
    return found


def test_tensorboard_curves_continue_across_sigterm_and_resume_with_no_step_twice(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = [
        "run", str(TINY), "--output-dir", str(out), "--set", "tracking.mlflow.enabled=false",
        "--set", "tracking.tensorboard=true", "--set", "training.maxSteps=20",
        "--set", "checkpoint.everySteps=5", "--set", "eval.everySteps=5",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "codex_trainer.cli", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "metrics.jsonl"

    def reached(step: int) -> bool:
        return metrics.is_file() and any(f'"step": {step},' in line for line in metrics.read_text().splitlines())

    wait_for(lambda: proc.poll() is None and reached(7), "step 7", 180, interval=0.05)
    proc.send_signal(15)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    first = scalars(out / "tensorboard")
    stopped = max(step for step, _ in first["train/loss"])
    assert 7 <= stopped < 20 and (out / "checkpoints" / f"step-{stopped}").is_dir()

    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    got = scalars(out / "tensorboard")
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per start
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    for tag, key in (("train/loss", "loss"), ("train/learning_rate", "learning_rate"),
                     ("train/tokens_per_second", "tokens_per_second")):  # fmt: skip
        assert [s for s, _ in got[tag]] == list(range(1, 21)), tag  # every step once, in order
        expected = {row["step"]: row[key] for row in rows if key in row}
        assert all(abs(v - expected[s]) <= 1e-5 * max(1.0, abs(expected[s])) for s, v in got[tag]), tag
    evals = {row["step"]: row for row in rows if "eval_loss" in row}
    assert [s for s, _ in got["eval/loss"]] == [5, 10, 15, 20] == sorted(evals)
    assert all(abs(v - evals[s]["perplexity"]) <= 1e-4 * evals[s]["perplexity"] for s, v in got["eval/perplexity"])

    # and as TensorBoard itself reads the directory
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 21))
    assert [e.step for e in acc.Scalars("eval/loss")] == [5, 10, 15, 20]
