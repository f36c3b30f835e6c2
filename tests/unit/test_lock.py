"""The locks (requirements/*.txt) and pyproject.toml agree: every pin is locked at its version with
hashes, nothing stays locked that nobody asks for, and a package has one version in every lock."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "tools"))  # after the standard library and site-packages

import lock  # noqa: E402


@pytest.fixture(scope="module")
def real() -> tuple[str, str, dict[str, str]]:
    texts = {name: (REPO / "requirements" / f"{name}.txt").read_text() for name in lock.LOCKS}
    return (REPO / "pyproject.toml").read_text(), (REPO / lock.BUILD_IN).read_text(), texts


def problems(pyproject: str, build_in: str, locks: dict[str, str]) -> list[str]:
    return lock.problems(tomllib.loads(pyproject), build_in, locks)


def test_the_committed_locks_agree_with_pyproject():
    assert lock.check() == []


def test_every_extra_and_the_build_tools_are_locked(real):
    pyproject, build_in, texts = real
    dev = lock.read_lock(texts["dev"])
    trainer = lock.read_lock(texts["trainer"])
    operator = lock.read_lock(texts["operator"])
    assert {"torch", "peft", "kopf", "pytest", "pip", "setuptools"} <= dev.keys()
    assert "torch" in trainer and "kopf" not in trainer and "pytest" not in trainer
    assert "kopf" in operator and "torch" not in operator
    assert set(lock.read_lock(texts["build"])) == {"pip", "setuptools"}
    assert all(entry.hashes for entry in dev.values())


def test_a_changed_pin_is_named_with_the_fix(real):
    pyproject, build_in, texts = real
    found = problems(pyproject.replace('"peft==0.21.2"', '"peft==0.21.1"'), build_in, texts)
    assert found, "a pin changed in pyproject.toml but not in the locks went unnoticed"
    assert all("peft" in line and "make lock" in line for line in found)
    assert any("requirements/trainer.txt pins peft==0.21.2 where pyproject.toml [trainer] asks for peft==0.21.1" in line
               for line in found)  # fmt: skip


def test_a_new_dependency_must_be_locked(real):
    pyproject, build_in, texts = real
    found = problems(pyproject.replace('"pytest==9.2.0",', '"pytest==9.2.0", "hypothesis==6.0.0",'), build_in, texts)
    assert found == ["requirements/dev.txt lacks hypothesis, which pyproject.toml [dev] asks for "
                     "(hypothesis==6.0.0): run `make lock`"]  # fmt: skip


def test_a_removed_dependency_must_leave_the_lock(real):
    pyproject, build_in, texts = real
    found = problems(pyproject.replace('    "tqdm==4.70.1",\n', ""), build_in, texts)
    assert "requirements/trainer.txt locks tqdm for codex-training-operator (pyproject.toml), which no longer asks " \
           "for it: run `make lock`" in found  # fmt: skip


def test_a_build_tool_is_locked_everywhere(real):
    pyproject, build_in, texts = real
    found = problems(pyproject, build_in.replace("pip==26.3", "pip==26.2"), texts)
    assert {line.split()[0] for line in found} == {f"requirements/{name}.txt" for name in lock.LOCKS}


def test_an_entry_without_hashes_is_refused(real):
    pyproject, build_in, texts = real
    lines, out, in_kopf = texts["operator"].splitlines(), [], False
    for line in lines:
        if line[:1].isalnum():
            in_kopf = line.startswith("kopf==")
            line = line.removesuffix(" \\") if in_kopf else line
        if not (in_kopf and "--hash=" in line):
            out.append(line)
    found = problems(pyproject, build_in, {**texts, "operator": "\n".join(out)})
    assert found == ["requirements/operator.txt: kopf has no --hash: run `make lock`"]


def test_one_version_per_package_across_locks(real):
    pyproject, build_in, texts = real
    other = texts["trainer"].replace("\nnumpy==2.4.6 ", "\nnumpy==2.4.5 ")
    found = problems(pyproject, build_in, {**texts, "trainer": other})
    assert "requirements/trainer.txt pins numpy==2.4.5, requirements/dev.txt numpy==2.4.6: run `make lock`" in found


def test_make_lock_runs_uv_for_the_locked_platform():
    cmd = lock.compile_command("trainer")
    assert cmd[1:5] == ["-m", "uv", "pip", "compile"] and "--generate-hashes" in cmd
    assert cmd[cmd.index("--python-platform") + 1] == "x86_64-manylinux_2_36"
    assert cmd[cmd.index("-c") + 1] == "requirements/dev.txt"
    assert "--upgrade" in lock.compile_command("dev", upgrade=True)


def test_a_new_extra_must_be_in_a_lock(real):
    pyproject, build_in, texts = real
    found = problems(pyproject.replace("dev = [", 'gpu = ["flash-attn==2.0.0"]\ndev = [', 1), build_in, texts)
    assert found == ["pyproject.toml has the extra [gpu], which no lock installs: add it to LOCKS in tools/lock.py"]


def test_what_only_a_removed_dependency_needed_leaves_with_it(real):
    pyproject, build_in, texts = real
    found = problems(pyproject.replace('    "tensorboard==2.21.0",\n', ""), build_in, texts)
    prefix = "requirements/trainer.txt: nothing in it asks for "
    stale = {line.removeprefix(prefix).split()[0] for line in found if line.startswith(prefix)}
    assert {"grpcio", "absl-py", "tensorboard-data-server"} <= stale, found


def test_the_build_system_is_served_by_the_locked_build_tools(real):
    pyproject, build_in, texts = real
    newer = pyproject.replace('requires = ["setuptools>=77"]', 'requires = ["setuptools>=90"]')
    found = problems(newer, build_in, texts)
    assert found == ["requirements/build.txt pins setuptools==84.2.1 where pyproject.toml [build-system] requires "
                     "asks for setuptools>=90: run `make lock`"]  # fmt: skip


def test_a_lock_that_make_lock_would_write_otherwise_is_named(real):
    pyproject, build_in, texts = real
    start = texts["trainer"].index("\nfilelock==")
    end = texts["trainer"].index("\n", texts["trainer"].index("# via", start) + 1)
    without = texts["trainer"][:start] + texts["trainer"][end:]
    assert "filelock" not in lock.read_lock(without)
    found = lock.differences({**texts, "trainer": without}, texts)
    version = lock.read_lock(texts["trainer"])["filelock"].version
    assert found == [f"requirements/trainer.txt lacks filelock=={version}, which `make lock` adds: run `make lock`"]
    assert lock.differences(texts, texts) == []
