"""`codex-train validate`: what can be checked without training, in seconds.

The callbacks named are installed; the data files exist and parse (every row has a string in
data.textField); the tokenizer and the model source resolve (a Hub source is looked up, its config and
tokenizer fetched, no weights); the model built from its config (on the meta device: no memory, no
weights) has the peft.targetModules and modulesToSave named, an embedding as large as the tokenizer, and
positions for data.maxSeqLength.
Problems raise SpecError (or TransientError when the Hub cannot be reached), as `run` would later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .data import read_texts
from .errors import SpecError
from .plugins import check_callbacks
from .spec import JobSpec

if TYPE_CHECKING:  # imported in check_job, once the data files have been read
    from transformers import PreTrainedConfig, PreTrainedTokenizerBase


def check_job(spec: JobSpec, warn: Callable[[str], None]) -> None:
    check_callbacks(spec.callbacks)
    read_texts(spec.data.train_files, spec.data.text_field, "spec.data.train")
    if spec.data.validation_files:
        read_texts(spec.data.validation_files, spec.data.text_field, "spec.data.validation")

    import torch
    from transformers import AutoModelForCausalLM

    from .model import _check_names, check_positions, check_vocabulary
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec.tokenizer_source, spec.model.trust_remote_code)
    config = _model_config(spec, tokenizer)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.model.trust_remote_code)
    except (ValueError, TypeError, KeyError) as e:
        raise SpecError("spec.model", f"cannot build a causal LM from its config: {e}") from None
    check_vocabulary(model, tokenizer)
    if spec.peft.method == "lora":
        if isinstance(spec.peft.peft_target_modules, list):
            _check_names(model, spec.peft.target_modules, "spec.peft.targetModules")
        _check_names(model, spec.peft.modules_to_save, "spec.peft.modulesToSave")
    check_positions(model, spec.data.max_seq_length, warn)


def _model_config(spec: JobSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedConfig:
    from transformers import AutoConfig

    from .sources import load_failure, resolve_source

    if spec.model.source == "scratch":
        cfg = dict(spec.model.config or {})
        model_type = cfg.pop("model_type")
        cfg.setdefault("vocab_size", len(tokenizer))
        try:
            return AutoConfig.for_model(model_type, **cfg)
        except Exception as e:  # noqa: BLE001 - the config is the user's: any refusal (e.g. a strict field) is theirs
            first = " ".join(str(e).split())[:200]
            raise SpecError("spec.model.config", f"cannot build a causal LM from this config: {first}") from None
    name, revision = resolve_source(spec.model.source, field="spec.model.source", what="a model config")
    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=spec.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise load_failure(e, spec.model.source, "spec.model.source", "a model config") from None
