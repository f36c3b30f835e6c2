"""The tokenizer/model vocabulary check that `run`, `validate` and `load_base_model` share, and where a trained
adapter names its base model and where the one loader (load_trained, `codex-train eval`) finds it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from codex_trainer.errors import SpecError
from codex_trainer.model import BASE_RECORD, adapter_base, adapter_base_reference, check_vocabulary


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


# ---------------------------------------------------------------- a run's scratch base model


LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32}  # fmt: skip


def test_a_fresh_start_with_another_model_config_or_seed_builds_a_new_base_and_a_resume_keeps_its_own(tmp_path):
    """A run killed before its first checkpoint, restarted with a smaller model: the base is built anew
    from the config it now names (it used to be the first one, whatever run.json said). A resume uses the
    base its checkpoints were trained on."""
    import torch

    from codex_trainer.model import load_base_model
    from codex_trainer.spec import ModelSpec
    from codex_trainer.tokenizer import load_tokenizer

    tok, base_dir = load_tokenizer("bytes"), tmp_path / "base-model"

    def base(config: dict, seed: int, fresh: bool):
        torch.manual_seed(seed)  # as the training loop does before it builds the model
        spec = ModelSpec(source="scratch", config=config)
        return load_base_model(spec, tok, base_dir, None, is_main=True, seed=seed, fresh=fresh)

    first = base(LLAMA, 1, fresh=True)
    assert base(LLAMA, 1, fresh=True).state_dict()["lm_head.weight"].equal(first.state_dict()["lm_head.weight"])
    smaller = base(LLAMA | {"hidden_size": 8, "intermediate_size": 16}, 1, fresh=True)
    assert smaller.config.hidden_size == 8
    reseeded = base(LLAMA, 2, fresh=True)
    assert reseeded.config.hidden_size == 16
    assert not reseeded.state_dict()["lm_head.weight"].equal(first.state_dict()["lm_head.weight"])
    # resuming (checkpoints there): the base on disk, whatever the spec now says (the run identity refuses
    # a changed model before this)
    assert base(LLAMA | {"hidden_size": 8, "intermediate_size": 16}, 2, fresh=False).config.hidden_size == 16


def test_an_adapter_whose_base_was_made_again_since_is_refused_not_loaded_onto_other_weights(tmp_path):
    """final/ copied alone names its run's base-model/ by absolute path; a new run in that directory makes
    another base there. The adapter records what its base was made from, and the loader compares."""
    lone = a_run(tmp_path / "lone", str(tmp_path / "run" / "base-model"))
    (tmp_path / "lone" / "base-model" / "config.json").unlink()
    (tmp_path / "lone" / "base-model").rmdir()  # only final/ was copied
    base = tmp_path / "run" / "base-model"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    (lone / BASE_RECORD).write_text(json.dumps({"madeFrom": "first"}))
    (base / BASE_RECORD).write_text(json.dumps({"madeFrom": "first"}))
    assert adapter_base(lone) == str(base)
    (base / BASE_RECORD).write_text(json.dumps({"madeFrom": "second"}))
    with pytest.raises(SpecError, match="was made again since this adapter was trained on it"):
        adapter_base(lone)
    (base / BASE_RECORD).unlink()  # a base from before the record: nothing to compare
    assert adapter_base(lone) == str(base)


def test_the_result_records_what_its_scratch_base_was_made_from(tmp_path):
    import torch

    from codex_trainer.model import load_base_model, wrap_peft
    from codex_trainer.result import write_final
    from codex_trainer.spec import ModelSpec, PeftSpec
    from codex_trainer.tokenizer import load_tokenizer

    tok, base_dir = load_tokenizer("bytes"), tmp_path / "base-model"
    torch.manual_seed(0)
    model = load_base_model(ModelSpec(source="scratch", config=LLAMA), tok, base_dir, None, True, seed=0, fresh=True)
    peft = wrap_peft(model, PeftSpec(target_modules=["q_proj", "v_proj"]))
    write_final(peft, tok, lora=True, merge=False, final=tmp_path / "final", base_ref=(str(base_dir), None), step=1)
    assert (tmp_path / "final" / BASE_RECORD).read_text() == (base_dir / BASE_RECORD).read_text()


def test_a_key_the_models_config_does_not_know_is_refused_naming_it_not_ignored():
    """transformers keeps such a key and the model ignores it: `hiden_size` built Llama's default 4,096-wide
    model, 690 times the example's, without a word (found by a new-user check). A config.json's own keys, some
    of which transformers converts (rope_theta, torch_dtype), pass."""
    from codex_trainer.model import scratch_config
    from codex_trainer.spec import ModelSpec
    from codex_trainer.tokenizer import load_tokenizer

    tok = load_tokenizer("bytes")
    typo = {k if k != "hidden_size" else "hiden_size": v for k, v in LLAMA.items()}
    with pytest.raises(SpecError) as e:
        scratch_config(ModelSpec(source="scratch", config=typo), tok)
    assert e.value.problems[0][0] == "spec.model.config.hiden_size"
    assert "not a setting of LlamaConfig (did you mean hidden_size?)" in str(e.value)
    with pytest.raises(SpecError) as e:
        scratch_config(ModelSpec(source="scratch", config=typo | {"use_sliding_window": False}), tok)
    assert e.value.problems[0][
        0
    ] == "spec.model.config" and "hiden_size (did you mean hidden_size?), use_sliding_window" in str(e.value)
    shipped = {"architectures": ["LlamaForCausalLM"], "torch_dtype": "float32", "rope_theta": 5e5}
    as_shipped = LLAMA | shipped | {"transformers_version": "4.43.1", "tie_word_embeddings": False}
    assert scratch_config(ModelSpec(source="scratch", config=as_shipped), tok).rope_parameters["rope_theta"] == 5e5


def test_a_local_folder_without_a_tokenizer_is_refused_naming_the_fix(tmp_path):
    """A run's base-model/ (weights and config, no tokenizer) named as the model: the tokenizer defaults to the
    same folder; transformers' words ran over several lines, cut to 'Couldn't instantiate the backend tokenizer
    from one of: ' (found by a new-user check)."""
    from codex_trainer.errors import SpecError
    from codex_trainer.tokenizer import load_tokenizer

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(SpecError) as e:
        load_tokenizer(str(tmp_path))
    ((field, message),) = e.value.problems
    assert field == "spec.tokenizer" and "holds no tokenizer" in message
    assert "'bytes' for the built-in byte tokenizer" in message
