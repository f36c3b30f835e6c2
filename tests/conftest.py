from __future__ import annotations

import os
import signal

import pytest

# Nothing in the tests may reach the Hugging Face Hub: set before transformers is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from support import ROOT


@pytest.fixture(autouse=True)
def signal_handlers_left_as_found():
    """An in-process `main()` installs SIGTERM/SIGINT handlers; it must put the previous ones back."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    after = {s: signal.getsignal(s) for s in before}
    for s, handler in before.items():
        signal.signal(s, handler)
    assert after == before, f"signal handlers changed by the test: {after}"


@pytest.fixture
def in_root(monkeypatch):
    """Relative data paths in the examples are read from the repository root."""
    monkeypatch.chdir(ROOT)
    return ROOT
