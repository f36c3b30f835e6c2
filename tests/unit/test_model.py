"""The tokenizer/model vocabulary check that `run`, `validate` and `load_base_model` share, and where a trained
adapter names its base model and where the one loader (load_trained, `codex-train eval`) finds it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from codex_trainer.errors import SpecError
from codex_trainer.model import adapter_base, adapter_base_reference, check_vocabulary


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=10, n_layer=1, n_embd=8, n_head=2, n_positions=16))


def test_a_tokenizer_with_more_ids_than_the_embedding_has_rows_is_refused(model):
    with pytest.raises(SpecError, match="the tokenizer has 12 tokens but the model's embedding has 10; use"):
        check_vocabulary(model, ["t"] * 12)


def test_a_tokenizer_that_fits_passes(model):
    check_vocabulary(model, ["t"] * 10)


# ---------------------------------------------------------------- where an adapter's base model is


def test_the_adapter_names_a_hub_base_by_id_and_revision_and_a_local_one_by_absolute_path(tmp_path, monkeypatch):
    assert adapter_base_reference("hf://Qwen/Qwen2.5-0.5B@main", tmp_path / "base-model") == (
        "Qwen/Qwen2.5-0.5B",
        "main",
    )
    assert adapter_base_reference("hf://org/name", tmp_path / "base-model") == ("org/name", None)
    monkeypatch.chdir(tmp_path)
    assert adapter_base_reference("scratch", Path("runs/x/base-model")) == (str(tmp_path / "runs/x/base-model"), None)
    assert adapter_base_reference("models/mine", Path("unused")) == (str(tmp_path / "models/mine"), None)


def a_run(root: Path, named: str, revision: str | None = None) -> Path:
    """root/final with an adapter config naming `named`, and root/base-model with a config."""
    (root / "final").mkdir(parents=True)
    (root / "base-model").mkdir()
    (root / "base-model" / "config.json").write_text("{}")
    config = {"base_model_name_or_path": named, "revision": revision}
    (root / "final" / "adapter_config.json").write_text(json.dumps(config))
    return root / "final"


def test_a_run_moved_elsewhere_finds_its_own_base_model(tmp_path):
    final = a_run(tmp_path / "moved", str(tmp_path / "gone" / "base-model"))
    assert adapter_base(final) == str(tmp_path / "moved" / "base-model")


def test_a_copied_run_uses_its_own_base_model_not_the_original(tmp_path):
    a_run(tmp_path / "original", "unused")
    final = a_run(tmp_path / "copy", str(tmp_path / "original" / "base-model"))
    assert adapter_base(final) == str(tmp_path / "copy" / "base-model")


def test_a_base_named_relative_to_the_adapter_as_earlier_runs_wrote_it_still_loads(tmp_path, monkeypatch):
    final = a_run(tmp_path / "run", "../base-model")
    monkeypatch.chdir("/")
    assert adapter_base(final) == str(tmp_path / "run" / "base-model")


def test_a_local_base_elsewhere_and_a_hub_base(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "config.json").write_text("{}")
    assert adapter_base(a_run(tmp_path / "a", str(tmp_path / "models" / "mine"))) == str(tmp_path / "models" / "mine")
    assert adapter_base(a_run(tmp_path / "b", "Qwen/Qwen2.5-0.5B", "main")) == "hf://Qwen/Qwen2.5-0.5B@main"
    assert adapter_base(a_run(tmp_path / "c", "org/name")) == "hf://org/name"


def test_a_base_that_is_not_there_is_one_line_naming_it(tmp_path):
    final = a_run(tmp_path / "run", str(tmp_path / "models" / "absent"))
    with pytest.raises(
        SpecError, match=f"the base model '{tmp_path}/models/absent' that the adapter in .* is not there"
    ):
        adapter_base(final)
    (final / "adapter_config.json").write_text("{not json")
    with pytest.raises(SpecError, match="is not a readable adapter config"):
        adapter_base(final)
