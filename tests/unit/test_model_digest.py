"""A local base model's identity is its files' contents: what counts, and what a resumed start reads again."""

from __future__ import annotations

import os

from codex_trainer import modeldigest
from codex_trainer.modeldigest import model_digest


def make_model(folder, weights=b"w" * 1000):
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    return folder


def test_the_digest_follows_the_files_not_their_folder_nor_the_documentation(tmp_path):
    a = make_model(tmp_path / "a")
    digest = model_digest(str(a))
    assert len(digest) == 64 and model_digest("scratch") == "" and model_digest("hf://org/name@main") == ""
    assert model_digest(str(make_model(tmp_path / "b"))) == digest  # the same files elsewhere
    (a / "README.md").write_text("# notes")
    (a / "LICENSE").write_text("terms")
    (a / ".cache").mkdir()
    (a / ".cache" / "lock").write_text("")
    assert model_digest(str(a)) == digest
    (a / "sub" / "tokenizer.json").write_text('{"added": 1}')  # the tokenizer read from the model's folder counts
    assert model_digest(str(a)) != digest
    assert model_digest(str(make_model(tmp_path / "c", weights=b"v" * 1000))) != digest
    os.symlink(tmp_path / "b" / "model.safetensors", tmp_path / "link.safetensors")
    linked = tmp_path / "d"
    linked.mkdir()
    for name in ("config.json", "sub"):  # a Hub cache's snapshot: links to its blobs
        os.symlink(tmp_path / "b" / name, linked / name)
    os.symlink(tmp_path / "link.safetensors", linked / "model.safetensors")
    assert model_digest(str(linked)) == digest


def test_a_resumed_start_reads_only_the_files_changed_since(tmp_path, monkeypatch):
    model, cache = make_model(tmp_path / "m"), tmp_path / "cache"
    read = []
    real = modeldigest.sha256_file
    monkeypatch.setattr(modeldigest, "sha256_file", lambda p: read.append(p.name) or real(p))
    first = model_digest(str(model), cache)
    assert sorted(read) == ["config.json", "model.safetensors", "tokenizer.json"]
    read.clear()
    assert model_digest(str(model), cache) == first and read == []
    (model / "model.safetensors").write_bytes(b"x" * 1000)  # the same size, written again
    assert model_digest(str(model), cache) != first and read == ["model.safetensors"]
    (cache / modeldigest.CACHE_FILE).write_text("not json")  # damaged: read everything again, no error
    read.clear()
    model_digest(str(model), cache)
    assert len(read) == 3
