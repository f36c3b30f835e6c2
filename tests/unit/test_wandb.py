"""Weights & Biases (spec.tracking.wandb): the spec, the credentials check, and an offline run written
through the metrics Sink and read back from W&B's own transaction log."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from codex_trainer.cli import main
from codex_trainer.console import Console
from codex_trainer.errors import SpecError
from codex_trainer.manifest import parse_manifest
from codex_trainer.metrics import Sink
from codex_trainer.spec import WandbSpec
from codex_trainer.wandb_sink import RUN_ID_FILE, check_credentials, read_history, read_records, start_wandb
from support import TINY

KEY = "k" * 40  # the form of a W&B API key


def manifest(**tracking) -> dict:
    return {
        "apiVersion": "codex.ml/v1alpha1",
        "kind": "CodexTrainingJob",
        "metadata": {"name": "t"},
        "spec": {
            "model": {"source": "scratch", "config": {"model_type": "llama"}},
            "data": {"train": ["d.jsonl"]},
            "tracking": tracking,
        },
    }


def test_wandb_is_off_by_default_and_offline_when_enabled():
    assert parse_manifest(manifest()).spec.tracking.wandb.enabled is False
    cfg = parse_manifest(manifest(wandb={"enabled": True, "runName": "first"})).spec.tracking.wandb
    assert (cfg.mode, cfg.project, cfg.entity, cfg.run_name) == ("offline", "codex", None, "first")


@pytest.mark.parametrize(
    ("wandb", "field"),
    [({"mode": "cloud"}, "spec.tracking.wandb.mode"), ({"apiKey": KEY}, "spec.tracking.wandb.apiKey")],
)
def test_a_bad_wandb_field_is_named_and_a_key_has_no_place_in_the_spec(wandb, field):
    with pytest.raises(SpecError) as e:
        parse_manifest(manifest(wandb=wandb))
    assert field in dict(e.value.problems)


def test_online_without_a_key_is_a_spec_error_that_says_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(SpecError) as e:
        check_credentials(WandbSpec(enabled=True, mode="online"))
    assert "spec.tracking.wandb.mode" in str(e.value) and "WANDB_API_KEY" in str(e.value)
    assert "secretKeyRef" in str(e.value) and "offline" in str(e.value)
    check_credentials(WandbSpec(enabled=True))  # offline needs nothing
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password " + KEY + "\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # what `wandb login` leaves
    check_credentials(WandbSpec(enabled=True, mode="online"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    check_credentials(WandbSpec(enabled=True, mode="online"))


def test_codex_train_run_online_without_a_key_exits_2_before_loading_anything(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    out = tmp_path / "run"
    args = ["run", str(TINY), "--output-dir", str(out), "--set", "tracking.wandb.enabled=true"]
    assert main([*args, "--set", "tracking.wandb.mode=online"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codex-train: invalid spec.tracking.wandb.mode:") and "WANDB_API_KEY" in err, err
    assert not (out / "checkpoints").exists() and not (out / "wandb").exists()


def test_validate_says_it_cannot_check_an_online_key_that_only_the_pod_may_have(monkeypatch, tmp_path, capsys):
    """The job is valid (a pod gets the key from a Secret), but `run` here would refuse it: validate says so
    instead of passing in silence (found by a new-user check)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    online = ["--set", "tracking.wandb.enabled=true", "--set", "tracking.wandb.mode=online"]
    assert main(["validate", str(TINY), *online]) == 0
    err = capsys.readouterr().err
    assert "codex-train: not checked here: spec.tracking.wandb.mode: mode online needs a W&B API key" in err, err
    assert "`run` here refuses it" in err
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert main(["validate", str(TINY), *online]) == 0
    assert "not checked here" not in capsys.readouterr().err


def test_a_key_w_and_b_refuses_is_a_spec_error_that_does_not_show_it(tmp_path, monkeypatch):
    for name in ("WANDB_SILENT", "WANDB_ERROR_REPORTING", "WANDB_MODE"):
        monkeypatch.setenv(name, "online")
    monkeypatch.setenv("WANDB_API_KEY", "s3cret")  # not even of a key's form: refused before any request
    with pytest.raises(SpecError) as e:
        start_wandb(WandbSpec(enabled=True, mode="online"), "job", tmp_path, {}, resumed=False)
    assert str(e.value).startswith("spec.tracking.wandb: W&B refused the credentials") and "s3cret" not in str(e.value)
    assert not service_processes()


def history(out: Path) -> list[tuple[int, dict]]:
    """Every history row of every start of the run, in the order they were written."""
    paths = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    return [row for p in paths for row in read_history(p)]


def exit_codes(out: Path) -> list[int]:
    """The exit code each start finished its run with."""
    from wandb.proto import wandb_internal_pb2 as pb

    found = []
    for path in sorted((out / "wandb").glob("offline-run-*/run-*.wandb")):
        for raw in read_records(path):
            record = pb.Record.FromString(raw)
            if record.WhichOneof("record_type") == "exit":
                found.append(record.exit.exit_code)
    return found


def sink_run(out: Path, steps: range, resume_step: int, status: str, lr: float = 0.1) -> None:
    """A start of a job, as train.py opens its Sink: resuming from a checkpoint at `resume_step`, if not 0."""
    sink = Sink(True, Console(enabled=False), None)
    cfg = WandbSpec(enabled=True)
    wandb = lambda: start_wandb(cfg, "job", out, {}, resumed=resume_step > 0)  # noqa: E731
    sink.open(out / "metrics.jsonl", resume_step, lambda: None, False, wandb=wandb)
    for s in steps:
        sink.step({"step": s, "loss": 1 / s, "learning_rate": lr, "tokens_per_second": 100.0}, steps.stop)
        if s % 2 == 0:
            sink.evaluated(s, 2 / s, 3.0)
    sink.close(status)


def service_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "wandb" in p.name()]


def test_an_offline_run_resumes_the_same_run_without_a_step_twice_and_leaves_no_process(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # the spec's mode wins over the environment
    for name in ("WANDB_SILENT", "WANDB_ERROR_REPORTING"):  # set by the sink (WANDB_MODE too); restored afterwards
        monkeypatch.setenv(name, "")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "run"
    out.mkdir()
    sink_run(out, range(1, 6), 0, "KILLED")  # a run stopped at step 5 whose checkpoint is at step 3
    assert not service_processes()
    run_id = (out / RUN_ID_FILE).read_text().strip()
    sink_run(out, range(4, 9), 3, "FINISHED")  # its resume redoes steps 4 and 5
    assert not service_processes()

    dirs = sorted((out / "wandb").glob("offline-run-*"))
    # one run, two starts (a start in the same second as the one before gets "-1" after the id)
    assert [[f.stem for f in d.glob("run-*.wandb")] for d in dirs] == [[f"run-{run_id}"]] * 2
    rows = history(out)
    assert [s for s, _ in rows] == list(range(1, 9))  # each step once, in order
    assert all(r["train/loss"] == pytest.approx(1 / s) and r["_step"] == s for s, r in rows)
    assert [(s, r["eval/loss"]) for s, r in rows if "eval/loss" in r] == [(2, 1.0), (4, 0.5), (6, 2 / 6), (8, 0.25)]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 9))  # metrics.jsonl tells the same story
    assert exit_codes(out) == [143, 0]  # the stopped start, then the finished one


def test_steps_w_and_b_lost_to_a_kill_come_back_from_metrics_jsonl_on_resume(tmp_path, monkeypatch):
    for name in ("WANDB_SILENT", "WANDB_ERROR_REPORTING", "WANDB_MODE"):
        monkeypatch.setenv(name, "offline")
    out = tmp_path / "run"
    out.mkdir()
    sink_run(out, range(1, 6), 0, "KILLED")
    (log,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    log.write_bytes(log.read_bytes()[:7])  # a kill before W&B's service wrote its log: the header alone
    sink_run(out, range(4, 9), 3, "FINISHED")
    rows = history(out)
    assert [s for s, _ in rows] == list(range(1, 9))
    assert all(r["train/loss"] == pytest.approx(1 / s) for s, r in rows)
    assert [(s, r["eval/loss"]) for s, r in rows if "eval/loss" in r] == [(2, 1.0), (4, 0.5), (6, 2 / 6), (8, 0.25)]
    assert "resources/time" not in rows[0][1] and "train/time" not in rows[0][1]


def test_a_start_again_at_step_0_is_a_new_wandb_run_with_the_new_figures(tmp_path, monkeypatch):
    """Killed before its first checkpoint, a job starts afresh: W&B gets a new run holding that start's figures
    (as metrics.jsonl does), not the killed start's run with its numbers kept and the new ones refused."""
    for name in ("WANDB_SILENT", "WANDB_ERROR_REPORTING", "WANDB_MODE"):
        monkeypatch.setenv(name, "offline")
    out = tmp_path / "run"
    out.mkdir()
    sink_run(out, range(1, 6), 0, "KILLED", lr=0.1)  # no checkpoint yet
    killed = (out / RUN_ID_FILE).read_text().strip()
    sink_run(out, range(1, 4), 0, "FINISHED", lr=0.001)  # started again with another learning rate
    fresh = (out / RUN_ID_FILE).read_text().strip()
    assert fresh != killed  # the output directory's run is the new one, which a later resume continues
    (log,) = (out / "wandb").glob(f"offline-run-*/run-{fresh}.wandb")
    rows = list(read_history(log))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in rows] == [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert [r["train/learning_rate"] for _, r in rows] == [m["learning_rate"] for m in metrics if "loss" in m]
    assert {r["train/learning_rate"] for _, r in rows} == {0.001}
    assert [(s, r["eval/loss"]) for s, r in rows if "eval/loss" in r] == [(2, 1.0)]
    (old,) = (out / "wandb").glob(f"offline-run-*/run-{killed}.wandb")
    assert [s for s, _ in read_history(old)] == [1, 2, 3, 4, 5]  # the killed start's run, left as it was
