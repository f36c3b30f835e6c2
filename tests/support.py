"""Helpers shared by the test suites (imported as `support`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "configs" / "examples"
TINY = EXAMPLES / "tiny-cpu.yaml"


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    """Run `codex-train ARGS` from the repository root (or `cwd`), as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "codex_trainer.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def wait_for(cond, what: str, timeout: float = 90, interval: float = 0.5):
    """Poll `cond` until it returns something true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def one_line(err: str) -> str:
    """The one line a command printed on stderr, with no traceback (the CLI's error contract)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def without_empties(value):
    """Empty lists and maps are left out of the CRD's defaults: absent means the same."""
    if isinstance(value, dict):
        return {k: without_empties(v) for k, v in value.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [without_empties(v) for v in value]
    return value
