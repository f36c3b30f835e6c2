"""Writing files and directories so that a reader sees the old one or the new one, never half of either.

Both helpers write beside the target under a temporary name, fsync what was written, rename it over the
target and fsync the parent directory; on any failure the temporary file or directory is removed and
the target is left as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _file_mode() -> int:
    """0o666 less the umask, read without setting it (os.umask would change it for every thread a moment)."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = 0o022
    return 0o666 & ~mask


_FILE_MODE = _file_mode()  # what open() gives a new file under this process's umask


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it replaces `target`. One already
    there is swapped with the new one in one step (renameat2's RENAME_EXCHANGE), or where the filesystem
    cannot, renamed aside just before the new one is renamed in; it is removed only once the new one is in
    place, so a writer stopped at any moment leaves the old directory or the new one whole at `target`.
    What a stopped writer left beside it is removed by the next write."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    aside = target.with_name(f".{target.name}.old{os.getpid()}")
    _remove_leftovers(target)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o777 == 0o600:
                # safetensors writes its files 0600: others sharing the volume could not load them
                with contextlib.suppress(OSError):  # a mount that refuses chmod keeps what it gave
                    f.chmod(_FILE_MODE)
            fsync(f)
        fsync(tmp)
        if not target.exists():
            os.replace(tmp, target)
        elif not _exchange(tmp, target):  # tmp now holds the old one
            os.replace(target, aside)
            os.replace(tmp, target)
        fsync(target.parent)
    except BaseException:
        if aside.exists() and not target.exists():
            os.replace(aside, target)  # stopped between the two renames: the old one goes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def _remove_leftovers(target: Path) -> None:
    """The temporary and set-aside directories of an earlier write to `target` that was stopped."""
    if not target.parent.is_dir():
        return
    prefixes = (f".{target.name}.tmp", f".{target.name}.old")
    for p in target.parent.iterdir():
        if p.name.startswith(prefixes) and p.name[len(prefixes[0]) :].isdigit():
            shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where the C library or the
    filesystem cannot (the caller then renames one aside)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target` (with its suffix) to write; on success it replaces `target`."""
    tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}{target.suffix}")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, target)
        fsync(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomically(target: Path, text: str) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync(path: Path) -> None:
    """Flush a file's or a directory's contents (a directory's: its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
