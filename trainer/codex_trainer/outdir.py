"""The output directory: checked before anything is loaded, and held by one run at a time.

Two runs writing one directory corrupt each other (one deletes the other's temporary checkpoint,
metrics.jsonl holds one run's rows). So rank 0 takes an exclusive flock on `<out>/.codex-train.lock`
and writes its pid there; a second run exits 2 naming that pid. The kernel drops the lock when its
process dies, so a lock left by a killed run is simply taken over. CODEX_LOCK_WAIT (seconds, default
0) lets a new run wait for the old one to let go, e.g. while a replaced pod is still checkpointing; held
longer than that (an earlier attempt's process on a node cut off), the run exits 1, to be retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .contract import ENV_LOCK_WAIT
from .errors import SpecError, TransientError, disk_full, is_disk_full

LOCK_FILE = ".codex-train.lock"


def prepare_output_dir(out: Path, field: str = "--output-dir") -> None:
    """Create `out` if needed and prove it writable; SpecError saying why not (a file, read-only, no permission)."""
    if out.exists() and not out.is_dir():
        raise SpecError(field, f"'{out}' is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        if is_disk_full(e):
            raise disk_full("a first file", out, 2) from None
        raise SpecError(
            field, f"cannot write to '{out}' as uid {os.getuid()}: {e.strerror or e}; choose a writable --output-dir"
        ) from None


@contextlib.contextmanager
def output_lock(out: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the directory's lock for the duration; SpecError when another live run holds it (TransientError when
    it still does after CODEX_LOCK_WAIT seconds: an earlier attempt's process, in a pod)."""
    if not enabled:
        yield
        return
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, out, lock_wait(os.environ.get(ENV_LOCK_WAIT, "")))
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing drops the flock; the file stays (deleting it would race a waiting run)


def lock_wait(raw: str) -> float:
    """CODEX_LOCK_WAIT's seconds (unset or empty: 0); SpecError naming it for anything else."""
    try:
        wait = float(raw.strip() or 0)
    except ValueError:
        wait = -1.0
    if not 0 <= wait < float("inf"):  # nan fails this too
        raise SpecError(f"env {ENV_LOCK_WAIT}", f"must be a number of seconds, 0 or more (got {raw.strip()!r})")
    return wait


def _acquire(fd: int, out: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if wait > 0 and not said:  # a pod that only waits shows why in its log, not an empty one
                print(
                    f"codex-train: waiting up to {wait:g} s for {out}: another run ({_holder(fd)}) holds it",
                    file=sys.stderr,
                    flush=True,
                )
                said = True
            if time.monotonic() >= deadline and wait > 0:
                # an attempt's pod (the operator gave it the wait): the holder is an earlier attempt's process that
                # outlived its grace period (a node that stopped answering), which ends, so this is worth a retry;
                # or another job's pod that was given the same volume, whose name the holder's host is
                raise TransientError(
                    f"another run ({_holder(fd)}) still holds {out} after {wait:g} s: an earlier attempt (its node "
                    "unreachable, or its process stopping late), or another job using the same volume "
                    "(spec.storage.existingClaim: give each job its own); exiting to be retried once it has let go"
                ) from None
            if time.monotonic() >= deadline:
                raise SpecError(
                    "",
                    f"another run ({_holder(fd)}) is using {out}; wait for it, stop it, "
                    "or give this run another --output-dir",
                ) from None
            time.sleep(0.2)


def _holder(fd: int) -> str:
    try:
        pid, _, host = os.pread(fd, 200, 0).decode().strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        return "pid unknown"
    if not pid:
        return "pid unknown"
    return f"pid {pid}" if host in ("", socket.gethostname()) else f"pid {pid} on {host}"
