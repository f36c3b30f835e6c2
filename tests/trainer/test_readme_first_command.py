"""The README's first command, as written, in a new virtual environment of a copy of the checkout: the
hash-checked install of the trainer's lock, the project, and the example job to its end.

It takes a minute or two: pip installs torch and its CUDA wheels (about 3 GB) into the venv, from pip's
cache once `make install` has run, and the example trains 300 steps."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

pytestmark = pytest.mark.slow


def first_command() -> str:
    """The first command line of the README's '## Two commands' block (comments skipped)."""
    section = (ROOT / "README.md").read_text().split("\n## Two commands\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md's 'Two commands' section has no bash block"
    return next(line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#"))


def test_the_readme_first_command_trains_the_example_in_a_new_venv(tmp_path: Path):
    """pip installs about 3 GB of wheels into a new venv, then the example trains 300 steps: 2-3 min alone,
    8 min beside a CPU hog. Nothing else shows that a new user's first command works as written."""
    command = first_command()
    assert "codex-train run configs/examples/tiny-cpu.yaml" in command
    checkout = tmp_path / "checkout"
    ignore = shutil.ignore_patterns(".git", ".cluster", ".tools", ".whl", "runs", "__pycache__", "*.egg-info", ".venv",
                                    ".mypy_cache", ".ruff_cache", ".pytest_cache")  # fmt: skip
    shutil.copytree(ROOT, checkout, ignore=ignore, symlinks=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    try:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=checkout, env=env,
                           capture_output=True, text=True, timeout=1200)  # fmt: skip
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        run = checkout / "runs" / "tiny-cpu"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses = [row["loss"] for row in rows if "loss" in row]
        assert rows[-1]["step"] == 300 and losses[-1] < losses[0] / 4, (losses[0], losses[-1])
        assert (run / "final" / "adapter_model.safetensors").is_file()
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # 6 GB of torch and CUDA wheels, unpacked
