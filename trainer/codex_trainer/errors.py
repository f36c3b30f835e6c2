"""Errors a user can fix: a bad spec or bad data. The CLI prints them and exits with code 2.

Also the exit message a pod leaves for the operator (its termination message)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from .contract import ENV_TERMINATION_LOG, ENV_WORKER_MESSAGES, TERMINATION_MESSAGE_LIMIT


class SpecError(Exception):
    """An invalid spec or data. `problems` is a list of (field path, message)."""

    def __init__(self, problems: list[tuple[str, str]] | str, message: str | None = None):
        if isinstance(problems, str):
            problems = [(problems, message or "")]
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(f"{path}: {msg}" if path else msg for path, msg in self.problems)


class FieldValueError(ValueError):
    """A check of a whole model that is a problem of one of its fields (`field`, relative to the model): the
    message names that field, not the model (spec.metrics.port, not spec)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class DataError(ValueError):
    """A data file a reader cannot use; the message names the file and where in it. The loader reports it
    under the spec field that named the file (exit 2). Readers, plugins' included, raise it (or ValueError)."""


class TransientError(Exception):
    """Something outside the spec failed (the network, say): worth a retry, not a traceback."""


class DiskFullError(TransientError):
    """No space left while writing. Retryable: nothing half-written is left, and the next run resumes from the
    last complete checkpoint once there is room."""


# how libraries that do not raise OSError say it: safetensors (its Rust io error), SQLite (MLflow's database)
_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "database or disk is full")


def is_disk_full(e: BaseException) -> bool:
    """A full disk (or quota), as an OSError or as a library's own exception, or as the cause of either."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(w in str(cur) for w in _FULL_WORDS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def disk_full(what: str, where: Path, needed: int) -> DiskFullError:
    """The one line for a full disk: what was being written, where, how much it needed and how much is free."""
    probe = Path(where)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{_mib(shutil.disk_usage(probe).free)} free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        f"disk full: writing {what} in {where} needed about {_mib(needed)} ({free}); "
        "free space there or give the volume more (spec.storage.size)"
    )


def _mib(n: int) -> str:
    """A size as a person reads it: KiB below 1 MiB (where 0.2 MiB needed and 0.2 MiB free could read alike)."""
    if n < 2**10:
        return f"{n} bytes"
    return f"{n / 2**10:.0f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


# ---- the termination message: what the operator shows in the job's status.message


def write_termination_message(text: str) -> None:
    """Write the exit message where whoever started us reads it; never fails the exit itself.

    A worker of `codex-train launch` writes `<dir>/rank-<RANK>` for the launcher to pick up; a
    process on its own writes the file named by CODEX_TERMINATION_LOG, if any."""
    worker_dir = os.environ.get(ENV_WORKER_MESSAGES)
    if worker_dir:
        target = Path(worker_dir) / f"rank-{os.environ.get('RANK', '0')}"
    elif os.environ.get(ENV_TERMINATION_LOG):
        target = Path(os.environ[ENV_TERMINATION_LOG])
    else:
        return
    data = text.strip().encode()[:TERMINATION_MESSAGE_LIMIT]
    with contextlib.suppress(OSError):
        target.write_bytes(data + b"\n")


def read_worker_messages(directory: Path) -> dict[int, str]:
    """rank -> the message that worker wrote (see write_termination_message)."""
    found = {}
    for f in directory.glob("rank-*"):
        with contextlib.suppress(OSError, ValueError):
            found[int(f.name.removeprefix("rank-"))] = f.read_text().strip()
    return found


def not_found(name: str, claim: str | None = None) -> str:
    """The words for a data file that is not there: where a relative path was looked for, where that helps; with
    data.existingClaim (`claim`, in a pod: mounted at /data), that the file is looked for on it, or that its
    files are under /data/."""
    from .contract import DATA_DIR

    on_claim = claim and (name == DATA_DIR or name.startswith(DATA_DIR + "/"))
    if on_claim:
        return f"file '{name}' not found on data.existingClaim '{claim}' (mounted read-only at {DATA_DIR}/)"
    said = f"file '{name}' not found" + ("" if os.path.isabs(name) else f" (relative paths are read from {Path.cwd()})")
    return said + (f"; the files of data.existingClaim '{claim}' are under {DATA_DIR}/" if claim else "")
