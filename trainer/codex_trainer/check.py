"""`codex-train validate`: what can be checked without training, in seconds.

The callbacks named are installed; the data files exist and parse (every row has a string in
data.textField) and, tokenized, make a batch of sequences of data.maxSeqLength for every process (and
data.validation, when given, one sequence at least: data.check_sequences, as `run` checks); the tokenizer
and the model source resolve (a Hub source is looked up, its config and tokenizer fetched, no weights);
the model `run` would build (a scratch model's config completed from the tokenizer by
model.scratch_config, as `run` completes it), made on the meta device (no memory, no weights), has the
peft.targetModules and modulesToSave named, an embedding as large as the tokenizer, and positions for
data.maxSeqLength.

What cannot be checked from here is not judged: files on data.existingClaim (the volume is mounted in the
pods only) that are not here, and Hub sources when the Hub cannot be reached. check_job returns one line
for each such check; the job makes them itself when it starts. Problems raise one SpecError naming
each.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeVar

from .contract import DATA_DIR
from .data import read_texts
from .errors import SpecError, TransientError
from .plugins import check_callbacks
from .spec import JobSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

T = TypeVar("T")


def check_job(spec: JobSpec, warn: Callable[[str], None]) -> list[str]:
    """Check the job; a SpecError naming every problem found (each check runs unless it needs what an earlier
    one found wrong). Returns what could not be checked here, one line each."""
    unchecked: list[str] = []
    problems: list[tuple[str, str]] = []
    _collect(problems, lambda: check_callbacks(spec.callbacks))
    data = spec.data
    files = {"spec.data.train": data.train_files, "spec.data.validation": data.validation_files}
    readable = {field: _files_to_read(spec, field, names, unchecked) for field, names in files.items()}
    all_here = all(len(readable[field]) == len(names) for field, names in files.items())

    import torch

    from .model import (
        _check_names,
        check_forward,
        check_positions,
        check_vocabulary,
        new_model,
        scratch_config,
        source_config,
    )
    from .tokenizer import load_tokenizer

    before = len(problems)
    notes: list[str] = []
    tokenizer = _collect(
        problems,
        lambda: _unless_unreachable(
            lambda: load_tokenizer(spec.tokenizer_source, spec.model.trust_remote_code), "spec.tokenizer", unchecked
        ),
    )
    bad_tokenizer = len(problems) > before  # rather than one the Hub could not give
    if tokenizer is not None and all_here:  # read and made into sequences as `run` would: a batch a process?
        notes = _collect(problems, lambda: _check_sequences(spec, tokenizer)) or []
    else:  # the files that are here, read and parsed
        for field, here in readable.items():
            if here:
                _collect(problems, lambda: read_texts(here, spec.data.text_field, field))  # noqa: B023 (called now)
    if spec.model.source != "scratch":
        config = _collect(
            problems, lambda: _unless_unreachable(lambda: source_config(spec.model), "spec.model.source", unchecked)
        )
    elif tokenizer is not None:
        config = _collect(problems, lambda: scratch_config(spec.model, tokenizer))
    else:
        config = None
        if not bad_tokenizer:
            unchecked.append("spec.model.config: completed from the tokenizer, which could not be fetched")
    model = None
    if config is not None:
        with torch.device("meta"):
            model = _collect(problems, lambda: new_model(config, spec.model))
    if model is not None:
        _collect(problems, lambda: check_forward(model, spec.model))
        if tokenizer is not None:
            _collect(problems, lambda: check_vocabulary(model, tokenizer))
        if spec.peft.method == "lora":
            if isinstance(spec.peft.peft_target_modules, list):
                _collect(problems, lambda: _check_names(model, spec.peft.target_modules, "spec.peft.targetModules"))
            _collect(problems, lambda: _check_names(model, spec.peft.modules_to_save, "spec.peft.modulesToSave"))
        if not any(field == "spec.data.maxSeqLength" for field, _ in problems):  # said once is enough
            _collect(problems, lambda: check_positions(model, spec.data.max_seq_length, warn))
    unchecked.extend(_needs_a_gpu(spec))
    unchecked.extend(_needs_a_compiler(spec))
    unchecked.extend(_needs_a_wandb_key(spec))
    if problems:
        raise SpecError(problems)
    for line in notes:  # what the run would say of its settings, once nothing stops it
        warn(line)
    return unchecked


def _needs_a_gpu(spec: JobSpec) -> list[str]:
    """fp16 is right for a GPU node, but `run` on this machine refuses it when it has no GPU."""
    import torch

    if spec.training.precision == "fp16" and not torch.cuda.is_available():
        return [
            "spec.training.precision: fp16 needs a GPU, which this machine has not: `run` here refuses it "
            "(use fp32 or bf16 on a CPU)"
        ]
    return []


def compiler_problem(device_type: str, env: Mapping[str, str] = os.environ) -> str | None:
    """Why torch.compile cannot build its kernels here (no compiler on PATH, or a CXX that names no program);
    None when it can."""
    names = ("gcc", "cc", "clang") if device_type == "cuda" else ("g++", "c++", "clang++")
    kind = "C" if device_type == "cuda" else "C++"
    if cxx := env.get("CXX", "").strip():
        program = cxx.split()[0]
        if shutil.which(program):
            return None
        return f"torch.compile builds with $CXX, {program!r}, which is not a program here; fix or unset CXX"
    if any(shutil.which(n) for n in names):
        return None
    return (
        f"torch.compile needs a {kind} compiler ({', '.join(names)}) and none is on PATH here; set training.compile "
        "to false, or run in an image that has one"
    )


def _needs_a_compiler(spec: JobSpec) -> list[str]:
    """training.compile needs a compiler where the job runs (the trainer image has one), which this machine may
    not have: said, not refused, as for fp16 without a GPU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.training.compile and (problem := compiler_problem(device)) is not None:
        return [f"spec.training.compile: {problem}; `run` here refuses it"]
    return []


def _needs_a_wandb_key(spec: JobSpec) -> list[str]:
    """W&B online needs a key where the job runs (a pod's env), which this machine may not have: said, not
    refused (a new-user check: validate passed silently what `run` here then refused)."""
    from .errors import SpecError
    from .wandb_sink import check_credentials

    try:
        check_credentials(spec.tracking.wandb)
    except SpecError as e:
        return [
            f"{path}: {message}; `run` here refuses it, a pod with the key in its env does not"
            for path, message in e.problems
        ]
    return []


def _check_sequences(spec: JobSpec, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The data made into sequences as `run` makes them: a batch for every process (SpecError); returns what
    `run` would warn of its training settings against them (batches.schedule_warnings)."""
    from .batches import schedule_warnings
    from .data import check_sequences, listed_twice, load_dataset, no_validation_reason, truncation_warning
    from .tokenizer import tokenizer_fingerprint

    ds = load_dataset(spec.data, tokenizer, tokenizer_fingerprint(tokenizer), spec.training.seed, cache_dir=None)
    world = spec.num_nodes * spec.processes_per_node
    check_sequences(spec, ds, world)
    no_validation = no_validation_reason(spec.data, ds)  # as `run` says it
    cut = truncation_warning(spec.data, ds)
    return (
        listed_twice(spec.data)
        + ([cut] if cut else [])
        + [f"no validation sequences, so evaluation will not run: {no_validation}"] * bool(no_validation)
        + schedule_warnings(spec.training, ds.train.rows, world)
    )


def _collect(problems: list[tuple[str, str]], check: Callable[[], T]) -> T | None:
    """check(), or None with its SpecError's problems added to `problems`."""
    try:
        return check()
    except SpecError as e:
        problems.extend(e.problems)
        return None


def _files_to_read(spec: JobSpec, field: str, files: list[str], unchecked: list[str]) -> list[str]:
    """The files to check here: all of them, except those on data.existingClaim that this machine has not."""
    claim = spec.data.existing_claim
    here = []
    for name in files:
        if claim and PurePosixPath(name).is_relative_to(DATA_DIR) and not Path(name).exists():
            unchecked.append(
                f"{field}: '{name}' is on data.existingClaim '{claim}', mounted at {DATA_DIR} in the trainer "
                "pods only; the pods check it when they start"
            )
        else:
            here.append(name)
    return here


def _unless_unreachable(load: Callable[[], T], field: str, unchecked: list[str]) -> T | None:
    """load(), or None (noted in `unchecked`) when the Hub it needs cannot be reached from here."""
    try:
        return load()
    except TransientError as e:
        why = str(e).replace(" (retryable)", "").rstrip(".")
        unchecked.append(f"{field}: {why}; the job fetches it when it starts")
        return None
