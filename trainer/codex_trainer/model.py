"""Build the model to train: load or create the base, then wrap it with PEFT."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .errors import SpecError, disk_full, is_disk_full
from .fields import HF_SOURCE
from .files import atomic_dir
from .sources import load_failure, resolve_source
from .spec import ModelSpec, PeftSpec


def load_base_model(
    spec: ModelSpec,
    tokenizer: PreTrainedTokenizerBase,
    base_dir: Path,
    dtype: torch.dtype | None,
    is_main: bool,
    seed: int | None = None,
    fresh: bool = False,
) -> PreTrainedModel:
    """The base model. A scratch model is created from its config (fresh weights from torch's generator,
    seeded with `seed` by the caller), saved to `base_dir` and read from there on every later start, so a
    resumed run continues from the very same base weights. On a `fresh` start (no checkpoint to resume) a
    base made from another config or seed is made again: a run killed before its first checkpoint and
    started with a changed model trains the model it names."""
    if spec.source == "scratch":
        config = scratch_config(spec, tokenizer)
        made_from = _made_from(config, seed)
        there = (base_dir / "config.json").is_file()
        if not there or fresh:  # made here now: checked before its weights are (on every rank alike)
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                check_forward(new_model(config, spec), spec)
        if is_main and (not there or (fresh and _recorded(base_dir) != made_from)):
            # its draws leave the caller's generator as it was: the LoRA weights made next are the same whether
            # this start made the base or found it (a start killed before its first checkpoint made it)
            with torch.random.fork_rng(devices=[]):
                model = new_model(config, spec)
            try:
                with atomic_dir(base_dir) as tmp:
                    model.save_pretrained(tmp)
                    (tmp / BASE_RECORD).write_text(json.dumps({"madeFrom": made_from}) + "\n")
            except BaseException as e:
                if is_disk_full(e):
                    size = sum(p.numel() * p.element_size() for p in model.parameters())
                    raise disk_full("the scratch model (base-model/)", base_dir.parent, size) from None
                raise
            del model
        _barrier()  # every rank, whatever it found: rank 0 may be replacing the base
    source = str(base_dir) if spec.source == "scratch" else spec.source
    model = load_causal_lm(source, "spec.model.source", dtype=dtype, trust_remote_code=spec.trust_remote_code)
    check_vocabulary(model, tokenizer)
    return model


BASE_RECORD = "codex-base.json"  # in a scratch base-model/: what it was made from


def not_a_runs_base(base_dir: Path, out: Path) -> bool:
    """`base_dir` exists and no run made it: no record of what it was made from, and no run.json beside it (a
    base from before the record has one). A user's own base-model/ in the output directory, say."""
    if not base_dir.exists():
        return False
    return not (base_dir / BASE_RECORD).is_file() and not (out / "run.json").is_file()


def _made_from(config: PreTrainedConfig, seed: int | None) -> str:
    """A digest of what a scratch base's weights depend on: its full config (without the library version
    that wrote it) and the seed of its initialisation."""
    cfg = json.loads(config.to_json_string(use_diff=False))
    cfg.pop("transformers_version", None)
    return hashlib.sha256(json.dumps({"config": cfg, "seed": seed}, sort_keys=True).encode()).hexdigest()


def _recorded(base_dir: Path) -> str | None:
    """What an existing scratch base was made from (None: not recorded, as bases before the record were)."""
    try:
        return json.loads((base_dir / BASE_RECORD).read_text()).get("madeFrom")
    except (OSError, ValueError, AttributeError):
        return None


def load_causal_lm(
    source: str,
    field: str,
    **kwargs: Any,  # from_pretrained's options (dtype, device_map, trust_remote_code, ...)
) -> PreTrainedModel:
    """A saved causal LM from a source (hf://org/name[@rev] or a local directory): SpecError under `field`
    for a source that is wrong, TransientError when the Hub cannot be reached."""
    name, revision = resolve_source(source, field=field, what="a causal LM")
    try:
        return AutoModelForCausalLM.from_pretrained(name, revision=revision, **kwargs)
    except (OSError, ValueError) as e:
        raise load_failure(e, source, field, "a causal LM") from None


def check_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """SpecError when the tokenizer has ids the model's embedding has no row for."""
    rows = embedding_rows(model)
    if rows is not None and len(tokenizer) > rows:
        raise SpecError(
            "spec.tokenizer",
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows}; "
            "use the model's own tokenizer",
        )


def embedding_rows(model: PreTrainedModel | PeftModel) -> int | None:
    """The input embedding's vocabulary size: its num_embeddings, which nn.Embedding and the embedding modules
    of custom (trust_remote_code) models alike have (None for one without it, which cannot be checked)."""
    rows = getattr(model.get_input_embeddings(), "num_embeddings", None)
    return rows if isinstance(rows, int) else None


def source_config(spec: ModelSpec) -> PreTrainedConfig:
    """The config of a Hub or local model (no weights fetched): what `validate` builds its model from."""
    name, revision = resolve_source(spec.source, field="spec.model.source", what="a model config")
    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise load_failure(e, spec.source, "spec.model.source", "a model config") from None


def scratch_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedConfig:
    """spec.model.config completed from the tokenizer: vocab_size (at least the tokenizer's size) and the
    pad, bos and eos ids, unless the config sets them. SpecError naming the field for one run would refuse."""
    cfg = dict(spec.config or {})
    model_type = cfg.pop("model_type")
    cfg.setdefault("vocab_size", len(tokenizer))
    if isinstance(cfg["vocab_size"], int) and cfg["vocab_size"] < len(tokenizer):
        raise SpecError(
            "spec.model.config.vocab_size",
            f"is {cfg['vocab_size']} but the tokenizer has {len(tokenizer)} tokens; raise it or leave it out",
        )
    for key, tok_id in (
        ("pad_token_id", tokenizer.pad_token_id),
        ("bos_token_id", tokenizer.bos_token_id),
        ("eos_token_id", tokenizer.eos_token_id),
    ):
        cfg.setdefault(key, tok_id)
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except Exception as e:  # noqa: BLE001 - the config is the user's: any refusal (e.g. a strict field) is theirs
        raise _unbuildable("spec.model.config", e) from None
    _refuse_unknown_keys(config)
    return config


def _refuse_unknown_keys(config: PreTrainedConfig) -> None:
    """transformers keeps a key its config class does not know and the model ignores it: `hiden_size` would
    build Llama's default 4,096-wide model without a word. Keys it takes and converts (rope_theta into
    rope_parameters, torch_dtype into dtype) are not in the difference."""
    try:
        known = set(type(config)().to_dict())
    except Exception:  # noqa: BLE001 - a config class that needs arguments: nothing to compare with
        return
    unknown = sorted(set(config.to_dict()) - known)
    if not unknown:
        return

    def hint(key: str) -> str:
        close = difflib.get_close_matches(key, known, n=1)
        return f" (did you mean {close[0]}?)" if close else ""

    cls = type(config).__name__
    if len(unknown) == 1:
        key = unknown[0]
        why = f"not a setting of {cls}{hint(key)}, which would ignore it; correct or remove it"
        raise SpecError(f"spec.model.config.{key}", why)
    keys = ", ".join(key + hint(key) for key in unknown)
    why = f"{keys}: not settings of {cls}, which would ignore them; correct or remove them"
    raise SpecError("spec.model.config", why)


def new_model(config: PreTrainedConfig, spec: ModelSpec) -> PreTrainedModel:
    """A causal LM with fresh weights from `config`, on torch's default device (meta in `validate`)."""
    field = "spec.model.config" if spec.source == "scratch" else "spec.model"
    try:
        return AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - e.g. a pad_token_id beyond the vocabulary (an AssertionError in torch)
        raise _unbuildable(field, e) from None


def check_forward(model: PreTrainedModel, spec: ModelSpec) -> None:
    """A forward pass of two tokens through a model made on the meta device (no memory, no arithmetic): a config
    that builds but cannot run (num_key_value_heads not dividing num_attention_heads, say) is refused naming the
    field, not found by the first training step (exit 1, retried as a crash). An operation the meta device lacks
    (a model that reads a value on the host) leaves it unchecked."""
    if spec.trust_remote_code:
        return  # the model's own code: not ours to run here
    field = "spec.model.config" if spec.source == "scratch" else "spec.model"
    with contextlib.suppress(Exception):  # a shape check: flex attention would compile, which meta cannot
        model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 2, dtype=torch.long, device="meta"))
    except NotImplementedError:
        return
    except Exception as e:  # noqa: BLE001 - any other refusal is the config's
        said = " ".join(str(e).split())
        if "meta" in said.lower() or type(e).__module__.startswith("torch._dynamo"):
            return  # what the meta device cannot do (Tensor.item() on it, a compile), not the config
        first = said[:200] or type(e).__name__
        raise SpecError(field, f"a model built from this config cannot run: {first}") from None


def _unbuildable(field: str, e: Exception) -> SpecError:
    first = " ".join(str(e).split())[:200] or type(e).__name__
    return SpecError(field, f"cannot build a causal LM from this config: {first}")


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def wrap_peft(model: PreTrainedModel, spec: PeftSpec, base_name: str | None = None) -> PreTrainedModel | PeftModel:
    """The model with LoRA adapters (or as it is for peft.method none). PEFT records the base's name_or_path;
    what the saved adapter names is set when it is written (adapter_base_reference)."""
    if spec.method == "none":
        return model
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # annotated int; PEFT only divides by it (alpha / r)
        lora_dropout=spec.dropout,
        target_modules=spec.peft_target_modules,  # PEFT takes all-linear as a string
        modules_to_save=list(spec.modules_to_save) or None,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_name,
    )
    if isinstance(spec.peft_target_modules, list):
        _check_names(model, spec.target_modules, "spec.peft.targetModules")
    _check_names(model, spec.modules_to_save, "spec.peft.modulesToSave")
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise SpecError("spec.peft.targetModules", f"{e}") from None


def _check_names(model: torch.nn.Module, names: list[str], field: str) -> None:
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    missing = [n for n in names if n not in present]
    if missing:

        def named(kind: type) -> str:
            return ", ".join(sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, kind)}))

        raise SpecError(
            field,
            f"no module named {', '.join(missing)} in this model; its linear layers are {named(torch.nn.Linear)}, "
            f"its embeddings {named(torch.nn.Embedding)}",
        )


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor, by name: what a checkpoint must hold to continue training."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)


# ---------------------------------------------------------------- positions


def check_positions(
    model: torch.nn.Module, max_seq_length: int, warn: Callable[[str], None], field: str = "data.maxSeqLength"
) -> None:
    """Refuse a maxSeqLength the model cannot represent (learned absolute positions, e.g. GPT-2's
    n_positions); warn when it can (rotary, relative) but was configured for fewer positions. `field`: where
    the length was given (eval's --max-seq-length)."""
    config = model.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or max_seq_length <= limit:
        return
    learned = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding) and _is_position_table(n)]
    if learned:
        raise SpecError(
            field if field.startswith("--") else f"spec.{field}",
            f"is {max_seq_length} but this model has learned position embeddings ({learned[0]}) for {limit} "
            f"positions only; set {field.rpartition('.')[2]} to {limit} or less",
        )
    warn(
        f"{field} {max_seq_length} is beyond the {limit} positions this model is configured for "
        "(max_position_embeddings); its positions extend, but it was not trained for them"
    )


def _is_position_table(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last == "wpe" or "pos" in last


# ---------------------------------------------------------------- the trained result


ADAPTER_CONFIG = "adapter_config.json"  # PEFT's, in a run's final/
BASE_MODEL_DIR = "base-model"  # a run's scratch base model, beside final/


def adapter_base_reference(source: str, base_dir: Path) -> tuple[str, str | None]:
    """What adapter_config.json names as the base model (base_model_name_or_path, revision), so that PEFT's
    own loaders (AutoPeftModelForCausalLM, PeftModel) find it from any working directory: the Hub id and
    revision for hf:// models; for scratch and local models the base's absolute path. load_trained also
    finds a scratch base after the run directory was moved (the run's base-model/ beside final/)."""
    m = HF_SOURCE.match(source)
    if m:
        return m.group("repo"), m.group("rev")
    base = base_dir if source == "scratch" else Path(source).expanduser()
    return str(base.resolve()), None


def load_trained(
    path: str | Path,
    **kwargs: Any,  # from_pretrained's options (dtype, device_map, ...), passed on as they are
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a run's final/ directory, from any working directory.

    A LoRA adapter is applied to its base model (load_adapter); with peft.method none final/ holds the whole
    model. Problems a user can fix are SpecErrors."""
    from transformers import AutoTokenizer

    final = Path(path).expanduser()
    tokenizer = AutoTokenizer.from_pretrained(final)
    if not (final / ADAPTER_CONFIG).is_file():
        return load_causal_lm(str(final), "", **kwargs), tokenizer
    return load_adapter(final, **kwargs), tokenizer


def load_adapter(final: Path, **kwargs: Any) -> PeftModel:
    """The adapter in `final` on the base model its adapter_config.json names (adapter_base), in eval mode."""
    base = adapter_base(final)
    model = load_causal_lm(base, "", **kwargs)
    try:
        return PeftModel.from_pretrained(model, final, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise SpecError(
            "", f"the adapter in '{final}' does not match its base model '{base}': {first_problem(e)}"
        ) from None


def adapter_base(final: Path) -> str:
    """The base model of the adapter in `final`, as a source (a local directory, or hf://org/name[@rev]).

    adapter_config.json names it by Hub id and revision, by absolute path, or (runs written before the path
    was made absolute) by a path relative to `final`. A run's scratch base is its base-model/ beside
    final/: that one is taken when the adapter names a base-model/, so a run directory moved or copied
    elsewhere still loads from its own."""
    try:
        config = json.loads((final / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base = config["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpecError("", f"'{final / ADAPTER_CONFIG}' is not a readable adapter config ({e})") from None
    if not base:
        raise SpecError("", f"the adapter in '{final}' does not name its base model (base_model_name_or_path)")
    named = final / Path(base).expanduser()  # an absolute path stays as it is
    own = final / ".." / BASE_MODEL_DIR
    if named.name == BASE_MODEL_DIR and (own / "config.json").is_file():
        return _same_base(final, own.resolve())
    if (named / "config.json").is_file():
        return _same_base(final, named.resolve())
    if _looks_like_hub_id(base):
        rev = config.get("revision")
        return f"hf://{base}" + (f"@{rev}" if rev else "")
    shown = f"'{base}'" if Path(base).is_absolute() else f"'{base}' ({named.resolve()})"
    raise SpecError("", f"the base model {shown} that the adapter in '{final}' names is not there")


def _same_base(final: Path, base: Path) -> str:
    """`base`, unless it is a scratch base made again (another config or seed) since the adapter in `final` was
    trained on it: final/ copied alone names its run's base-model/ by absolute path, and a new run there makes
    another one. Either side without the record (runs before it) is taken as it is."""
    trained_on, now = _recorded(final), _recorded(base)
    if trained_on and now and trained_on != now:
        raise SpecError(
            "",
            f"the base model '{base}' that the adapter in '{final}' names was made again since this adapter was "
            f"trained on it (another model config or seed), so its weights are not the ones the adapter needs; "
            f"copy the adapter's whole run directory, {BASE_MODEL_DIR}/ beside final/, and load it from there",
        )
    return str(base)


def _looks_like_hub_id(name: str) -> bool:
    return HF_SOURCE.fullmatch(f"hf://{name}") is not None and not name.startswith((".", "/", "~"))


def first_problem(e: Exception) -> str:
    """The first concrete problem in a load error (e.g. "size mismatch for X: ..."), on one line."""
    text = " ".join(str(e).split())
    m = re.search(r"size mismatch for .*?(?=\. size mismatch for |$)", text)
    return (m.group(0) if m else text)[:300]
