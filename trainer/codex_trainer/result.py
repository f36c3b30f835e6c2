"""final/: what a finished run leaves (the adapter, or the whole model, its tokenizer and final/merged), written
whole or not at all, and loadable the way Hugging Face users load adapters."""

from __future__ import annotations

import shutil
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .errors import disk_full, is_disk_full
from .files import atomic_dir
from .model import BASE_RECORD


def write_final(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    lora: bool,
    merge: bool,
    final: Path,
    base_ref: tuple[str, str | None],
) -> None:
    """final/: the adapter (or the full model when peft.method is none) and tokenizer; final/merged with peft.merge.

    The adapter names its base so that it loads from anywhere (model.adapter_base_reference)."""
    try:
        with atomic_dir(final) as tmp:
            _write_result(model, tokenizer, lora, merge, tmp, base_ref)
    except BaseException as e:
        if is_disk_full(e):
            whole = not lora or merge  # final/ holds every tensor, else the trainable ones
            size = sum(p.numel() * p.element_size() for p in model.parameters() if whole or p.requires_grad)
            raise disk_full("the result (final/)", final.parent, size) from None
        raise


def _write_result(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    lora: bool,
    merge: bool,
    tmp: Path,
    base_ref: tuple[str, str | None],
) -> None:
    if not lora:
        model.save_pretrained(str(tmp))  # str: PeftModel.save_pretrained, in the union, is annotated to take one
        tokenizer.save_pretrained(tmp)
        return
    assert isinstance(model, PeftModel)  # wrap_peft made it one (peft.method lora)
    for config in model.peft_config.values():
        config.base_model_name_or_path, config.revision = base_ref
    # the vocabulary is never resized, and "auto" would look base_ref up on the Hub (and warn)
    model.save_pretrained(str(tmp), save_embedding_layers=False)
    tokenizer.save_pretrained(tmp)
    record = Path(base_ref[0]) / BASE_RECORD  # a scratch base's: what it was made from (model.adapter_base checks)
    if base_ref[1] is None and record.is_file():
        shutil.copyfile(record, tmp / BASE_RECORD)
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(tmp / "merged")
        tokenizer.save_pretrained(tmp / "merged")
