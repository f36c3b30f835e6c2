"""final/: what a finished run leaves (the adapter, or the whole model, its tokenizer and final/merged), written
whole or not at all, and loadable the way Hugging Face users load adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .errors import disk_full, is_disk_full
from .files import atomic_dir
from .model import BASE_RECORD

RESULT_RECORD = "codex-result.json"  # in final/: the step it was written at


def result_step(final: Path) -> int | None:
    """The step final/ was written at (None: no final/, or one written before the record, or damaged)."""
    try:
        step = json.loads((final / RESULT_RECORD).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def write_final(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    lora: bool,
    merge: bool,
    final: Path,
    base_ref: tuple[str, str | None],
    step: int,
) -> None:
    """final/: the adapter (or the full model when peft.method is none) and tokenizer; final/merged with peft.merge;
    and the step it is the result of (RESULT_RECORD: a rerun rewrites a final/ of another step).

    The adapter names its base so that it loads from anywhere (model.adapter_base_reference)."""
    try:
        with atomic_dir(final) as tmp:
            _write_result(model, tokenizer, lora, merge, tmp, base_ref)
            (tmp / RESULT_RECORD).write_text(json.dumps({"step": step}) + "\n")
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
