"""A local base model's identity by its contents: weights replaced under the same path are another model (its
checkpoints' adapters would be applied to weights they were not trained on), and the same files moved or
mounted elsewhere are the same model.

What counts is what makes the model: its weight files, its config.json (as JSON: indentation and key order
do not count) and its Python files (remote code). Its tokenizer counts through the tokens it makes of the
data (runinfo.resume_identity); notes, licences and anything else in the folder do not. Each file's sha256
is kept in the output directory's cache, keyed by where the file is and its size, modification time and
inode, so a resumed run hashes only what changed since: the first start reads the weights once more, at
disk speed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path

from .errors import SpecError
from .fields import HF_SOURCE
from .files import sha256_file, write_text_atomically

CACHE_FILE = "model-files.json"
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
MISSING = "missing"  # a link to nothing (a Hub snapshot half downloaded): from_pretrained says so if it needs it


def local_model_dir(source: str) -> Path | None:
    """The folder a model.source names (None: 'scratch' or a Hub repository, identified by name)."""
    if source == "scratch" or HF_SOURCE.match(source):
        return None
    folder = Path(source).expanduser()
    return folder if folder.is_dir() else None


def counts(name: str) -> bool:
    return name == "config.json" or name.endswith((*WEIGHTS, ".py"))


def model_files(folder: Path) -> list[Path]:
    """The files that make the model, sorted: links followed (a Hub cache's snapshot is links), each folder
    once (a link back up the tree is not walked again), hidden ones left out."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = os.stat(root)
        if (here.st_dev, here.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((here.st_dev, here.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / name for name in files if not name.startswith(".") and counts(name)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def model_digests(source: str, cache_dir: Path | None = None) -> dict[str, str]:
    """{relative name: sha256} of the model folder's files ({} for scratch and Hub sources). SpecError for a
    file the trainer may not read."""
    folder = local_model_dir(source)
    if folder is None:
        return {}
    cache = cache_dir / CACHE_FILE if cache_dir is not None else None
    known = _read(cache)
    seen: dict[str, list] = {}
    out = {}
    for f in model_files(folder):
        name = f.relative_to(folder).as_posix()
        try:
            st = f.stat()
        except FileNotFoundError:
            out[name] = MISSING
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # a pipe or a device named like a weight file: nothing from_pretrained reads
        key, stamp = str(f.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = known.get(key)
        try:
            sha = entry[3] if isinstance(entry, list) and len(entry) == 4 and entry[:3] == stamp else _digest(f)
        except PermissionError:
            raise SpecError(
                "spec.model.source",
                f"'{f}' in the model folder cannot be read by the trainer: make it readable, or move it out of "
                "the folder",
            ) from None
        seen[key] = [*stamp, sha]
        out[name] = sha
    if cache is not None and seen != known:
        with contextlib.suppress(OSError):  # a cache that cannot be written costs the next start a re-read
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(cache, json.dumps(seen, sort_keys=True))
    return out


def changed_files(saved: dict[str, str], now: dict[str, str]) -> str:
    """'changed: a, b; new: c; gone: d' between two model_digests."""
    parts = [
        (what, sorted(names))
        for what, names in (
            ("changed", [n for n in now if n in saved and saved[n] != now[n]]),
            ("new", [n for n in now if n not in saved]),
            ("gone", [n for n in saved if n not in now]),
        )
        if names
    ]
    return "; ".join(f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}" for what, names in parts)


def _digest(f: Path) -> str:
    if f.name == "config.json":
        try:  # as JSON: a config saved again with other indentation or key order is the same config
            text = json.dumps(json.loads(f.read_text(encoding="utf-8")), sort_keys=True)
            return hashlib.sha256(text.encode()).hexdigest()
        except (UnicodeDecodeError, ValueError):
            pass  # not JSON: its bytes count, as any other file's
    return sha256_file(f)


def _read(cache: Path | None) -> dict[str, list]:
    if cache is None:
        return {}
    try:
        found = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
