"""Process checks shared by the harness."""

from __future__ import annotations

import os
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
