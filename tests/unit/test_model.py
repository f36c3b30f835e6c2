"""The tokenizer/model vocabulary check that `run`, `validate` and `load_base_model` share."""

from __future__ import annotations

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from codex_trainer.errors import SpecError
from codex_trainer.model import check_vocabulary


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=10, n_layer=1, n_embd=8, n_head=2, n_positions=16))


def test_a_tokenizer_with_more_ids_than_the_embedding_has_rows_is_refused(model):
    with pytest.raises(SpecError, match="the tokenizer has 12 tokens but the model's embedding has 10; use"):
        check_vocabulary(model, ["t"] * 12)


def test_a_tokenizer_that_fits_passes(model):
    check_vocabulary(model, ["t"] * 10)
