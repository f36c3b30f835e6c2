"""A local base model's identity by its contents: files replaced under the same path are another model (its
checkpoints' adapters would be applied to weights they were not trained on), and the same files moved or
mounted elsewhere are the same model.

Every file of the folder counts (weights, config, tokenizer, remote code) except documentation and hidden
files. Each file's sha256 is kept in the output directory's cache, keyed by where the file is and its size,
modification time and inode, so a resumed run hashes only what changed since: the first start reads the
weights once more, at disk speed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from .fields import HF_SOURCE
from .files import sha256_file, write_text_atomically

CACHE_FILE = "model-files.json"
NOT_THE_MODEL = ("readme", "license", "licence", "notice", "use_policy")  # names starting so: documentation


def local_model_dir(source: str) -> Path | None:
    """The folder a model.source names (None: 'scratch' or a Hub repository, identified by name)."""
    if source == "scratch" or HF_SOURCE.match(source):
        return None
    folder = Path(source).expanduser()
    return folder if folder.is_dir() else None


def model_files(folder: Path) -> list[Path]:
    """The files that make the model, sorted: symbolic links followed (a Hub cache's snapshot is links)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            lower = name.lower()
            if name.startswith(".") or lower.endswith(".md") or lower.startswith(NOT_THE_MODEL):
                continue
            found.append(Path(root) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def model_digest(source: str, cache_dir: Path | None = None) -> str:
    """sha256 over the model folder's files (relative name and contents); '' for scratch and Hub sources."""
    folder = local_model_dir(source)
    if folder is None:
        return ""
    cache = cache_dir / CACHE_FILE if cache_dir is not None else None
    known = _read(cache)
    seen: dict[str, list] = {}
    h = hashlib.sha256()
    for f in model_files(folder):
        st = f.stat()
        key = str(f.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = known.get(key)
        sha = entry[3] if isinstance(entry, list) and len(entry) == 4 and entry[:3] == stamp else sha256_file(f)
        seen[key] = [*stamp, sha]
        h.update(f"{f.relative_to(folder).as_posix()}\0{sha}\n".encode())
    if cache is not None and seen != known:
        with contextlib.suppress(OSError):  # a cache that cannot be written costs the next start a re-read
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(cache, json.dumps(seen, sort_keys=True))
    return h.hexdigest()


def _read(cache: Path | None) -> dict[str, list]:
    if cache is None:
        return {}
    try:
        found = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
