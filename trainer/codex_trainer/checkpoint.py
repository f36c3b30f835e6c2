"""Checkpoints that are either complete or ignored.

A checkpoint is written into a temporary directory, MANIFEST.json (sizes and sha256 of every
file) last, every file is fsynced, and only then is the directory renamed to `step-<N>`
(files.atomic_dir). A reader accepts a checkpoint only if its manifest is there and every file matches
it, so a process killed mid-write, or a torn file after a power cut, is skipped and the
previous complete checkpoint is used instead.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .contract import CHECKPOINT_MANIFEST, STEP_DIR, STEP_DIR_PREFIX
from .errors import disk_full, is_disk_full
from .files import atomic_dir, sha256_file

MANIFEST = CHECKPOINT_MANIFEST
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
STATE = "trainer_state.json"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    state: dict[str, Any]


def save(
    root: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    state: dict[str, Any],
) -> Path:
    """Write checkpoint `step` atomically under root; return its final path.

    On any failure the temporary directory is removed; a full disk raises DiskFullError saying how much
    the checkpoint needed."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_DIR_PREFIX}{step}"
    try:
        with atomic_dir(final) as tmp:  # a rerun that reached the same step again replaces it
            _write_files(tmp, step, weights, optimizer, scheduler, state)
        with contextlib.suppress(OSError):
            _checked[_stats(final)] = None  # its hashes were taken from these very files as they were written
    except BaseException as e:
        needed = _tensor_bytes(weights) + _tensor_bytes(optimizer)
        if is_disk_full(e) or (isinstance(e, Exception) and _short_of_space(e, root, needed)):
            raise disk_full(f"checkpoint {final.name}", root, needed) from None
        raise
    return final


# torch.save's stream loses the errno of a full disk: "file write failed", or "basic_ios::clear: iostream error"
TORCH_WRITE_FAILED = ("file write failed", "basic_ios::clear", "PytorchStreamWriter failed writing")


def _short_of_space(e: Exception, root: Path, needed: int) -> bool:
    """A failure that a full disk explains, judged by the space left once the partial checkpoint is gone: less
    than the tensors need; or torch's writer failing with less than twice that (plus a margin) free, as the files
    take more than their tensors (pickled state, alignment, the filesystem's blocks)."""
    free = shutil.disk_usage(root).free
    if free < needed:
        return True
    return any(w in str(e) for w in TORCH_WRITE_FAILED) and free < 2 * needed + (64 << 20)


def _write_files(
    tmp: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """The files, then MANIFEST.json with the size and sha256 of each (atomic_dir fsyncs them all)."""
    save_file(weights, tmp / WEIGHTS)
    torch.save(optimizer, tmp / OPTIMIZER)
    torch.save(scheduler, tmp / SCHEDULER)
    (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2))
    files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in sorted(tmp.iterdir())}
    manifest = {"step": step, "saved_at": time.time(), "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a (nested) state dict: about what writing it takes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def complete(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of checkpoints whose manifest is present and whose file sizes match, oldest first.

    Cheap: hashes are checked when a checkpoint is loaded."""
    found: list[tuple[int, Path]] = []
    if not root.is_dir():
        return found
    for d in root.iterdir():
        m = STEP_DIR.match(d.name)
        if m and d.is_dir() and _sizes_match(d):
            found.append((int(m.group(1)), d))
    return sorted(found)


def load_latest(root: Path, log: Callable[[str], None] = print) -> Checkpoint | None:
    """The newest checkpoint that verifies completely; damaged ones are reported and skipped."""
    candidates = {d.name for d in root.iterdir()} if root.is_dir() else set()
    good = complete(root)
    for name in sorted(candidates - {p.name for _, p in good}):
        if STEP_DIR.match(name) or ".tmp" in name:
            log(f"ignoring {_not_complete(root / name)}")
    for step, path in reversed(good):
        problem = _verified(path, again=True)  # at a start: hash them now, whatever was known
        if problem:
            log(f"ignoring damaged checkpoint {path}: {problem}")
            continue
        return Checkpoint(
            path=path,
            step=step,
            weights=load_file(path / WEIGHTS),
            optimizer=torch.load(path / OPTIMIZER, weights_only=True, map_location="cpu"),
            scheduler=torch.load(path / SCHEDULER, weights_only=True, map_location="cpu"),
            state=json.loads((path / STATE).read_text()),
        )
    return None


# verify()'s answers by checkpoint and the size and mtime of each of its files: one this process wrote or
# already checked is not hashed again at every save's prune, and one changed since is
_checked: dict[tuple[str, tuple[tuple[str, int, int], ...]], str | None] = {}


def _stats(path: Path) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    files = []
    for f in sorted(path.iterdir()):
        st = f.stat()
        files.append((f.name, st.st_size, st.st_mtime_ns))
    return str(path), tuple(files)


def _verified(path: Path, again: bool = False) -> str | None:
    """verify(path), from _checked when the same checkpoint, unchanged, was checked before (unless `again`)."""
    try:
        key = _stats(path)
    except OSError as e:
        return f"unreadable ({e})"
    if again or key not in _checked:
        _checked[key] = verify(path)
    return _checked[key]


def _not_complete(path: Path) -> str:
    """What a checkpoint left out of complete() is: a write that was stopped, or files damaged since."""
    if ".tmp" in path.name:
        return f"incomplete checkpoint {path} (its write was stopped)"
    if not path.is_dir():
        return f"{path}: not a checkpoint directory"
    if not (path / MANIFEST).is_file():
        return f"incomplete checkpoint {path} (no {MANIFEST}: its write was stopped)"
    return f"damaged checkpoint {path}: {verify(path) or 'its files changed while it was read'}"


def verify(path: Path) -> str | None:
    """None if every file matches the manifest and the manifest's step is the one the directory is named for,
    else what is wrong."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable manifest ({e})"
    if STEP_DIR.match(path.name) and not _named_for(path, manifest):
        return (f"it holds step {manifest.get('step')} ({MANIFEST}), not the step {path.name.removeprefix('step-')} "
                "its name says: copied or renamed; rename it back to resume from it")  # fmt: skip
    for name, meta in manifest["files"].items():
        f = path / name
        try:
            if not f.is_file() or f.stat().st_size != meta["bytes"]:
                return f"{name} is missing or truncated"
            if sha256_file(f) != meta["sha256"]:
                return f"{name} does not match its checksum"
        except OSError as e:  # a bad sector (EIO): damaged, like a wrong checksum, not a crash of the run
            return f"{name} cannot be read ({e.strerror or e})"
    return None


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints that verify, and any leftover temp dirs. A damaged
    checkpoint is not one of them: a newer damaged one never pushes a good one out (load_latest reports and
    skips it); one older than the kept ones goes with them."""
    kept = 0
    for _, path in reversed(complete(root)):
        if kept >= keep_last:
            shutil.rmtree(path, ignore_errors=True)
        elif _verified(path) is None:
            kept += 1
    for d in root.iterdir() if root.is_dir() else []:
        if d.name.startswith(f".{STEP_DIR_PREFIX}") and ".tmp" in d.name:
            shutil.rmtree(d, ignore_errors=True)


def _sizes_match(path: Path) -> bool:
    """Its manifest names the step its directory is named for, and its files have the sizes it gives."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if not _named_for(path, manifest):
            return False
        return all(
            (path / n).is_file() and (path / n).stat().st_size == m["bytes"] for n, m in manifest["files"].items()
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return False


def _named_for(path: Path, manifest: dict[str, Any]) -> bool:
    """The checkpoint's directory is named for the step its manifest holds (step-N)."""
    named = STEP_DIR.match(path.name)
    return named is not None and manifest.get("step") == int(named.group(1))
