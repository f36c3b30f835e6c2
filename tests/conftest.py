from __future__ import annotations

import pytest

from support import ROOT


@pytest.fixture
def in_root(monkeypatch):
    """Relative data paths in the examples are read from the repository root."""
    monkeypatch.chdir(ROOT)
    return ROOT
