from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys

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


TEST_PLUGIN = ROOT / "tests" / "plugins" / "codex_test_plugin"


@pytest.fixture(scope="session")
def test_plugin():
    """tests/plugins/codex_test_plugin (a .csv reader; callbacks `record` and `explode`), installed editable
    into this environment once per session, so its entry points are seen by this process and by codex-train
    subprocesses alike. The callbacks append to the file named by CODEX_TEST_PLUGIN_LOG."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    r = subprocess.run([*pip, "-e", str(TEST_PLUGIN)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"installing the test plugin failed:\n{r.stdout}{r.stderr}"
    if str(TEST_PLUGIN) not in sys.path:  # an editable install's path hook is read at start-up, not now
        sys.path.append(str(TEST_PLUGIN))
    importlib.invalidate_caches()
    return TEST_PLUGIN
