"""Training data: read files, split, tokenize, pack, cache; and the deterministic batch order.

A tokenized split is two flat arrays: `tokens` (int32) and `offsets` (int64, one more than rows),
so packed blocks and variable-length examples share one representation and one collate function.
A packed split also keeps where each document starts (`starts`), so that a document in a block
attends to itself alone: its position ids restart at 0 and no label asks it to predict the next
document's first token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError, SpecError, disk_full, is_disk_full, not_found
from .files import atomic_file, sha256_file
from .plugins import READERS, reader_extensions, reader_for
from .spec import LISTED_TWICE, VALIDATION_IS_TRAINING, DataSpec, JobSpec

if TYPE_CHECKING:  # imported when needed: reading and packing the data needs neither
    from transformers import PreTrainedTokenizerBase

CACHE_VERSION = 4  # 4: the cache holds what truncation cut (Dataset.cut) and the tokens' digest
# How packed blocks are built; part of the cache key and of a packed run's identity (runinfo), so a
# checkpoint trained the earlier way (documents attending to those before them in the block) is never
# resumed under this one.
PACKING_SCHEME = "documents"


@dataclass(frozen=True)
class Split:
    tokens: np.ndarray
    offsets: np.ndarray
    # packed splits: the sorted indices into `tokens` where documents start (0 first); None: a row is a document
    starts: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True)
class Dataset:
    train: Split
    validation: Split
    from_cache: bool = False
    digest: str = ""  # data_digest(): the data files' contents
    examples: tuple[int, int] = (0, 0)  # examples (texts) in the train and validation splits
    # data.packing false: training examples longer than maxSeqLength, the tokens cut from them and the tokens
    # before the cut (what the run never trains on); then the same of the validation examples
    cut: tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)
    tokens_sha256: str = ""  # the training split's tokens and rows: what the tokenizer made of the data


def tokens_digest(split: Split) -> str:
    """sha256 of a split's tokens and row boundaries (runinfo.resume_identity's `tokens`)."""
    h = hashlib.sha256()
    for a in (split.tokens, split.offsets):
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


# ---------------------------------------------------------------- reading


def read_texts(files: list[str], text_field: str, field: str) -> list[str]:
    """Read every example's text from the given files; SpecError names `field`, the file and the line of a bad row.

    The reader comes from the file's extension (codex_trainer.plugins: the built-in ones and any installed
    through the codex_trainer.readers entry points). Every value of `text_field` must be a string: null,
    numbers and booleans are refused, not trained as their spelling. Empty strings are skipped. Every file is
    read: the SpecError names each bad one."""
    texts: list[str] = []
    problems: list[tuple[str, str]] = []
    for name in files:
        try:
            texts.extend(_read_file(name, text_field, field))
        except SpecError as e:
            problems.extend(e.problems)
    if problems:
        raise SpecError(problems)
    return texts


def _read_file(name: str, text_field: str, field: str) -> list[str]:
    path = Path(name)
    if path.is_dir():  # said as such, not as a name without a known extension
        check_data_path(name, field)
    found = reader_for(path.suffix, field)
    if found is None:
        raise SpecError(
            field,
            f"'{name}' has an unsupported extension; readers are installed for {', '.join(reader_extensions())} "
            f"(add one through the {READERS} entry points)",
        )
    check_data_path(name, field)
    got = _read_with(found, path, text_field, field)
    texts = [t for t in got if t]
    if not got:
        raise SpecError(field, f"'{name}' has no examples with text; it is empty")
    if not texts:
        rows = f"all {len(got)} rows" if len(got) > 1 else "its one row"
        raise SpecError(field, f"'{name}' has no examples with text: '{text_field}' is empty in {rows}; give them text")
    return texts


def _read_with(found: tuple, path: Path, text_field: str, field: str) -> list[str]:
    """Call a reader: DataError, or any exception of a plugin's reader (the file is what differs from a run that
    worked: a deterministic failure a retry does not cure), becomes a SpecError under `field`; a plugin's texts
    are checked to be strings."""
    reader, origin = found
    try:
        got = list(reader(path, text_field))
    except DataError as e:
        raise SpecError(field, str(e)) from None
    except SpecError:  # a reader's own words, naming its field (the built-in ones: textField)
        raise
    except ValueError as e:
        raise SpecError(field, f"'{path}' could not be read by {origin}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a plugin's reader failing on this file (a column it expects, say)
        said = " ".join(str(e).split())[:200]
        raise SpecError(field, f"'{path}' could not be read by {origin}: {type(e).__name__}: {said}") from None
    for i, text in enumerate(got):
        if not isinstance(text, str):
            raise SpecError(field, f"'{path}': {origin} returned {type(text).__name__} for example {i}, not a string")
    return got


def check_data_path(name: str, field: str) -> None:
    """The path names a readable regular file: SpecError saying what it is instead."""
    path = Path(name)
    if path.is_dir():
        raise SpecError(field, f"'{name}' is a directory; name the data files in it")
    if not path.exists():
        raise SpecError(field, not_found(name))
    if not path.is_file():  # read more than once (its digest, its rows): a pipe would be empty the second time
        raise SpecError(field, f"'{name}' is not a regular file (a pipe or a device); save its contents to a file")
    if not os.access(path, os.R_OK):
        raise SpecError(field, f"'{name}' is not readable by uid {os.getuid()}")


def _missing_field(path: Path, where: str, text_field: str, fields: list[str]) -> SpecError:
    """`where`: the row ("line 6"), or "" for a file of columns (parquet)."""
    row = f" {where}" if where else ""
    give = f", or give that row '{text_field}'" if where else ""
    return SpecError(
        "spec.data.textField",
        f"'{text_field}' is not a field of '{path}'{row} (fields there: {', '.join(fields) or 'none'}); "
        f"name the field that holds the text{' in every row' if where else ''} (data.textField; --text-field "
        f"for codex-train eval){give}",
    )


def _decode(path: Path) -> str:
    """The whole file as UTF-8 (a leading byte-order mark dropped); a file that is not is refused with the byte
    offset and line of the first bad byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")  # the byte-order mark some editors put first
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"'{path}' is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} (line {line}) "
            f"{e.reason}; convert the file to UTF-8 (e.g. iconv -t UTF-8)",
        ) from None


def read_jsonl(path: Path, text_field: str) -> list[str]:
    out = []
    for n, line in enumerate(_lines(_decode(path)), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"'{path}' line {n} is not JSON: {e.msg} (column {e.colno})") from None
        out.append(_text_of(row, path, f"line {n}", text_field))
    return out  # empty texts too: read_texts skips them, and says so when a file holds nothing else


def read_json(path: Path, text_field: str) -> list[str]:
    try:
        rows = json.loads(_decode(path))
    except json.JSONDecodeError as e:
        # one object per line, after the first line: JSON Lines under the wrong name
        lines = e.msg == "Extra data" and e.lineno > 1
        hint = "; it holds one JSON object per line: name it .jsonl" if lines else ""
        raise DataError(f"'{path}' is not JSON: {e.msg} (line {e.lineno}, column {e.colno}){hint}") from None
    if not isinstance(rows, list):
        raise DataError(f"'{path}' must hold a JSON list of objects")
    # counted from 1, as lines are, and the index beside it for code that reads the list
    return [_text_of(r, path, f"item {i + 1} (index {i})", text_field) for i, r in enumerate(rows)]


def _text_of(row: object, path: Path, where: str, text_field: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"'{path}' {where}: each example must be a JSON object with '{text_field}'")
    if text_field not in row:
        raise _missing_field(path, where, text_field, list(row))
    return _checked_text(row[text_field], path, where, text_field)


def _checked_text(value: object, path: Path, where: str, text_field: str) -> str:
    """A string that encodes as UTF-8; anything else (null, a number, a lone surrogate) is refused."""
    if not isinstance(value, str):
        got = "null" if value is None else f"{type(value).__name__} {json.dumps(value)[:40]}"
        raise DataError(f"'{path}' {where}: field '{text_field}' is {got}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            f"'{path}' {where}: field '{text_field}' holds a lone surrogate (\\u{ord(value[e.start]):04x})"
        ) from None
    return value


def read_txt(path: Path, text_field: str) -> list[str]:
    return [line for line in _lines(_decode(path)) if line.strip()]


def _lines(text: str) -> list[str]:
    """Lines as Python's text mode splits them (\\n, \\r\\n, \\r); not str.splitlines, which also splits at
    U+2028 and other characters that may sit inside a JSON string."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_parquet(path: Path, text_field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"'{path}' is not a readable parquet file: {str(e).splitlines()[0]}") from None
    if text_field not in table.column_names:
        raise _missing_field(path, "", text_field, table.column_names)
    column = table.column(text_field)
    if pa.types.is_dictionary(column.type) and _is_text(column.type.value_type):  # a pandas categorical column
        column = column.cast(column.type.value_type)
    if not _is_text(column.type):
        raise DataError(f"'{path}': column '{text_field}' holds {column.type}, not strings")
    values = column.to_pylist()
    for i, v in enumerate(values):
        if v is None:
            raise DataError(f"'{path}' row {i + 1} (index {i}): column '{text_field}' is null, not a string")
    return values


def _is_text(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


# ---------------------------------------------------------------- split, tokenize, pack


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed (train, validation) split of n examples for a given seed."""
    if fraction <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def tokenize(texts: list[str], tokenizer: PreTrainedTokenizerBase, eos_id: int, batch: int = 1000) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for i in range(0, len(texts), batch):
        ids = tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"]
        out.extend(np.asarray([*x, eos_id], dtype=np.int32) for x in ids)
    return out


def pack(docs: list[np.ndarray], length: int) -> Split:
    """Concatenate documents and cut full blocks of `length`; the tail shorter than a block is dropped.

    Where each document starts is kept (`Split.starts`): collate restarts positions there."""
    flat = np.concatenate(docs) if docs else np.zeros(0, np.int32)
    n = len(flat) // length
    starts = np.zeros(len(docs), dtype=np.int64)
    np.cumsum([len(d) for d in docs[:-1]], out=starts[1:])
    return Split(flat[: n * length].copy(), np.arange(n + 1, dtype=np.int64) * length, starts[starts < n * length])


def truncate(docs: list[np.ndarray], length: int) -> Split:
    """One row per document, each cut to `length` tokens (what is cut is never trained on: `cut_by`)."""
    docs = [d[:length] for d in docs]
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    return Split(np.concatenate(docs) if docs else np.zeros(0, np.int32), offsets)


def cut_by(docs: list[np.ndarray], length: int) -> tuple[int, int, int]:
    """(documents longer than `length`, tokens `truncate` cuts from them, tokens in all the documents)."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    over = lengths[lengths > length]
    return int(len(over)), int((over - length).sum()), int(lengths.sum())


def truncation_warning(spec: DataSpec, data: Dataset) -> str | None:
    """What data.packing false cut from the examples, said once at the start (None: nothing)."""
    examples, cut, total, val_examples, val_cut, val_total = data.cut
    if not examples and not val_examples:
        return None
    said = []
    if examples:
        said.append(
            f"{counted(examples, 'training example')} of {data.examples[0]} ({_share(examples, data.examples[0])}) "
            f"are longer than data.maxSeqLength {spec.max_seq_length} with their end-of-text token and are cut to "
            f"it (data.packing is false): {counted(cut, 'token')} ({_share(cut, total)} of the training tokens) "
            "are never trained on"
        )
    if val_examples:
        cut_too = "are cut too" if examples else f"are longer than data.maxSeqLength {spec.max_seq_length} and cut"
        said.append(
            f"{val_examples} of {data.examples[1]} validation examples {cut_too} ({_share(val_cut, val_total)} "
            "of their tokens), and evaluated cut" + ("" if examples else " (data.packing is false)")
        )
    fix = "raise maxSeqLength, or set data.packing: true (a long example then continues in the next sequences)"
    return "; ".join(said) + f"; {fix}"


def _share(part: int, whole: int) -> str:
    pct = 100 * part / max(whole, 1)
    return f"{pct:.0f}%" if pct >= 1 else "under 1%"


# ---------------------------------------------------------------- the whole pipeline, cached


def data_digest(spec: DataSpec) -> str:
    """sha256 of the data files' contents, train then validation, in order: the data's identity.

    A path is not part of it: the same file named relatively or absolutely, or mounted elsewhere, is the
    same data, and a file overwritten with other rows is other data."""
    h = hashlib.sha256()
    for role, names in (("train", spec.train_files), ("validation", spec.validation_files)):
        h.update(f"{role}:{len(names)}".encode())
        for name in names:
            h.update(_file_digest(Path(name)))
    return h.hexdigest()


def cache_key(spec: DataSpec, seed: int, tokenizer_fp: str, digest: str | None = None) -> str:
    settings = spec.model_dump(mode="json", exclude={"train", "validation", "existing_claim"})
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, PACKING_SCHEME, settings, seed, tokenizer_fp], sort_keys=True).encode())
    h.update((digest or data_digest(spec)).encode())
    return h.hexdigest()[:20]


def _file_digest(path: Path) -> bytes:
    if not path.is_file():
        return b"missing"
    return bytes.fromhex(sha256_file(path))


def load_dataset(
    spec: DataSpec,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_fp: str,
    seed: int,
    cache_dir: Path | None,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """Read, split, tokenize and pack; reuse the cache when data, tokenizer and settings are unchanged.

    A cache file that does not verify (torn, truncated, altered) is reported through `log` and rebuilt."""
    check_validation_is_not_training(spec)
    if log is not None:
        for line in listed_twice(spec):
            log(line)
    digest = data_digest(spec)
    cache_file = None
    if cache_dir is not None:
        cache_file = cache_dir / f"tokens-{cache_key(spec, seed, tokenizer_fp, digest)}.npz"
        if cache_file.is_file():
            cached = _read_cache(cache_file, digest, log)
            if cached is not None:
                return cached

    texts, given = read_splits(spec)
    if spec.validation_files:
        train_texts, val_texts = texts, given
    else:
        tr, va = split_indices(len(texts), spec.validation_fraction, seed)
        train_texts, val_texts = [texts[i] for i in tr], [texts[i] for i in va]

    eos = tokenizer.eos_token_id
    shape = pack if spec.packing else truncate
    train_docs = tokenize(train_texts, tokenizer, eos)
    val_docs = tokenize(val_texts, tokenizer, eos)
    train = shape(train_docs, spec.max_seq_length)
    val = shape(val_docs, spec.max_seq_length)
    if train.rows == 0:
        raise _no_training_sequence(spec, sum(map(len, train_docs)), sum(map(len, val_docs)), len(val_texts))

    examples = (len(train_texts), len(val_texts))
    length = spec.max_seq_length
    cut = (0,) * 6 if spec.packing else (*cut_by(train_docs, length), *cut_by(val_docs, length))
    tokens = tokens_digest(train)
    if cache_file is not None:
        _write_cache(cache_file, train, val, examples, cut, tokens, log)
    return Dataset(train, val, from_cache=False, digest=digest, examples=examples, cut=cut, tokens_sha256=tokens)


def check_validation_is_not_training(spec: DataSpec) -> None:
    """No validation file is a training file under another name (./a.jsonl, a link): the manifest's check, like
    the API server's, compares names only."""
    why = VALIDATION_IS_TRAINING.removeprefix("is also a training file: ")
    problems = []
    for name in spec.validation_files:
        train = next((t for t in spec.train_files if _same_file(name, t)), None)
        if train is not None:
            problems.append(
                ("spec.data.validation", f"'{name}' is the training file '{train}' under another name: {why}")
            )
    if problems:
        raise SpecError(problems)


def listed_twice(spec: DataSpec) -> list[str]:
    """A warning for each file a list names twice, under one name or two (a.jsonl, ./a.jsonl, a link): not
    refused, as jobs and runs made before this warning must still load."""
    out = []
    for field, files in (("spec.data.train", spec.train_files), ("spec.data.validation", spec.validation_files)):
        for i, name in enumerate(files):
            twin = next((other for other in files[:i] if other == name or _same_file(name, other)), None)
            if twin is not None:
                also = "" if twin == name else f" (as '{twin}')"
                out.append(f"{field}: '{name}'{also} {LISTED_TWICE}")
    return out


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # a file that is not there: reading it says so
        return False


def read_splits(spec: DataSpec) -> tuple[list[str], list[str]]:
    """The texts of data.train and of data.validation (none when it is not given); the SpecError names every
    bad file of both."""
    out: list[list[str]] = []
    problems: list[tuple[str, str]] = []
    for field, files in (("spec.data.train", spec.train_files), ("spec.data.validation", spec.validation_files)):
        try:
            out.append(read_texts(files, spec.text_field, field))
        except SpecError as e:
            problems.extend(e.problems)
    if problems:
        raise SpecError(problems)
    return out[0], out[1]


def counted(n: int, noun: str) -> str:
    """'1 example', '2 examples', '2 processes'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def _examples(n: int) -> str:
    return counted(n, "example")


def _no_training_sequence(spec: DataSpec, train_tokens: int, val_tokens: int, held_out: int) -> SpecError:
    if not spec.validation_files and held_out and train_tokens + val_tokens >= spec.max_seq_length:
        return SpecError(
            "spec.data.validationFraction",
            f"{spec.validation_fraction} holds out {_examples(held_out)} for validation, leaving {train_tokens} "
            f"training tokens, fewer than one sequence of maxSeqLength {spec.max_seq_length}; lower "
            "validationFraction or add data",
        )
    return SpecError(
        "spec.data.maxSeqLength",
        f"the training data makes {train_tokens} tokens, fewer than one sequence of "
        f"{spec.max_seq_length}; lower maxSeqLength or add data",
    )


def too_few_sequences(spec: JobSpec, data: Dataset, world: int) -> SpecError:
    t, d = spec.training, spec.data
    need = t.batch_size * world
    if not d.validation_files and d.validation_fraction > 0 and data.train.rows + data.validation.rows >= need:
        return SpecError(
            "spec.data.validationFraction",
            f"{d.validation_fraction} holds out {_examples(data.examples[1])} for validation, leaving "
            f"{counted(data.train.rows, 'training sequence')}, fewer than batchSize × processes = {need}; lower "
            "validationFraction or batchSize, or add data",
        )
    return SpecError(
        "spec.training.batchSize",
        f"the training data makes {counted(data.train.rows, 'sequence')}, fewer than batchSize × processes "
        f"= {need}; lower batchSize or maxSeqLength, or add data",
    )


def check_sequences(spec: JobSpec, data: Dataset, world: int) -> None:
    """The sequences make a batch for every process, and data.validation, when given, makes one sequence at
    least (it asks for evaluation): SpecError naming each that does not. `validate` and `run` both call it."""
    problems: list[tuple[str, str]] = []
    if micro_batches_per_epoch(data.train.rows, spec.training.batch_size, world) == 0:
        problems.extend(too_few_sequences(spec, data, world).problems)
    d = spec.data
    if d.validation_files and data.validation.rows == 0:
        n = data.examples[1]
        problems.append(
            (
                "spec.data.validation",
                f"the validation data ({n} example{'s' if n != 1 else ''}) is shorter than one sequence of "
                f"maxSeqLength {d.max_seq_length}, so there would be no evaluation; add validation data, lower "
                "maxSeqLength, or remove data.validation to hold out validationFraction of the training data instead",
            )
        )
    if problems:
        raise SpecError(problems)


def no_validation_reason(spec: DataSpec, data: Dataset) -> str | None:
    """Why the validation split is empty (so evaluation never runs), or None when it is not."""
    if data.validation.rows > 0:
        return None
    if spec.validation_files:
        return f"data.validation makes no sequence of maxSeqLength {spec.max_seq_length}"
    if spec.validation_fraction == 0:
        return "validationFraction is 0 and there is no data.validation"
    return (
        f"validationFraction {spec.validation_fraction} holds out {_examples(data.examples[1])}, too few for one "
        f"sequence of maxSeqLength {spec.max_seq_length}; raise validationFraction or give data.validation"
    )


def _read_cache(path: Path, digest: str, log: Callable[[str], None] | None) -> Dataset | None:
    """The cached dataset if the file verifies (zip CRCs, every array present and consistent), else None."""
    try:
        with np.load(path) as z:
            packed = "train_starts" in z
            train = Split(z["train_tokens"], z["train_offsets"], z["train_starts"] if packed else None)
            val = Split(z["val_tokens"], z["val_offsets"], z["val_starts"] if packed else None)
            n_train, n_val = (int(x) for x in z["examples"])
            cut = tuple(int(x) for x in z["cut"])
            tokens = str(z["tokens_sha256"])
            if len(cut) != 6:
                raise ValueError("the truncation counts are not those of this version")
        for split in (train, val):
            offs = split.offsets
            if len(offs) < 1 or offs[0] != 0 or offs[-1] != len(split.tokens) or np.any(np.diff(offs) < 0):
                raise ValueError("offsets do not match the tokens")
            starts = split.starts
            if starts is not None and len(split.tokens) and (len(starts) == 0 or starts[0] != 0):
                raise ValueError("document starts do not match the tokens")
            if starts is not None and (np.any(np.diff(starts) <= 0) or np.any(starts >= max(len(split.tokens), 1))):
                raise ValueError("document starts do not match the tokens")
    except Exception as e:  # a torn zip raises BadZipFile, EOFError, OSError, ValueError, KeyError ...
        if log is not None:
            log(f"ignoring damaged tokenized cache {path} ({type(e).__name__}: {str(e)[:100]}); tokenizing again")
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return Dataset(train, val, from_cache=True, digest=digest, examples=(n_train, n_val), cut=cut, tokens_sha256=tokens)


def _write_cache(
    cache_file: Path,
    train: Split,
    val: Split,
    examples: tuple[int, int],
    cut: tuple[int, ...],
    tokens: str,
    log: Callable[[str], None] | None,
) -> None:
    arrays = {
        "train_tokens": train.tokens,
        "train_offsets": train.offsets,
        "val_tokens": val.tokens,
        "val_offsets": val.offsets,
        "examples": np.asarray(examples, dtype=np.int64),
        "cut": np.asarray(cut, dtype=np.int64),
        "tokens_sha256": np.asarray(tokens),
    }
    if train.starts is not None and val.starts is not None:
        arrays |= {"train_starts": train.starts, "val_starts": val.starts}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache_file) as tmp:
            np.savez(tmp, allow_pickle=False, **arrays)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(
                "the tokenized data cache", cache_file.parent, sum(a.nbytes for a in arrays.values())
            ) from None
        if log is not None:  # the cache saves the next start some time; a run can go on without it
            log(f"the tokenized data is not cached: {cache_file.parent} cannot be written ({e.strerror or e})")


# ---------------------------------------------------------------- batch order


def micro_batches_per_epoch(rows: int, per_rank: int, world: int) -> int:
    return rows // (per_rank * world)
