"""Process checks shared by the harness: a pid file names a process we started only while that
pid still runs the command line we started (pids are reused)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie (a child of ours that exited unreaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def write_pid_file(path: Path, proc: subprocess.Popen, args: list[str]) -> None:
    """The pid and the command line it was started with, so that only that process is ever signalled."""
    path.write_text(json.dumps({"pid": proc.pid, "cmdline": [str(a) for a in args]}))


def our_pid(path: Path) -> int | None:
    """The pid in `path` if that process still runs the command line recorded with it, else None (a pid
    file of the old bare-number format cannot be checked, so it names nothing)."""
    try:
        record = json.loads(path.read_text())
        pid, expected = int(record["pid"]), record["cmdline"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return pid if running(pid) and cmdline(pid) == expected else None


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group the harness started (start_new_session: its id is the leader's pid)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
