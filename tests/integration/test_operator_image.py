"""The operator image (Dockerfile.operator), with Docker alone (no cluster): built from its lock, small,
free of torch, run as uid 1000 on a read-only root filesystem, and not rebuilt when nothing changed.

The tests that build or run it are marked `cluster` like the trainer image's (minutes, and Docker:
not in `make unit`); those of the source hash need neither."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import build
import pytest
from build import OPERATOR, TRAINER, Recipe, local_images, source_hash

from support import ROOT

needs_docker = pytest.mark.cluster

# what the chart's Deployment gives the container: its own uid, no writable root, an emptyDir at /tmp
RESTRICTED = ["--read-only", "--tmpfs", "/tmp", "--user", "1000:1000"]
LOCK = ROOT / "requirements" / "operator.txt"
INSTALLERS = {"pip", "setuptools"}  # every lock pins them (build.in); the image installs with them, keeps neither
NOT_IN_THE_IMAGE = re.compile(r"^(torch|transformers|nvidia-.*|triton|kubernetes)$")  # `kubernetes`: the sync client


@pytest.fixture(scope="module")
def docker():
    return local_images()


@pytest.fixture(scope="module")
def image(docker) -> str:
    build.build(docker, OPERATOR)
    return OPERATOR.tag


def run(image: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "run", "--rm", *RESTRICTED, image, *cmd], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: Path) -> dict[str, str]:
    return {canonical(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", lock.read_text(), re.M)}


@needs_docker
def test_the_image_is_under_250_mb(docker, image):
    size = build.image_size(docker, image)
    assert size < 250e6, f"{image} is {size / 1e6:.0f} MB"


@needs_docker
def test_it_holds_exactly_the_operator_lock_and_nothing_of_torch(image):
    listing = run(image, "python", "-c", "import importlib.metadata as m, json; "
                  "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    installed = {canonical(name): version for name, version in json.loads(listing.stdout).items()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = {name: v for name, v in locked(LOCK).items() if name not in INSTALLERS}
    want[canonical(project["name"])] = project["version"]
    assert installed == want
    assert not [name for name in installed if NOT_IN_THE_IMAGE.match(name)]


@needs_docker
def test_codex_operator_run_works_as_uid_1000_on_a_read_only_root(docker, image):
    r = run(image, "codex-operator", "run", "--help")
    assert r.returncode == 0, r.stderr
    assert "--default-image" in r.stdout and not r.stderr
    config = json.loads(docker.docker("image", "inspect", "-f", "{{json .Config}}", image).stdout)
    assert config["User"] == "1000:1000"  # numeric: runAsNonRoot can check it
    assert config["Cmd"] == ["codex-operator", "run"]
    assert {"HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1"} <= set(config["Env"])
    user = run(image, "python", "-c", "import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name, os.getcwd())")
    assert user.stdout.split() == ["codex", "/tmp"], user.stderr


@needs_docker
def test_every_operator_module_imports_from_files_compiled_at_build_time(image):
    """On a read-only root a module compiled at start-up is compiled again at every start: none may be."""
    modules = sorted(f"codex_operator.{p.stem}" for p in (ROOT / "operator" / "codex_operator").glob("*.py"))
    code = f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; print(len(sys.modules))"
    r = run(image, "python", "-v", "-c", code)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = re.findall(r"^# code object from '?(.+?)'?$", r.stderr, re.M)
    assert len(loaded) > 500  # the operator, kopf, kubernetes_asyncio, pydantic, the standard library
    assert [f for f in loaded if not f.endswith(".pyc")] == []


@needs_docker
def test_a_second_build_with_nothing_changed_is_skipped(docker, image):
    build.build(docker, OPERATOR)  # the sources may have changed since the fixture built it
    before = docker.docker("image", "inspect", "-f", "{{.Id}}", image).stdout
    assert build.build(docker, OPERATOR) is False
    assert docker.docker("image", "inspect", "-f", "{{.Id}}", image).stdout == before
    assert build.image_label(docker, image) == source_hash(OPERATOR)


# ---------------------------------------------------------------- the source hash (no Docker)


def test_the_two_images_and_two_bases_have_different_hashes():
    assert source_hash(OPERATOR) != source_hash(TRAINER)
    assert source_hash(OPERATOR, base="debian:bookworm-slim") != source_hash(OPERATOR)


def test_the_source_hash_follows_the_sources_not_their_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "REPO", tmp_path)
    for name in ("Dockerfile.operator", "requirements/build.txt", "requirements/operator.txt", "pyproject.toml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / "operator" / "pkg").mkdir(parents=True)
    module = tmp_path / "operator" / "pkg" / "mod.py"
    module.write_text("A = 1\n")
    recipe = Recipe("operator", tmp_path / "Dockerfile.operator",
                    (tmp_path / "requirements" / "build.txt", tmp_path / "requirements" / "operator.txt"),
                    ("pyproject.toml", "operator"), "t:dev", "")  # fmt: skip
    first = source_hash(recipe)
    (tmp_path / "operator" / "pkg" / "__pycache__").mkdir()
    (tmp_path / "operator" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "operator" / "x.egg-info").mkdir()
    (tmp_path / "operator" / "x.egg-info" / "PKG-INFO").write_text("Name: x\n")
    assert source_hash(recipe) == first
    for change in (module, tmp_path / "requirements" / "operator.txt", tmp_path / "Dockerfile.operator"):
        text = change.read_text()
        change.write_text(text + "\n# changed\n")
        assert source_hash(recipe) != first, change
        change.write_text(text)
    assert source_hash(recipe) == first
