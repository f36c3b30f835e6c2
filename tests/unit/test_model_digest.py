"""A local base model's identity is what makes it: its weights, its config as JSON, its code; what a resumed
start reads again; and folders as users have them (links, a loop, a pipe, an unreadable file)."""

from __future__ import annotations

import os

import pytest

from codex_trainer import modeldigest
from codex_trainer.errors import SpecError
from codex_trainer.modeldigest import changed_files, model_digests


def make_model(folder, weights=b"w" * 1000):
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "sub" / "modeling_x.py").write_text("class X: ...\n")
    return folder


def test_the_files_that_make_the_model_count_wherever_they_are_and_nothing_else(tmp_path):
    a = make_model(tmp_path / "a")
    files = model_digests(str(a))
    assert sorted(files) == ["config.json", "model.safetensors", "sub/modeling_x.py"]
    assert model_digests("scratch") == {} and model_digests("hf://org/name@main") == {}
    assert model_digests(str(make_model(tmp_path / "b"))) == files  # the same files elsewhere
    for name, text in (("README.md", "# notes"), ("LICENSE", "terms"), ("notes.txt", "mine"), ("tokenizer.json", "{}")):
        (a / name).write_text(text)
    (a / "config.json").write_text('{\n    "hidden_size": 8,\n    "model_type": "llama"\n}\n')  # saved again
    assert model_digests(str(a)) == files
    (a / "config.json").write_text('{"model_type": "llama", "hidden_size": 16}')
    (a / "model-00002.safetensors").write_bytes(b"x")
    assert changed_files(files, model_digests(str(a))) == "changed: config.json; new: model-00002.safetensors"


def test_links_a_loop_a_pipe_and_a_dangling_link_are_walked_as_from_pretrained_sees_them(tmp_path):
    b = make_model(tmp_path / "b")
    files = model_digests(str(b))
    snapshot = tmp_path / "snapshot"  # a Hub cache's snapshot: links to its blobs
    snapshot.mkdir()
    for name in ("config.json", "model.safetensors", "sub"):
        os.symlink(b / name, snapshot / name)
    os.symlink(snapshot, snapshot / "loop")  # a link back up the tree
    os.mkfifo(snapshot / "pipe.bin")  # would block a read for good
    os.symlink(tmp_path / "nowhere", snapshot / "model-00002.safetensors")  # half downloaded
    got = model_digests(str(snapshot))
    assert got == files | {"model-00002.safetensors": modeldigest.MISSING}


def test_a_file_the_trainer_may_not_read_is_one_line_naming_it(tmp_path, monkeypatch):
    model = make_model(tmp_path / "m")

    def refused(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(modeldigest, "sha256_file", refused)
    with pytest.raises(SpecError) as e:
        model_digests(str(model))
    assert f"'{model / 'model.safetensors'}' in the model folder cannot be read by the trainer" in str(e.value)


def test_a_resumed_start_reads_only_the_files_changed_since(tmp_path, monkeypatch):
    model, cache = make_model(tmp_path / "m"), tmp_path / "cache"
    read = []
    real = modeldigest.sha256_file
    monkeypatch.setattr(modeldigest, "sha256_file", lambda p: read.append(p.name) or real(p))
    first = model_digests(str(model), cache)
    assert sorted(read) == ["model.safetensors", "modeling_x.py"]  # config.json is read as JSON
    read.clear()
    assert model_digests(str(model), cache) == first and read == []
    (model / "model.safetensors").write_bytes(b"x" * 1000)  # the same size, written again
    assert model_digests(str(model), cache) != first and read == ["model.safetensors"]
    (cache / modeldigest.CACHE_FILE).write_text("not json")  # damaged: read everything again, no error
    read.clear()
    model_digests(str(model), cache)
    assert len(read) == 2


def test_a_model_folder_gone_empty_on_resume_is_refused_naming_the_files_not_a_crash(tmp_path):
    """Mounted without its files (or gone), with the tokenizer named apart: a KeyError crash before, which a
    cluster retried until backoffLimit."""
    from pathlib import Path

    from codex_trainer.manifest import load_manifest
    from codex_trainer.runinfo import check_same_job, resume_identity
    from support import TINY

    model = make_model(tmp_path / "m")
    spec = load_manifest(TINY).spec
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"source": str(model), "config": None})})
    state = {"identity": resume_identity(spec, "data", model_digests(str(model)))}
    for f in model.rglob("*.*"):
        f.unlink()
    with pytest.raises(SpecError) as e:
        check_same_job(state, resume_identity(spec, "data", model_digests(str(model))), None, Path("ckpt"))
    assert "(gone: config.json, model.safetensors, sub/modeling_x.py)" in str(e.value)
