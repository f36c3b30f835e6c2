from __future__ import annotations

import importlib
import os
import signal
import sys
import tomllib

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
def test_plugin(tmp_path_factory):
    """tests/plugins/codex_test_plugin (a .csv reader; callbacks `record` and `explode`), on this process's path
    and on PYTHONPATH for the session, with a dist-info holding its pyproject's entry points, so that they are
    seen by this process and by codex-train subprocesses alike, and by nothing after the tests: the environment
    is left as it was (installing it left `explode` among the user's callbacks). The callbacks append to the
    file named by CODEX_TEST_PLUGIN_LOG."""
    project = tomllib.loads((TEST_PLUGIN / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("plugin-site")
    (site / "codex_test_plugin").symlink_to(TEST_PLUGIN / "codex_test_plugin", target_is_directory=True)
    dist = site / f"codex_test_plugin-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project["entry-points"]
    (dist / "entry_points.txt").write_text(
        "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
    )
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), before) if p)
    sys.path.append(str(site))
    importlib.invalidate_caches()
    yield TEST_PLUGIN
    sys.path.remove(str(site))
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before
