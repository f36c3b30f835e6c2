from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "configs" / "examples"
TINY = EXAMPLES / "tiny-cpu.yaml"


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `codex-train ARGS` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "codex_trainer.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def in_root(monkeypatch):
    """Relative data paths in the examples are read from the repository root."""
    monkeypatch.chdir(ROOT)
    return ROOT
