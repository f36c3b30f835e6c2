"""Replacing a directory (a scratch base rebuilt, a final/ written again): a reader finds the old one
or the new one whole, whatever moment the writer is stopped at."""

from __future__ import annotations

import shutil

import pytest

from codex_trainer import files
from codex_trainer.files import atomic_dir


def _write(target, text):
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text(text)
        (tmp / "config.json").write_text(text)


def _contents(d):
    return {p.name: p.read_text() for p in d.iterdir()}


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "rename-aside"])
def test_a_directory_is_replaced_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # a filesystem without RENAME_EXCHANGE
    target = tmp_path / "base-model"
    _write(target, "old")
    _write(target, "new")
    assert _contents(target) == {"weights": "new", "config.json": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["base-model"]  # nothing left beside it


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "rename-aside"])
def test_stopped_while_the_old_one_is_removed_the_new_one_is_in_place(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = tmp_path / "base-model"
    _write(target, "old")
    real_rmtree = shutil.rmtree

    def stopped_halfway(path, *args, **kwargs):
        if path.exists() and "old" in {p.read_text() for p in path.iterdir()}:  # the old one: a file gone, killed
            next(path.iterdir()).unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(files.shutil, "rmtree", stopped_halfway)
    with pytest.raises(KeyboardInterrupt):
        _write(target, "new")
    assert _contents(target) == {"weights": "new", "config.json": "new"}
    monkeypatch.setattr(files.shutil, "rmtree", real_rmtree)
    _write(target, "newer")  # the next write clears what the stopped one left beside it
    assert _contents(target) == {"weights": "newer", "config.json": "newer"}
    assert [p.name for p in tmp_path.iterdir()] == ["base-model"]


def test_a_failed_write_leaves_the_old_directory(tmp_path):
    target = tmp_path / "final"
    _write(target, "old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("disk full")
    assert _contents(target) == {"weights": "old", "config.json": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_files_written_private_are_readable_as_any_other_file_once_in_place(tmp_path):
    """safetensors writes its files 0600: a run directory on a shared volume would hold weights that a reader
    of another uid cannot load, beside a config it can."""
    import os

    import torch
    from safetensors.torch import save_file

    with atomic_dir(tmp_path / "final") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text("{}")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "final").iterdir()}
    assert modes["adapter_model.safetensors"] == modes["adapter_config.json"] == 0o666 & ~_umask(os)


def _umask(os) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
