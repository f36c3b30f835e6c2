from __future__ import annotations

import os

import pytest

# Nothing in the tests may reach the Hugging Face Hub: set before transformers is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from support import ROOT


@pytest.fixture
def in_root(monkeypatch):
    """Relative data paths in the examples are read from the repository root."""
    monkeypatch.chdir(ROOT)
    return ROOT
