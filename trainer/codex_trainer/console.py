"""What the trainer prints: a progress bar on a terminal, JSON lines otherwise (pods, CI, pipes)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


class Console:
    def __init__(self, enabled: bool, interactive: bool | None = None):
        self.enabled = enabled
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar: tqdm | None = None
        self._last_line = 0.0
        # called once when what the output goes to is gone (`codex-train run ... | head`, a tee stopped by Ctrl-C):
        # the run stops as for a signal, with a checkpoint, instead of failing on its next line
        self.on_closed: Callable[[], None] | None = None

    def event(self, event: str, **fields: Any) -> None:
        """A notable moment (start, resume, checkpoint, eval, end): always printed."""
        if not self.enabled:
            return
        if self.interactive:
            text = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            self._write(f"[codex-train] {event} {text}".rstrip())
        else:
            line = json.dumps({"time": round(time.time(), 3), "event": event, **fields})
            try:
                print(line, flush=True)
            except BrokenPipeError:
                self._closed(sys.stdout)

    def progress(self, step: int, total: int, **fields: Any) -> None:
        """Per-step figures: the bar on a terminal; a JSON line at most every 2 s (and the last step) otherwise."""
        if not self.enabled:
            return
        if self.interactive:
            bar = self._bar
            if bar is None:
                from tqdm import tqdm

                bar = self._bar = tqdm(total=total, initial=step - 1, unit="step", dynamic_ncols=True)
            bar.set_postfix({k: _fmt(v) for k, v in fields.items()}, refresh=False)
            bar.update(step - bar.n)
        else:
            now = time.monotonic()
            if now - self._last_line >= 2.0 or step == total:
                self._last_line = now
                self.event("step", step=step, total_steps=total, **fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, line: str) -> None:
        try:
            if self._bar is not None:
                self._bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)
        except BrokenPipeError:
            self._closed(sys.stderr)

    def _closed(self, stream: Any) -> None:
        """Its reader is gone: what goes to `stream` goes nowhere from now on (a pipe's unread lines too), once."""
        with contextlib.suppress(OSError, ValueError):
            to_nowhere(stream.fileno())
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            callback()


def to_nowhere(*fds: int) -> None:
    """What is written to these file descriptors goes nowhere from now on, unless one is a regular file (output
    to a file stays there): a closed terminal or pipe would fail every write, and the interpreter's at exit."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.dup2(null, fd)
    finally:
        os.close(null)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
