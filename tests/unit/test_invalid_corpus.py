"""Every manifest in tests/invalid is refused by `codex-train validate` with exit 2, one line per
problem naming the field, and no traceback. tests/integration/test_invalid_corpus.py checks that the
API server refuses the very same files with the same words."""

from __future__ import annotations

import sys

import pytest

from codex_trainer.cli import main
from support import ROOT, run_cli

sys.path.insert(0, str(ROOT / "tests" / "invalid"))
from corpus import CORPUS, FILES, expectations  # noqa: E402


def test_the_corpus_is_large_and_each_file_says_what_to_expect():
    assert len(FILES) >= 24
    for path in FILES:
        assert path.read_text().startswith("# expect: "), path.name
        assert "apiVersion: codex.ml/v1alpha1" in path.read_text(), path.name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_validate_refuses_it_naming_the_problem(path, capsys):
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    for text in expectations(path):
        assert text in captured.err, f"{path.name}: expected {text!r} in:\n{captured.err}"
    assert all(line.startswith("codex-train: ") for line in captured.err.splitlines()), captured.err


@pytest.mark.parametrize("name", ["name-too-long", "unknown-field-nested", "bad-quantity-request"])
def test_the_command_exits_2_without_a_traceback(name):
    r = run_cli("validate", str(CORPUS / f"{name}.yaml"), timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert all(text in r.stderr for text in expectations(CORPUS / f"{name}.yaml")), r.stderr
