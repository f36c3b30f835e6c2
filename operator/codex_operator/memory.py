"""Giving memory back after a mass delete.

CPython frees a deleted job's objects into its own arenas and glibc's heap, but glibc keeps the freed
pages of its main heap until something trims it: an operator that ran 10,000 jobs would hold their
peak for good. `Trimmer` asks glibc to return free pages (`malloc_trim`) once the number of jobs has
fallen to half of its high-water mark, then measures again from there; and once more AGAIN_AFTER seconds
after each such trim, when the API connections the burst opened have closed (aiohttp closes an idle one
after 15 s) and freed their TLS buffers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from dataclasses import dataclass

log = logging.getLogger("codex_operator")

AGAIN_AFTER = 20.0  # seconds after a trim, the follow-up one


def _malloc_trim() -> bool:
    """glibc's malloc_trim(0); False where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    gc.collect()
    trim(0)
    return True


@dataclass
class Trimmer:
    """Trim once the jobs have fallen to half of the most seen since the last trim (and at least `floor`
    had been seen: a few jobs come and go without any)."""

    floor: int = 200
    high: int = 0
    again_at: float | None = None  # monotonic: when the last trim's follow-up is due

    def seen(self, jobs: int, now: float | None = None) -> bool:
        """Record how many jobs there are now; True when memory was given back."""
        now = time.monotonic() if now is None else now
        self.high = max(self.high, jobs)
        if self.high >= self.floor and jobs <= self.high // 2:
            log.debug("jobs fell from %d to %d: giving free memory back", self.high, jobs)
            self.high, self.again_at = jobs, now + AGAIN_AFTER
            return _malloc_trim()
        if self.again_at is not None and now >= self.again_at:
            self.again_at = None
            return _malloc_trim()
        return False
