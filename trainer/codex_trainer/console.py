"""What the trainer prints: a progress bar on a terminal, JSON lines otherwise (pods, CI, pipes)."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


class Console:
    def __init__(self, enabled: bool, interactive: bool | None = None):
        self.enabled = enabled
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar: tqdm | None = None
        self._last_line = 0.0

    def event(self, event: str, **fields: Any) -> None:
        """A notable moment (start, resume, checkpoint, eval, end): always printed."""
        if not self.enabled:
            return
        if self.interactive:
            text = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            self._write(f"[codex-train] {event} {text}".rstrip())
        else:
            print(json.dumps({"time": round(time.time(), 3), "event": event, **fields}), flush=True)

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
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
