"""Where a run pinned to its Hub model's commit reads its tokenizer from."""

from __future__ import annotations

import pytest
import yaml

from codex_trainer.manifest import apply_overrides, parse_manifest
from codex_trainer.sources import tokenizer_at
from support import TINY

COMMIT = "a" * 40


def spec(model: str, tokenizer: str):
    raw = apply_overrides(yaml.safe_load(TINY.read_text()), [f"model={{source: '{model}'}}", f"tokenizer={tokenizer}"])
    return parse_manifest(raw).spec


@pytest.mark.parametrize(
    ("model", "tokenizer", "read_from"),
    [
        ("hf://Org/Tiny", "hf://Org/Tiny", f"hf://Org/Tiny@{COMMIT}"),
        ("hf://Org/Tiny", "hf://Org/Tiny@main", f"hf://Org/Tiny@{COMMIT}"),
        ("hf://Org/Tiny@main", "hf://org/tiny", f"hf://Org/Tiny@{COMMIT}"),  # the Hub's names ignore case
        ("hf://Org/Tiny", "hf://Org/Tiny@v2", "hf://Org/Tiny@v2"),  # a revision of its own
        ("hf://Org/Tiny", "hf://Org/Other", "hf://Org/Other"),
    ],
)
def test_the_tokenizer_of_the_models_repository_and_revision_is_read_at_the_models_commit(model, tokenizer, read_from):
    assert tokenizer_at(spec(model, tokenizer), COMMIT) == read_from
    assert tokenizer_at(spec(model, tokenizer), None) == tokenizer
