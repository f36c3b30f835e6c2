"""Training data: read files, split, tokenize, pack, cache; and the deterministic batch order.

A tokenized split is two flat arrays: `tokens` (int32) and `offsets` (int64, one more than rows),
so packed blocks and variable-length examples share one representation and one collate function.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SpecError
from .spec import DataSpec

CACHE_VERSION = 1
_FORMATS = {".jsonl": "jsonl", ".json": "json", ".txt": "txt", ".parquet": "parquet"}


@dataclass(frozen=True)
class Split:
    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True)
class Dataset:
    train: Split
    validation: Split
    cache_file: Path | None = None
    from_cache: bool = False


# ---------------------------------------------------------------- reading


def read_texts(files: list[str], text_field: str, field: str) -> list[str]:
    """Read every example's text from the given files; SpecError names `field` on a bad file."""
    texts: list[str] = []
    for name in files:
        path = Path(name)
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise SpecError(field, f"'{name}' has an unsupported extension; use one of {', '.join(_FORMATS)}")
        if not path.is_file():
            raise SpecError(field, f"file '{name}' not found (relative paths are read from {Path.cwd()})")
        got = _READERS[fmt](path, text_field)
        if not got:
            raise SpecError(field, f"'{name}' has no examples with text; it is empty")
        texts.extend(got)
    return texts


def _missing_field(path: Path, text_field: str, fields: list[str]) -> SpecError:
    return SpecError(
        "spec.data.textField",
        f"'{text_field}' is not a field of {path.name} (fields there: {', '.join(fields) or 'none'}); "
        f"set data.textField to the one holding the text",
    )


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecError("spec.data", f"{path.name} line {n} is not JSON: {e.msg}") from None
            out.append(_text_of(row, path, text_field))
    return [t for t in out if t]


def _read_json(path: Path, text_field: str) -> list[str]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpecError("spec.data", f"{path.name} is not JSON: {e.msg}") from None
    if not isinstance(rows, list):
        raise SpecError("spec.data", f"{path.name} must hold a JSON list of objects")
    return [t for t in (_text_of(r, path, text_field) for r in rows) if t]


def _text_of(row: object, path: Path, text_field: str) -> str:
    if not isinstance(row, dict):
        raise SpecError("spec.data", f"{path.name}: each example must be a JSON object with '{text_field}'")
    if text_field not in row:
        raise _missing_field(path, text_field, list(row))
    value = row[text_field]
    return value if isinstance(value, str) else str(value)


def _read_txt(path: Path, text_field: str) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _read_parquet(path: Path, text_field: str) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if text_field not in table.column_names:
        raise _missing_field(path, text_field, table.column_names)
    return [t for t in table.column(text_field).to_pylist() if t]


_READERS = {"jsonl": _read_jsonl, "json": _read_json, "txt": _read_txt, "parquet": _read_parquet}


# ---------------------------------------------------------------- split, tokenize, pack


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed (train, validation) split of n examples for a given seed."""
    if fraction <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def tokenize(texts: list[str], tokenizer, eos_id: int, batch: int = 1000) -> list[np.ndarray]:
    out = []
    for i in range(0, len(texts), batch):
        ids = tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"]
        out.extend(np.asarray([*x, eos_id], dtype=np.int32) for x in ids)
    return out


def pack(docs: list[np.ndarray], length: int) -> Split:
    """Concatenate documents and cut full blocks of `length`; the tail shorter than a block is dropped."""
    flat = np.concatenate(docs) if docs else np.zeros(0, np.int32)
    n = len(flat) // length
    return Split(flat[: n * length].copy(), np.arange(n + 1, dtype=np.int64) * length)


def truncate(docs: list[np.ndarray], length: int) -> Split:
    docs = [d[:length] for d in docs]
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    return Split(np.concatenate(docs) if docs else np.zeros(0, np.int32), offsets)


# ---------------------------------------------------------------- the whole pipeline, cached


def cache_key(spec: DataSpec, seed: int, tokenizer_fp: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, spec.model_dump(mode="json"), seed, tokenizer_fp], sort_keys=True).encode())
    for name in spec.train_files + spec.validation_files:
        h.update(name.encode())
        h.update(_file_digest(Path(name)))
    return h.hexdigest()[:20]


def _file_digest(path: Path) -> bytes:
    if not path.is_file():
        return b"missing"
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def load_dataset(spec: DataSpec, tokenizer, tokenizer_fp: str, seed: int, cache_dir: Path | None) -> Dataset:
    """Read, split, tokenize and pack; reuse the cache when data, tokenizer and settings are unchanged."""
    cache_file = None
    if cache_dir is not None:
        cache_file = cache_dir / f"tokens-{cache_key(spec, seed, tokenizer_fp)}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as z:
                return Dataset(
                    Split(z["train_tokens"], z["train_offsets"]),
                    Split(z["val_tokens"], z["val_offsets"]),
                    cache_file,
                    from_cache=True,
                )

    texts = read_texts(spec.train_files, spec.text_field, "spec.data.train")
    if spec.validation_files:
        train_texts = texts
        val_texts = read_texts(spec.validation_files, spec.text_field, "spec.data.validation")
    else:
        tr, va = split_indices(len(texts), spec.validation_fraction, seed)
        train_texts, val_texts = [texts[i] for i in tr], [texts[i] for i in va]

    eos = tokenizer.eos_token_id
    shape = pack if spec.packing else truncate
    train_docs = tokenize(train_texts, tokenizer, eos)
    train = shape(train_docs, spec.max_seq_length)
    val = shape(tokenize(val_texts, tokenizer, eos), spec.max_seq_length)
    if train.rows == 0:
        n_tokens = sum(len(d) for d in train_docs)
        raise SpecError(
            "spec.data.maxSeqLength",
            f"the training data makes {n_tokens} tokens, fewer than one sequence of "
            f"{spec.max_seq_length}; lower maxSeqLength or add data",
        )

    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            train_tokens=train.tokens,
            train_offsets=train.offsets,
            val_tokens=val.tokens,
            val_offsets=val.offsets,
        )
        os.replace(tmp, cache_file)
    return Dataset(train, val, cache_file, from_cache=False)


# ---------------------------------------------------------------- batch order


def micro_batches_per_epoch(rows: int, per_rank: int, world: int) -> int:
    return rows // (per_rank * world)


def micro_batch_rows(rows: int, per_rank: int, world: int, rank: int, seed: int, index: int) -> np.ndarray:
    """Rows for global micro-step `index` on `rank`: a fresh seeded shuffle every epoch.

    A pure function of its arguments, so a resumed run continues with exactly the batches an
    uninterrupted run would have seen, without replaying the data.
    """
    per_epoch = micro_batches_per_epoch(rows, per_rank, world)
    epoch, k = divmod(index, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(rows)
    start = (k * world + rank) * per_rank
    return perm[start : start + per_rank]


def collate(split: Split, rows: np.ndarray, pad_id: int):
    """input_ids / attention_mask / labels tensors, right-padded to the longest row."""
    import torch

    seqs = [split.row(int(i)) for i in rows]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = s
        mask[j, : len(s)] = 1
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    labels = ids_t.masked_fill(mask_t == 0, -100)
    return {"input_ids": ids_t, "attention_mask": mask_t, "labels": labels}
