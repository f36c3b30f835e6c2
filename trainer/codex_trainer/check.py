"""`codex-train validate`: what can be checked without training, in seconds.

The callbacks named are installed; the data files exist and parse (every row has a string in
data.textField) and, tokenized, make a batch of sequences of data.maxSeqLength for every process; the tokenizer
and the model source resolve (a Hub source is looked up, its config and tokenizer fetched, no weights);
the model `run` would build (a scratch model's config completed from the tokenizer by
model.scratch_config, as `run` completes it), made on the meta device (no memory, no weights), has the
peft.targetModules and modulesToSave named, an embedding as large as the tokenizer, and positions for
data.maxSeqLength.

What cannot be checked from here is not judged: files on data.existingClaim (the volume is mounted in the
pods only) that are not here, and Hub sources when the Hub cannot be reached. check_job returns one line
for each such check; the job makes them itself when it starts. Problems raise SpecError, as `run` would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar

from .contract import DATA_DIR
from .data import read_texts
from .errors import TransientError
from .plugins import check_callbacks
from .spec import JobSpec

T = TypeVar("T")


def check_job(spec: JobSpec, warn: Callable[[str], None]) -> list[str]:
    """Check the job; SpecError for a problem. Returns what could not be checked here, one line each."""
    unchecked: list[str] = []
    check_callbacks(spec.callbacks)
    data = spec.data
    files = {"spec.data.train": data.train_files, "spec.data.validation": data.validation_files}
    readable = {field: _files_to_read(spec, field, names, unchecked) for field, names in files.items()}
    all_here = all(len(readable[field]) == len(names) for field, names in files.items())

    import torch

    from .model import _check_names, check_positions, check_vocabulary, new_model, scratch_config, source_config
    from .tokenizer import load_tokenizer

    tokenizer = _unless_unreachable(
        lambda: load_tokenizer(spec.tokenizer_source, spec.model.trust_remote_code), "spec.tokenizer", unchecked
    )
    if tokenizer is not None and all_here:  # read and made into sequences as `run` would: a batch a process?
        from .data import load_dataset, micro_batches_per_epoch, too_few_sequences
        from .tokenizer import tokenizer_fingerprint

        ds = load_dataset(data, tokenizer, tokenizer_fingerprint(tokenizer), spec.training.seed, cache_dir=None)
        world = spec.num_nodes * spec.processes_per_node
        if micro_batches_per_epoch(ds.train.rows, spec.training.batch_size, world) == 0:
            raise too_few_sequences(spec, ds, world)
    else:  # the files that are here, read and parsed
        for field, here in readable.items():
            if here:
                read_texts(here, spec.data.text_field, field)
    if spec.model.source != "scratch":
        config = _unless_unreachable(lambda: source_config(spec.model), "spec.model.source", unchecked)
    elif tokenizer is not None:
        config = scratch_config(spec.model, tokenizer)
    else:
        config = None
        unchecked.append("spec.model.config: completed from the tokenizer, which could not be fetched")
    if config is None:
        return unchecked
    with torch.device("meta"):
        model = new_model(config, spec.model)
    if tokenizer is not None:
        check_vocabulary(model, tokenizer)
    if spec.peft.method == "lora":
        if isinstance(spec.peft.peft_target_modules, list):
            _check_names(model, spec.peft.target_modules, "spec.peft.targetModules")
        _check_names(model, spec.peft.modules_to_save, "spec.peft.modulesToSave")
    check_positions(model, spec.data.max_seq_length, warn)
    return unchecked


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
