"""The type check (pyproject.toml [tool.mypy]) is strict enough to catch a wrong argument type.

A small module calls a public function of codex_trainer, once with a wrong type and once with the right one;
mypy checks it with the project's configuration and cache (cold, as in a fresh clone, about 0.7 s; warm 0.3 s).
The module's first line names its temporary directory: mypy 2.4 replays the errors it cached for a module of
the same name and content, under the path that module had then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import ROOT

CALLER = """# {where}
from pathlib import Path

from codex_trainer.files import sha256_file

digest: str = sha256_file({argument})
"""
CALL_LINE = 6


def mypy(module: Path) -> subprocess.CompletedProcess:
    """mypy on this one file (naming it leaves the config's `files` out), from the repository root."""
    config = ROOT / "pyproject.toml"
    command = [sys.executable, "-m", "mypy", "--config-file", str(config), str(module)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_rejects_a_wrong_argument_type_and_accepts_the_right_one(tmp_path):
    wrong = tmp_path / "wrong_type.py"
    wrong.write_text(CALLER.format(where=tmp_path, argument='"run.json"'))  # a str where the function takes a Path
    r = mypy(wrong)
    assert r.returncode == 1, f"mypy did not reject the call:\n{r.stdout}{r.stderr}"
    errors = [line for line in r.stdout.splitlines() if line.startswith(f"{wrong}:{CALL_LINE}: error:")]
    assert len(errors) == 1 and errors[0].endswith("[arg-type]"), r.stdout
    assert '"sha256_file" has incompatible type "str"; expected "Path"' in errors[0]

    right = tmp_path / "right_type.py"
    right.write_text(CALLER.format(where=tmp_path, argument='Path("run.json")'))
    r = mypy(right)
    assert r.returncode == 0, f"mypy rejected a correct call:\n{r.stdout}{r.stderr}"
    assert r.stdout.startswith("Success"), r.stdout
