"""A checkpoint is used only when it is complete; anything else is skipped, never loaded."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from codex_trainer import checkpoint
from support import wait_for


def save(root, step, fill=1.0, size=16):
    return checkpoint.save(
        root,
        step,
        {"w": torch.full((size,), fill)},
        {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        {"last_epoch": step},
        {"tokens_seen": step * 10},
    )


def test_round_trip(tmp_path):
    save(tmp_path, 5, fill=2.0)
    ck = checkpoint.load_latest(tmp_path)
    assert ck.step == 5 and ck.state["tokens_seen"] == 50 and ck.state["step"] == 5
    assert torch.equal(ck.weights["w"], torch.full((16,), 2.0))
    assert ck.scheduler == {"last_epoch": 5}


def test_newest_complete_wins_and_leftovers_are_skipped(tmp_path):
    save(tmp_path, 10)
    save(tmp_path, 20, fill=3.0)
    # what a kill leaves: a temp dir mid-write, and a step dir whose manifest never got written
    (tmp_path / ".step-30.tmp999").mkdir()
    (tmp_path / ".step-30.tmp999" / "trainable.safetensors").write_bytes(b"\0" * 10)
    (tmp_path / "step-40").mkdir()
    (tmp_path / "step-40" / "trainable.safetensors").write_bytes(b"\0" * 10)
    seen = []
    ck = checkpoint.load_latest(tmp_path, log=seen.append)
    assert ck.step == 20 and ck.weights["w"][0] == 3.0
    assert any("step-40" in m for m in seen) and any(".step-30" in m for m in seen)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    save(tmp_path, 10, fill=1.0)
    newest = save(tmp_path, 20, fill=2.0)
    weights = newest / checkpoint.WEIGHTS
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[:-8])
    elif damage == "flip":
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        weights.unlink()
    seen = []
    ck = checkpoint.load_latest(tmp_path, log=seen.append)
    assert ck.step == 10 and ck.weights["w"][0] == 1.0
    assert seen and "step-20" in seen[-1]


def test_each_skipped_checkpoint_says_why(tmp_path):
    """A stopped write is incomplete; a checkpoint whose files changed since is damaged, naming the file; one
    copied under another step's name (it would resume at the name's step, skipping or redoing steps) is refused."""
    import shutil

    save(tmp_path, 10)
    truncated = save(tmp_path, 20)
    (truncated / checkpoint.OPTIMIZER).write_bytes((truncated / checkpoint.OPTIMIZER).read_bytes()[:-4])
    shutil.copytree(tmp_path / "step-10", tmp_path / "step-45")
    (tmp_path / "step-50").mkdir()
    (tmp_path / "step-60").write_text("not a checkpoint")
    seen: list[str] = []
    ck = checkpoint.load_latest(tmp_path, log=seen.append)
    assert ck.step == 10
    assert seen == [
        f"ignoring damaged checkpoint {truncated}: {checkpoint.OPTIMIZER} is missing or truncated",
        f"ignoring damaged checkpoint {tmp_path / 'step-45'}: it holds step 10 (MANIFEST.json), not the step 45 its "
        "name says: copied or renamed; rename it back to resume from it",
        f"ignoring incomplete checkpoint {tmp_path / 'step-50'} (no MANIFEST.json: its write was stopped)",
        f"ignoring {tmp_path / 'step-60'}: not a checkpoint directory",
    ]
    assert [step for step, _ in checkpoint.complete(tmp_path)] == [10]


def test_prune_keeps_the_newest_and_removes_temp_dirs(tmp_path):
    for s in (1, 2, 3, 4):
        save(tmp_path, s)
    (tmp_path / ".step-5.tmp1").mkdir()
    checkpoint.prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3", "step-4"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_newer_checkpoint_never_pushes_a_good_one_out(tmp_path, damage):
    """A checkpoint that fails its checksum is not one of the `keep_last`: pruning keeps the newest good
    ones (a damaged step-99 beside good step-10..30 used to leave only step-99, and the next start began
    at step 0)."""
    for s in (10, 20, 30):
        save(tmp_path, s, fill=float(s))
    bad = save(tmp_path, 99, fill=9.0) / checkpoint.WEIGHTS
    data = bad.read_bytes()
    bad.write_bytes(data[:-8] if damage == "truncate" else data[:-1] + bytes([data[-1] ^ 0xFF]))
    checkpoint.prune(tmp_path, keep_last=1)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert "step-30" in kept and "step-10" not in kept and "step-20" not in kept
    ck = checkpoint.load_latest(tmp_path, log=lambda _: None)
    assert ck.step == 30 and ck.weights["w"][0] == 30.0
    checkpoint.prune(tmp_path, keep_last=2)  # pruning again keeps what it kept
    assert sorted(p.name for p in tmp_path.iterdir()) == kept


def test_a_checkpoint_damaged_after_it_was_checked_or_unreadable_is_not_counted_either(tmp_path, monkeypatch):
    for s in (10, 20, 30):
        save(tmp_path, s, fill=float(s))
    checkpoint.prune(tmp_path, keep_last=2)  # step-20 and step-30 checked good; step-10 goes
    weights = tmp_path / "step-30" / checkpoint.WEIGHTS
    data = weights.read_bytes()
    time.sleep(0.01)  # a later write: its file's mtime moves on
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # rots after the check, same size
    save(tmp_path, 40, fill=40.0)
    checkpoint.prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-20", "step-30", "step-40"]

    real = checkpoint.sha256_file

    def bad_sector(path):  # reading step-40's weights fails with EIO, as a bad sector does
        if path.parent.name == "step-40" and path.name == checkpoint.WEIGHTS:
            raise OSError(5, "Input/output error")
        return real(path)

    monkeypatch.setattr(checkpoint, "sha256_file", bad_sector)
    save(tmp_path, 50, fill=50.0)
    (tmp_path / "step-40" / checkpoint.WEIGHTS).touch()  # changed since its check: it is read again
    checkpoint.prune(tmp_path, keep_last=2)  # no exception: step-40 counts as damaged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-20", "step-30", "step-40", "step-50"]
    assert checkpoint.load_latest(tmp_path, log=lambda _: None).step == 50


def test_nothing_to_resume_from(tmp_path):
    assert checkpoint.load_latest(tmp_path / "absent") is None
    assert checkpoint.load_latest(tmp_path) is None


WRITER = """
import sys, torch
from pathlib import Path
from codex_trainer import checkpoint
root, step = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
while True:
    step += 1
    checkpoint.save(root, step, {"w": torch.full((2_000_000,), float(step))}, {}, {}, {})
"""


@pytest.mark.spawns
def test_kill_9_during_writes_never_yields_a_loadable_partial_checkpoint(tmp_path):
    """A separate process writes large checkpoints in a loop; we SIGKILL it at random moments.
    Whatever it leaves, every checkpoint a reader accepts must load and hold what was written."""
    rng = random.Random(0)
    step, leftovers = 0, set()
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(step)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        # however slow the machine, this writer completes a checkpoint before it is killed, during a later one
        wait_for(lambda p=proc, after=step: _newest(tmp_path, p) > after, "a complete checkpoint", interval=0.01)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        leftovers |= {p.name for p in tmp_path.iterdir() if p.name.startswith(".step-")}
        for s, path in checkpoint.complete(tmp_path):
            assert checkpoint.verify(path) is None
            assert json.loads((path / checkpoint.MANIFEST).read_text())["step"] == s
        ck = checkpoint.load_latest(tmp_path, log=lambda _m: None)
        assert ck is not None
        assert torch.equal(ck.weights["w"], torch.full((2_000_000,), float(ck.step)))
        step = ck.step + 100
    assert leftovers, "no kill landed mid-write: the test proved nothing"
    checkpoint.prune(tmp_path, keep_last=1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".step-")]


def _newest(root, proc) -> int:
    """The step of the newest complete checkpoint (-1 for none); fails if the writer died."""
    assert proc.poll() is None, "the writer exited"
    return max((s for s, _ in checkpoint.complete(root)), default=-1)


@pytest.mark.parametrize("fails_at", ["weights", "optimizer"])
def test_a_full_disk_leaves_no_temporary_directory_and_the_last_good_checkpoint_stays(tmp_path, monkeypatch, fails_at):
    import errno

    from codex_trainer.errors import DiskFullError

    save(tmp_path, 5, fill=2.0)

    def no_space(*args, **kwargs):
        path = args[1]
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    if fails_at == "weights":
        monkeypatch.setattr(checkpoint, "save_file", no_space)
    else:
        monkeypatch.setattr(checkpoint, "torch", _Torch(no_space))
    with pytest.raises(DiskFullError) as e:
        save(tmp_path, 10, size=1 << 18)
    message = str(e.value)
    assert message.startswith(f"disk full: writing checkpoint step-10 in {tmp_path} needed about 1.0 MiB (")
    assert "MiB free" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-5"]  # no .step-10.tmp*
    assert checkpoint.load_latest(tmp_path).step == 5


def test_torchs_own_write_failure_on_a_nearly_full_disk_is_the_disk_full_line(tmp_path, monkeypatch):
    """torch.save's stream drops the errno: the late optimizer file failed with basic_ios::clear, and once the
    partial checkpoint was removed the disk had about what the tensors need (the new-user CLI check saw 30 lines
    of traceback and 'crashed: RuntimeError')."""
    from codex_trainer.errors import DiskFullError

    def write_failed(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:659] . unexpected pos 64 vs 0; basic_ios::clear")

    monkeypatch.setattr(checkpoint, "torch", _Torch(write_failed))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=(1 << 20) + 4096))
    with pytest.raises(DiskFullError, match="disk full: writing checkpoint step-10 .* needed about 1.0 MiB"):
        save(tmp_path, 10, size=1 << 18)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=100 << 30))
    with pytest.raises(RuntimeError, match="basic_ios"):  # with room to spare, not a full disk: said as it is
        save(tmp_path, 10, size=1 << 18)


class _Torch:
    """Stands in for the torch module inside checkpoint.py: torch.save fails, everything else is torch's."""

    def __init__(self, failing_save):
        self.save = failing_save

    def __getattr__(self, name):
        return getattr(torch, name)


def test_a_small_disk_full_message_tells_needed_from_free(tmp_path, monkeypatch):
    """0.2 MiB needed with 0.24 MiB free read '0.2 MiB (0.2 MiB free)': sizes under 1 MiB are in KiB."""
    import shutil
    from collections import namedtuple

    from codex_trainer.errors import disk_full

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(1 << 20, 0, 250_000))
    assert "needed about 205 KiB (244 KiB free)" in str(disk_full("a checkpoint", tmp_path, 210_000))
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(1 << 20, 0, 0))
    assert "needed about 2 bytes (0 bytes free)" in str(disk_full("a probe", tmp_path, 2))
