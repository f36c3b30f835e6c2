"""codex-train eval: token-weighted loss, perplexity and next-token accuracy of a model the trainer produced.

    codex-train eval PATH [--data FILE ...] [--output FILE] [--max-batches N] [--batch-size N]
                          [--prompts FILE --max-new-tokens N]

PATH is a run's final/ (a PEFT adapter on the base its adapter_config.json names), final/merged/ or
any saved model directory, a checkpoint checkpoints/step-N/ (rebuilt from the run's run.json two
levels up), or hf://org/name[@rev]. The data is tokenized and packed by the training rules (the
run's data.textField, maxSeqLength and packing when a run.json is found); without --data the run's
own validation split is evaluated, batched and capped as the run's evaluation was. Output is NDJSON:
a summary line, one line per file, and one line per prompt with its greedy completion.

Problems a user can fix (a bad path, bad data, an adapter that does not fit its base) are SpecErrors:
one line and exit 2, as for `codex-train run`. torch is imported only when evaluating.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .contract import CHECKPOINT_MANIFEST, CHECKPOINTS_DIR, STEP_DIR_PREFIX
from .errors import SpecError
from .evaloutput import refuse_overwriting, write_lines
from .fields import HF_SOURCE
from .prompts import complete_prompts, read_prompts
from .spec import DataSpec, JobSpec

if TYPE_CHECKING:  # imported only when evaluating
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .data import Split

    Model = PreTrainedModel | PeftModel  # a causal LM, or a LoRA adapter on one
    Autocast = Callable[[], AbstractContextManager[object]]  # a new context to run the forward pass in

RUN_JSON = "run.json"
DEFAULT_MAX_NEW_TOKENS = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path",
        nargs="?",  # `eval --data a.jsonl RUN` is read by run_eval: --data took RUN as one of its files
        help="a run's final/ (adapter), final/merged/ or a model directory, a checkpoint checkpoints/step-N/, "
        "or hf://org/name[@rev]",
    )
    p.add_argument(
        "--data",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="data files to evaluate (.jsonl, .json, .txt, .parquet); default: the run's validation split",
    )
    p.add_argument("--output", metavar="FILE", help="write the NDJSON lines here instead of stdout")
    p.add_argument("--max-batches", type=_positive, metavar="N", help="at most N batches per file")
    p.add_argument("--batch-size", type=_positive, metavar="N", help="sequences per batch (default: the run's)")
    p.add_argument(
        "--max-seq-length", type=_at_least_2, metavar="N", help="tokens per sequence, at least 2 (default: the run's)"
    )
    p.add_argument("--text-field", metavar="NAME", help="the field holding the text (default: the run's)")
    p.add_argument("--prompts", metavar="FILE", help="one prompt per line: write each one's greedy completion")
    p.add_argument(
        "--max-new-tokens",
        type=_positive,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help=f"tokens generated per prompt at most (default {DEFAULT_MAX_NEW_TOKENS})",
    )


def path_and_data(path: str | None, data: list[str] | None) -> tuple[str, list[str] | None]:
    """What to evaluate and on which files. `--data` takes every word after it, so in
    `eval --data a.jsonl b.jsonl RUN` the PATH is the last of them."""
    if path is not None:
        return path, data
    if data and len(data) > 1:
        return data[-1], data[:-1]
    raise SpecError("", "name what to evaluate: codex-train eval PATH [--data FILE ...] (PATH: a run's final/, "
                    "a checkpoint or a model)")  # fmt: skip


def _at_least_2(text: str) -> int:
    """A sequence length: a token and the one it predicts, at least."""
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError("must be at least 2 (a token and the one it predicts)")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


# ---------------------------------------------------------------- what PATH is


@dataclass
class Target:
    """The model to evaluate, as found from PATH, before anything heavy is loaded."""

    kind: str  # adapter | model | checkpoint | hub
    path: str
    run_dir: Path | None = None
    spec: JobSpec | None = None
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def locate(path: str) -> Target:
    """Classify PATH and find the run.json beside it; SpecError (exit 2) for anything that is not a model."""
    if HF_SOURCE.fullmatch(path):
        return Target("hub", path)
    if path.startswith("hf://"):
        raise SpecError("", f"'{path}' must be of the form hf://org/name or hf://org/name@revision")
    p = Path(path).expanduser()
    if not p.exists():
        raise SpecError("", f"'{path}' does not exist; give a run's final/, a checkpoint, a model directory or hf://")
    if not p.is_dir():
        raise SpecError("", f"'{path}' is a file; give the directory holding the model (e.g. runs/NAME/final)")
    run_dir, spec = _find_run(p)
    if (p / "adapter_config.json").is_file():
        return Target("adapter", path, run_dir, spec, _final_step(run_dir, p))
    if (p / "config.json").is_file():
        return Target("model", path, run_dir, spec, _final_step(run_dir, p))
    if (p / "trainable.safetensors").is_file() or (p / CHECKPOINT_MANIFEST).is_file():
        if spec is None:
            raise SpecError(
                "",
                f"checkpoint '{path}' has no {RUN_JSON} two levels up (RUN/checkpoints/step-N): it names the base "
                "model, tokenizer and data settings the checkpoint belongs to",
            )
        return Target("checkpoint", path, run_dir, spec, _checkpoint_step(p))
    if (p / "final").is_dir():
        unfinished = f"; for this run's result give {p / 'final'}"
    else:
        from .checkpoint import complete  # the checkpoints a rerun would resume from

        done = complete(p / CHECKPOINTS_DIR)
        unfinished = f"; the run has not finished: evaluate its newest checkpoint, {done[-1][1]}" if done else ""
    raise SpecError(
        "",
        f"'{path}' holds no model: expected adapter_config.json (a run's final/), config.json (a saved model) or "
        f"trainable.safetensors (a checkpoint){unfinished}",
    )


def _find_run(p: Path) -> tuple[Path | None, JobSpec | None]:
    """The run directory and its spec: run.json in PATH, its parent (final/, base-model/) or grandparent
    (final/merged/, checkpoints/step-N/)."""
    for d in (p, p.parent, p.parent.parent):
        f = d / RUN_JSON
        if f.is_file():
            try:
                info = json.loads(f.read_text(encoding="utf-8"))
                spec = JobSpec.model_validate(info["spec"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                first = " ".join(str(e).split())[:200]
                raise SpecError("", f"'{f}' is not a readable run.json ({type(e).__name__}: {first})") from None
            return d, _data_read_from(spec, info.get("workdir"))
    return None, None


def _run_info(run_dir: Path) -> dict[str, Any]:
    """run.json as written (locate has read it already: it is valid JSON)."""
    return cast(dict[str, Any], json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8")))


def _data_read_from(spec: JobSpec, workdir: Any) -> JobSpec:
    """The run's spec with each relative data path read from the directory the run read it from (run.json's
    workdir) where it is still there, else from here: eval of a run's final/ from another directory
    evaluates the run's own validation split, not a file of the same name here."""
    if not isinstance(workdir, str):
        return spec

    def found(name: str) -> str:
        there = Path(workdir) / name
        return str(there) if not Path(name).is_absolute() and there.exists() else name

    train, validation = [found(n) for n in spec.data.train], [found(n) for n in spec.data.validation]
    data = spec.data.model_copy(update={"train": train, "validation": validation})
    return spec.model_copy(update={"data": data})


def _checkpoint_step(p: Path) -> int | None:
    try:
        return int(p.name.removeprefix(STEP_DIR_PREFIX))
    except ValueError:
        return None


def _final_step(run_dir: Path | None, p: Path) -> int | None:
    """The step a run's final/ (or final/merged/) was written at: as it records it; one written before the record,
    its newest checkpoint's."""
    if run_dir is None or "final" not in p.resolve().relative_to(run_dir.resolve()).parts[:1]:
        return None
    from .checkpoint import complete
    from .result import result_step

    recorded = result_step(run_dir / "final")
    if recorded is not None:
        return recorded

    done = complete(run_dir / CHECKPOINTS_DIR)
    return done[-1][0] if done else None


# ---------------------------------------------------------------- loading


def load(target: Target, device: torch.device) -> tuple[Model, PreTrainedTokenizerBase]:
    """(model in eval mode on device, tokenizer) for a located target."""
    from transformers.utils import logging as hf_logging

    from .model import embedding_rows

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    model: Model
    if target.kind == "hub":
        tokenizer = _tokenizer_for(target, None)
        model = _from_pretrained(target.path)
    elif target.kind == "model":
        tokenizer = _tokenizer_for(target, Path(target.path))
        model = _from_pretrained(target.path)
    elif target.kind == "adapter":
        from .model import load_adapter

        tokenizer = _tokenizer_for(target, Path(target.path))
        model = load_adapter(Path(target.path))
    else:
        target.spec = _as_the_checkpoint_trained(target)
        tokenizer = _tokenizer_for(target, None)
        model = _load_checkpoint(target, tokenizer)
    rows = embedding_rows(model)
    if rows is not None and len(tokenizer) > rows:
        raise SpecError(
            "",
            f"the tokenizer has {len(tokenizer)} tokens but the model in '{target.path}' has an embedding of "
            f"{rows}; they do not belong together",
        )
    # PreTrainedModel.to is functools.wraps(nn.Module.to), which typeshed does not bind to the instance
    model.to(device)  # type: ignore[arg-type]
    model.eval()  # no dropout (LoRA's included)
    return model, tokenizer


def _tokenizer_for(target: Target, directory: Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the model, else the run's (run.json), else the Hub model's own."""
    from .tokenizer import load_tokenizer

    if directory is not None and any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        tok = load_tokenizer(str(directory))
    elif target.spec is not None:
        tok = load_tokenizer(target.spec.tokenizer_source, target.spec.model.trust_remote_code)
    elif target.kind == "hub":
        tok = load_tokenizer(target.path)
    else:
        raise SpecError("", f"'{target.path}' holds no tokenizer and has no {RUN_JSON} beside it naming one")
    return tok


def _as_the_checkpoint_trained(target: Target) -> JobSpec:
    """The run's spec with its base as the checkpoint was trained on: a Hub model (and its tokenizer) at the
    commit the run started on, wherever the branch has moved; a local model folder checked to hold the same
    files (as `run` checks it before it resumes)."""
    from . import checkpoint
    from .modeldigest import changed_files, model_digests
    from .runinfo import saved_commit, saved_model_files
    from .sources import at_commit, tokenizer_at

    spec, path = target.spec, Path(target.path)
    assert spec is not None
    try:
        state = json.loads((path / checkpoint.STATE).read_text())
    except (OSError, ValueError):
        return spec  # checkpoint.verify says what is wrong with it
    files, commit = saved_model_files(state), saved_commit(state)
    cache = target.run_dir / "cache" if target.run_dir is not None else None  # the run's: read only what changed
    now = model_digests(spec.model.source, cache) if files else None
    if files and now != files:
        raise SpecError(
            "spec.model.source",
            f"the base model's files in '{spec.model.source}' differ from those checkpoint '{path}' was trained "
            f"from ({changed_files(files, now or {})}): restore them to evaluate it",
        )
    if not commit:
        return spec
    model = spec.model.model_copy(update={"source": at_commit(spec.model.source, commit)})
    return spec.model_copy(update={"model": model, "tokenizer": tokenizer_at(spec, commit)})


def _from_pretrained(source: str) -> PreTrainedModel:
    from .model import load_causal_lm

    return load_causal_lm(source, "")


def _load_checkpoint(target: Target, tokenizer: PreTrainedTokenizerBase) -> Model:
    """Base model + PEFT wrapping as the run built them, with the checkpoint's trainable tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from . import checkpoint
    from .model import BASE_MODEL_DIR, first_problem, load_base_model, load_trainable_state, wrap_peft

    path, spec, run_dir = Path(target.path), target.spec, target.run_dir
    assert spec is not None and run_dir is not None
    problem = checkpoint.verify(path)
    if problem:
        raise SpecError("", f"checkpoint '{path}' is incomplete or damaged: {problem}")
    base_dir = run_dir / BASE_MODEL_DIR
    if spec.model.source == "scratch" and not (base_dir / "config.json").is_file():
        raise SpecError("", f"the run's scratch base model '{base_dir}' is missing; the checkpoint needs it")
    base = load_base_model(spec.model, tokenizer, base_dir, None, is_main=False)
    model = wrap_peft(base, spec.peft)
    try:
        load_trainable_state(model, load_file(path / checkpoint.WEIGHTS))
    except (RuntimeError, SafetensorError) as e:
        raise SpecError(
            "", f"checkpoint '{path}' does not match the model its run.json describes: {first_problem(e)}"
        ) from None
    return model


# ---------------------------------------------------------------- data


@dataclass
class Settings:
    text_field: str
    max_seq_length: int
    packing: bool
    batch_size: int
    max_batches: int | None


def settings(args: argparse.Namespace, target: Target, model: Model) -> Settings:
    """The run's data and eval settings, overridden by the command line; defaults without a run."""
    spec = target.spec
    d = spec.data if spec is not None else DataSpec(train=["-"])
    max_len = args.max_seq_length or d.max_seq_length
    if spec is None and not args.max_seq_length:
        limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        if isinstance(limit, int):
            max_len = min(max_len, limit)
    batch = args.batch_size or (spec.eval.batch_size or spec.training.batch_size if spec else 8)
    own_split = not args.data
    max_batches = args.max_batches or (spec.eval.max_batches if spec is not None and own_split else None)
    return Settings(args.text_field or d.text_field, max_len, d.packing, batch, max_batches)


def data_sources(
    args: argparse.Namespace, target: Target, tokenizer: PreTrainedTokenizerBase, s: Settings
) -> list[tuple[dict[str, Any], Split]]:
    """[(what it is, Split)]: each --data file tokenized and packed on its own, or the run's validation split."""
    from .data import data_digest, load_dataset, pack, read_texts, tokenize, truncate
    from .tokenizer import tokenizer_fingerprint

    if args.data:
        shape = pack if s.packing else truncate
        out = []
        for name in args.data:
            try:
                texts = read_texts([name], s.text_field, "--data")
            except SpecError as e:  # the field eval reads is its --text-field, not the job's data.textField
                raise SpecError(
                    [("--text-field" if f == "spec.data.textField" else f, m) for f, m in e.problems]
                ) from None
            docs = tokenize(texts, tokenizer, tokenizer.eos_token_id)
            split = shape(docs, s.max_seq_length)
            if split.rows == 0:  # nothing to score: a loss of None would read as a result
                tokens = sum(len(d) for d in docs)
                raise SpecError(
                    "--data",
                    f"'{name}' makes {tokens} tokens, fewer than one packed sequence of {s.max_seq_length}; "
                    "lower --max-seq-length or add data",
                )
            out.append(({"file": name}, split))
        return out
    if target.spec is None:
        if args.prompts:
            return []
        raise SpecError("--data", f"give the files to evaluate: '{target.path}' has no {RUN_JSON} beside it")
    spec = target.spec
    data_spec = spec.data.model_copy(
        update={"text_field": s.text_field, "max_seq_length": s.max_seq_length, "packing": s.packing}
    )
    fp = tokenizer_fingerprint(tokenizer)
    ran_on = _run_info(target.run_dir).get("data_sha256") if target.run_dir is not None else None
    files = data_spec.train_files + data_spec.validation_files
    # before reading them (a file changed so that it no longer parses too); a file not there is said by the read.
    # A run.json written before the digest was kept has none: not checked
    if ran_on and all(Path(f).is_file() for f in files) and (now := data_digest(data_spec)) != ran_on:
        raise _data_changed(ran_on, now)
    try:
        ds = load_dataset(data_spec, tokenizer, fp, spec.training.seed, cache_dir=None)
    except SpecError as e:  # the run's files, read where it ran and from here: say so, and what else to do
        if not all("not found" in m for _, m in e.problems):
            raise
        raise SpecError(
            "",
            "the run's data, from which its validation split is rebuilt, cannot be read (from the directory it "
            "ran in, nor from here): "
            + "; ".join(f"{f}: {m}" if f else m for f, m in e.problems)
            + "; pass --data FILE to evaluate on files of your own",
        ) from None
    if (
        ds.validation.rows == 0
        and (args.max_seq_length or 0) > spec.data.max_seq_length
        and load_dataset(
            data_spec.model_copy(update={"max_seq_length": spec.data.max_seq_length}),
            tokenizer,
            fp,
            spec.training.seed,
            None,
        ).validation.rows
    ):
        raise SpecError(  # the split makes sequences at the run's own length: the longer one is the cause
            "--max-seq-length",
            f"the run's validation split makes no sequence of {args.max_seq_length} tokens (the run trained on "
            f"{spec.data.max_seq_length}); lower --max-seq-length, or pass --data FILE with longer texts",
        )
    if ds.validation.rows == 0:
        from .data import no_validation_reason

        raise SpecError(  # no --data was given: say which to give
            "",
            f"the run has no validation sequences ({no_validation_reason(data_spec, ds)}); pass --data FILE to "
            "evaluate on files of your own",
        )
    origin = list(spec.data.validation) or [
        f"{f} (validationFraction {spec.data.validation_fraction})" for f in spec.data.train
    ]
    return [({"split": "validation", "files": origin}, ds.validation)]


def _data_changed(then: str, now: str) -> SpecError:
    """The split drawn now would hold other rows, some of them trained on: said, not evaluated."""
    return SpecError(
        "",
        f"the run's data files changed since it ran (sha256 {then[:12]}… then, {now[:12]}… now): its "
        "validation split cannot be rebuilt as it was; pass --data FILE to evaluate on files of your own",
    )


# ---------------------------------------------------------------- evaluation


def evaluate_split(
    model: Model, split: Split, s: Settings, pad_id: int, device: torch.device, autocast: Autocast
) -> dict[str, Any]:
    """Token-weighted loss (evalloss.eval_loss, as the training loop evaluates) and next-token accuracy over
    the split's rows in order, batched as training's evaluation batches them (rows 0..n in batches of
    batch_size, at most max_batches). The loss is the training loop's (loss.LanguageModelLoss: a chunk of
    logits at a time, packed documents apart), and the accuracy is counted from the same chunks."""
    import numpy as np

    from .evalloss import eval_loss
    from .loss import LanguageModelLoss

    hits: list[torch.Tensor] = []
    net = LanguageModelLoss(model)

    def loss_and_hits(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return m(**batch, hits=hits)

    sums = eval_loss(
        net,
        split,
        np.arange(split.rows),
        s.batch_size,
        pad_id,
        device,
        max_batches=s.max_batches,
        loss_fn=loss_and_hits,
        autocast=autocast,
    )
    return {
        "loss_sum": sums.loss_sum,
        "correct": int(sum(int(h) for h in hits)),
        "tokens": sums.tokens,
        "sequences": sums.sequences,
        "batches": sums.batches,
    }


def metrics_of(t: dict[str, Any]) -> dict[str, Any]:
    from .evalloss import perplexity

    if t["tokens"] == 0:
        return {"loss": None, "perplexity": None, "accuracy": None, "tokens": 0, "sequences": t["sequences"]}
    loss = t["loss_sum"] / t["tokens"]
    return {
        "loss": loss,
        "perplexity": perplexity(loss),
        "accuracy": t["correct"] / t["tokens"],
        "tokens": t["tokens"],
        "sequences": t["sequences"],
    }


def _device_and_autocast(spec: JobSpec | None) -> tuple[torch.device, Autocast]:
    import contextlib

    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu"), contextlib.nullcontext
    precision = spec.training.precision if spec is not None else "auto"
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return torch.device("cuda"), contextlib.nullcontext
    return torch.device("cuda"), lambda: torch.autocast("cuda", dtype=dtype)


def run_eval(args: argparse.Namespace) -> int:
    """The `eval` command: locate, load, evaluate, write the lines. SpecError for a user's problem."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    if args.output and Path(args.output).is_dir():
        raise SpecError("--output", f"'{args.output}' is a directory; name a file")
    args.path, args.data = path_and_data(args.path, args.data)
    prompts = read_prompts(args.prompts) if args.prompts else []
    target = locate(args.path)
    if args.output:
        inputs = [("a --data file", name) for name in args.data or []]
        inputs += [("the --prompts file", args.prompts)] if args.prompts else []
        if target.spec is not None:
            inputs += [
                ("a data file of the run", n) for n in target.spec.data.train_files + target.spec.data.validation_files
            ]
        model_dir = Path(target.path) if target.kind != "hub" else None
        refuse_overwriting(Path(args.output), inputs, model_dir, target.run_dir)
    device, autocast = _device_and_autocast(target.spec)
    model, tokenizer = load(target, device)
    s = settings(args, target, model)
    if target.kind != "hub" or args.max_seq_length:
        from .model import check_positions

        flag = "--max-seq-length" if args.max_seq_length else "data.maxSeqLength"
        try:
            check_positions(
                model, s.max_seq_length, lambda m: print(f"codex-train: warning: {m}", file=sys.stderr), flag
            )
        except SpecError as e:
            raise SpecError(flag if args.max_seq_length else "", e.problems[0][1]) from None
    sources = data_sources(args, target, tokenizer, s)

    per_file, total = [], {"loss_sum": 0.0, "correct": 0, "tokens": 0, "sequences": 0, "batches": 0}
    for what, split in sources:
        t = evaluate_split(model, split, s, tokenizer.pad_token_id, device, autocast)
        for k in total:
            total[k] += t[k]
        per_file.append({"type": "file", **what, **metrics_of(t), "batches": t["batches"]})
    completions = complete_prompts(model, tokenizer, prompts, args.max_new_tokens, device) if prompts else []

    summary: dict[str, Any] = {"type": "summary", "model": args.path, "kind": target.kind}
    if target.step is not None:
        summary["step"] = target.step
    if sources:
        summary.update(metrics_of(total))
        summary["batches"] = total["batches"]
    summary.update(
        max_seq_length=s.max_seq_length,
        packing=s.packing,
        text_field=s.text_field,
        batch_size=s.batch_size,
        max_batches=s.max_batches,
        device=str(device),
    )
    lines = [json.dumps(row) for row in (summary, *per_file, *completions)]
    text = "\n".join(lines) + "\n"
    return write_lines(text, args.output)
