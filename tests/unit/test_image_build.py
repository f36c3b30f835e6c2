"""images/build.py without Docker: the stage images a build leaves (the next build's cache) are removed
only when the disk has less room left than the tests need; the wheelhouse a build reads over HTTP is
served on its own port, lists its wheels for pip, and is gone after the build."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import namedtuple
from pathlib import Path

import pytest

from support import ROOT

sys.path.insert(0, str(ROOT / "images"))
import build  # noqa: E402

GiB = 2**30
Usage = namedtuple("Usage", "total used free")


class Docker:
    """Answers `docker info` with a root directory and frees `freed` bytes on `docker image prune`."""

    def __init__(self, root: Path, free: int, freed: int) -> None:
        self.root, self.free, self.freed, self.calls, self.refuse = root, free, freed, [], ""

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        self.calls.append(args)
        if args[0] == "info":
            return subprocess.CompletedProcess(args, 0, stdout=str(self.root).encode())
        if args[:2] == ("image", "prune"):
            if self.refuse:
                return subprocess.CompletedProcess(args, 1, stdout=b"", stderr=self.refuse.encode())
            self.free += self.freed
        return subprocess.CompletedProcess(args, 0, stdout=b"")


@pytest.fixture
def docker(tmp_path, monkeypatch) -> Docker:
    d = Docker(tmp_path, free=0, freed=0)
    monkeypatch.delenv("CODEX_KEEP_STAGE_IMAGES", raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(0, 0, d.free))
    return d


def test_a_short_disk_loses_the_stage_images_and_says_how_much_it_got_back(docker):
    docker.free, docker.freed = 22 * GiB, 10 * GiB
    said: list[str] = []
    build.drop_stages_when_short(docker, said.append)
    assert ("image", "prune", "--force") in docker.calls
    assert said == [
        "22.0 GiB free after the build, less than 50: removed the untagged stage images, 10.0 GiB "
        "(the next build is a cold one)"
    ]


def test_a_roomy_disk_keeps_the_stage_images_for_the_next_build(docker):
    docker.free = build.ROOM_AFTER_BUILD
    said: list[str] = []
    build.drop_stages_when_short(docker, said.append)
    assert not any(call[0] == "image" for call in docker.calls) and said == []


def test_a_docker_whose_disk_is_not_this_machines_is_left_alone(docker, tmp_path):
    docker.root, docker.free = tmp_path / "elsewhere", GiB
    build.drop_stages_when_short(docker, print)
    assert not any(call[0] == "image" for call in docker.calls)


def test_a_refused_prune_is_said_and_the_build_still_counts(docker):
    docker.free, docker.refuse = GiB, "Error response from daemon: a prune operation is already running"
    said: list[str] = []
    build.drop_stages_when_short(docker, said.append)
    assert said == [
        "docker image prune failed, the stage images stay: "
        "Error response from daemon: a prune operation is already running"
    ]


def test_codex_keep_stage_images_keeps_them_however_short_the_disk(docker, monkeypatch):
    docker.free = GiB
    monkeypatch.setenv("CODEX_KEEP_STAGE_IMAGES", "1")
    build.drop_stages_when_short(docker, print)
    assert docker.calls == []


def test_the_wheelhouse_is_served_for_pip_on_its_own_port_and_only_during_the_build(tmp_path):
    wheels = tmp_path / "trainer-0123456789abcdef"
    wheels.mkdir()
    (wheels / "torch-2.0-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"wheel")
    (wheels / "trainer.txt").write_text("torch==2.0 --hash=sha256:00\n")
    with build.served(wheels) as url:
        assert url == f"http://127.0.0.1:{build.wheels_port(wheels)}"  # the same URL, build after build
        listing = urllib.request.urlopen(f"{url}/").read().decode()  # what pip's --find-links reads
        assert 'href="torch-2.0-cp311-cp311-manylinux_2_28_x86_64.whl"' in listing
        assert urllib.request.urlopen(f"{url}/trainer.txt").read() == b"torch==2.0 --hash=sha256:00\n"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/trainer.txt", timeout=5)


def test_a_taken_port_serves_the_wheelhouse_on_another(tmp_path):
    wheels = tmp_path / "operator-fedcba9876543210"
    wheels.mkdir()
    (wheels / "build.txt").write_text("pip==25.0\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", build.wheels_port(wheels)))
        taken.listen()
        with build.served(wheels) as url:
            assert url != f"http://127.0.0.1:{build.wheels_port(wheels)}"
            assert urllib.request.urlopen(f"{url}/build.txt").read() == b"pip==25.0\n"
