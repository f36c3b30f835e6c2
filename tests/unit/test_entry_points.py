"""Plugins through entry points (codex_trainer.plugins): readers by extension, callbacks by name; and the
TensorBoard event files' trimming on resume (codex_trainer.metrics)."""

from __future__ import annotations

import json

import pytest

from codex_trainer import plugins
from codex_trainer.data import read_texts
from codex_trainer.errors import SpecError
from codex_trainer.plugins import Callbacks, check_callbacks, load_callbacks, reader_extensions


def test_the_built_in_readers_work_without_distribution_metadata(tmp_path, monkeypatch):
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])  # a source tree, not installed
    assert reader_extensions() == [".jsonl", ".json", ".txt", ".parquet"]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    assert read_texts([str(path)], "text", "spec.data.train") == ["hello"]


def test_a_csv_file_is_read_by_the_plugin_reader(tmp_path, test_plugin):
    path = tmp_path / "d.csv"
    path.write_text('text,id\nfirst,1\n"second, with a comma",2\n')
    assert ".csv" in reader_extensions()
    assert read_texts([str(path)], "text", "spec.data.train") == ["first", "second, with a comma"]
    with pytest.raises(SpecError) as e:  # the plugin's ValueError is the user's data problem: exit 2
        read_texts([str(path)], "body", "spec.data.train")
    ((field, msg),) = e.value.problems
    assert field == "spec.data.train" and "codex_test_plugin:read_csv" in msg and "no column 'body'" in msg


def test_a_plugin_reader_that_raises_anything_on_a_file_is_one_line_naming_it(tmp_path, monkeypatch):
    """The reader trainer.md shows (`row[text_field]` on a CSV without that column): a KeyError traceback and
    exit 1, which a cluster retries as a crash, before (the new-user CLI check)."""
    from importlib.metadata import EntryPoint

    import codex_trainer.data as data

    ep = EntryPoint("csv", "my_reader:read_csv", plugins.READERS)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep] if group == plugins.READERS else [])
    monkeypatch.setattr(EntryPoint, "load", lambda self: lambda path, field: [row[field] for row in [{"body": "x"}]])
    path = tmp_path / "d.csv"
    path.write_text("body\nx\n")
    with pytest.raises(SpecError) as e:
        data.read_texts([str(path)], "text", "spec.data.train")
    assert e.value.problems == [
        ("spec.data.train", f"'{path}' could not be read by my_reader:read_csv: KeyError: 'text'")
    ]


def test_a_callback_whose_module_cannot_be_imported_is_refused_by_the_check_validate_makes(monkeypatch):
    """validate passed it, then run and launch refused it (the new-user CLI check)."""
    from importlib.metadata import EntryPoint

    ep = EntryPoint("mytracker", "no_such_module_here:Tracker", plugins.CALLBACKS)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep] if group == plugins.CALLBACKS else [])
    with pytest.raises(SpecError) as e:
        check_callbacks(["mytracker"])
    ((field, msg),) = e.value.problems
    assert field == "spec.callbacks"
    assert msg.startswith("callback 'mytracker' (no_such_module_here:Tracker) could not be loaded: ModuleNotFoundError")


def test_an_extension_without_a_reader_lists_the_installed_ones(tmp_path, test_plugin):
    path = tmp_path / "d.arrow"
    path.write_text("x")
    with pytest.raises(SpecError) as e:
        read_texts([str(path)], "text", "spec.data.validation")
    ((field, msg),) = e.value.problems
    assert field == "spec.data.validation" and "unsupported extension" in msg
    assert ".jsonl, .json, .txt, .parquet" in msg and ".csv" in msg and "codex_trainer.readers" in msg


def test_an_unknown_callback_is_refused_listing_the_installed_ones(test_plugin):
    check_callbacks(["record", "explode"])
    with pytest.raises(SpecError) as e:
        check_callbacks(["record", "nope"])
    ((field, msg),) = e.value.problems
    assert field == "spec.callbacks" and "'nope'" in msg and "installed: explode, record" in msg


def test_a_callback_that_raises_is_reported_once_and_disabled(tmp_path, monkeypatch, test_plugin):
    monkeypatch.setenv("CODEX_TEST_PLUGIN_LOG", str(tmp_path / "log"))
    warnings: list[str] = []
    (record, explode) = load_callbacks(["record", "explode", "record"], warnings.append)  # each name once
    for step in (1, 2, 3):
        for cb in (record, explode):
            cb.call("on_step", {"step": step})
    assert len(warnings) == 1 and warnings[0].startswith("callback 'explode' raised RuntimeError: boom at step 1")
    assert "disabled" in warnings[0] and not explode.enabled and record.enabled
    calls = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert [c["hook"] for c in calls] == ["on_step", "explode", "on_step", "on_step"]


def test_a_callback_gets_a_copy_and_missing_hooks_are_skipped():
    seen = []

    class OnlyEval:
        def on_eval(self, row):
            row["step"] = -1
            seen.append(row)

    cb, payload = Callbacks("only-eval", OnlyEval(), warn=pytest.fail), {"step": 5, "eval_loss": 1.0}
    cb.call("on_step", {"step": 5})
    cb.call("on_eval", payload)
    assert seen == [{"step": -1, "eval_loss": 1.0}] and payload["step"] == 5


def test_resume_drops_tensorboard_events_after_the_step_and_a_torn_record(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from torch.utils.tensorboard import SummaryWriter

    from codex_trainer.metrics import drop_events_after

    writer = SummaryWriter(str(tmp_path))
    for step in range(1, 11):
        writer.add_scalar("train/loss", 1.0 / step, step)
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    with path.open("ab") as f:
        f.write(b"\x20\0\0\0\0\0\0\0torn")  # a record cut short by a kill
    drop_events_after(path, 6)
    steps = [e.step for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]
    assert steps == [1, 2, 3, 4, 5, 6]
    size = path.stat().st_size
    drop_events_after(path, 6)  # nothing more to drop: left as it is
    assert path.stat().st_size == size


@pytest.mark.parametrize(("command", "said"), [("run", "before training began; nothing was written"), ("validate", "")])
def test_a_ctrl_c_before_training_began_is_not_called_a_second_one(command, said, monkeypatch, capsys):
    """Ctrl-C while the job is read or torch imports (the first seconds of a run) comes before the run's own
    handler: one Ctrl-C, nothing written, exit 130, no traceback."""
    from codex_trainer import cli

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_manifest", interrupted)
    assert cli.main([command, "job.yaml"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == f"codex-train: stopped by Ctrl-C {said}".strip(), err
    assert "second" not in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["run", "job.yaml", "--metrics-port", "abc"], "argument --metrics-port: 'abc' is not a port number (1 to"),
        (["run", "job.yaml", "--metrics-port", "-5"], "argument --metrics-port: '-5' is not a port number (1 to"),
        (["launch", "job.yaml", "--output-dir", "x", "--metrics-port", "70000"], "argument --metrics-port: '70000'"),
        (["run", "job.yaml", "--output-dir", ""], "argument --output-dir: is empty; name a directory, or leave"),
        (["eval", "runs/x", "--max-new-tokens", "0"], "argument --max-new-tokens: must be positive, got 0"),
        (["eval", "runs/x", "--max-seq-length", "1"], "argument --max-seq-length: must be at least 2"),
    ],
)
def test_a_wrong_option_is_one_line_naming_it(argv, said, capsys):
    from codex_trainer import cli

    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"codex-train: {said}") and "--help lists the options" in err, err


def test_a_name_two_packages_register_is_refused_and_one_replacing_a_built_in_wins(monkeypatch, tmp_path):
    """Which of two plugins registering one name would be used was their installation order, without a word
    (found by a new-user check): now neither is, naming both. One plugin replacing a built-in reader is used."""
    from importlib.metadata import EntryPoint

    eps = {
        plugins.READERS: [
            EntryPoint("jsonl", "fast_readers:read_jsonl", plugins.READERS),  # found before this project's own
            EntryPoint("jsonl", "codex_trainer.data:read_jsonl", plugins.READERS),
            EntryPoint("csv", "pkg_a:read_csv", plugins.READERS),
            EntryPoint("csv", "pkg_b:read_csv", plugins.READERS),
        ],
        plugins.CALLBACKS: [
            EntryPoint("my-tracker", "pkg_a:Tracker", plugins.CALLBACKS),
            EntryPoint("my-tracker", "pkg_b:Tracker", plugins.CALLBACKS),
            EntryPoint("other", "pkg_a:Other", plugins.CALLBACKS),
        ],
    }
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps[group])
    assert plugins._installed(plugins.READERS, {"jsonl": "codex_trainer.data:read_jsonl"})["jsonl"].value == (
        "fast_readers:read_jsonl"
    )
    with pytest.raises(SpecError) as e:
        plugins.reader_for(".csv", "spec.data.train")
    ((field, msg),) = e.value.problems
    assert field == "spec.data.train" and "the .csv reader is registered by 2 installed packages" in msg
    assert "pkg_a:read_csv, pkg_b:read_csv" in msg and "uninstall all but one" in msg
    with pytest.raises(SpecError) as e:
        check_callbacks(["other", "my-tracker"])
    assert "callback 'my-tracker' is registered by 2 installed packages" in str(e.value)
    with pytest.raises(SpecError, match=r"callback 'other' \(pkg_a:Other\) could not be loaded"):
        check_callbacks(["other"])  # registered once, so imported: pkg_a is not installed here
