"""Images without a registry: a Debian base from debootstrap, a pause image from a 15-line C file,
both imported into Docker (started here when not running) and loaded into the node's containerd."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from procs import our_pid, running, write_pid_file

HERE = Path(__file__).resolve().parent
BASE = "codex.local/debian:bookworm"
MIRROR = os.environ.get("CODEX_DEBIAN_MIRROR", "http://deb.debian.org/debian")


class Images:
    def __init__(self, state: Path, containerd_socket: str):
        self.state = state
        self.socket = containerd_socket
        self.cache = state / "cache"
        self.pid_file = state / "pids" / "dockerd.pid"

    # ------------------------------------------------------------------ docker engine

    def docker(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        self.ensure_docker()
        return subprocess.run(["docker", *args], input=input, capture_output=True, check=check)

    def ensure_docker(self) -> None:
        if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
            return
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        log = (self.state / "logs" / "dockerd.log").open("ab")
        proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        write_pid_file(self.pid_file, proc, ["dockerd"])
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {self.state / 'logs' / 'dockerd.log'}")
            time.sleep(0.5)

    def stop_docker(self) -> None:
        """Stop dockerd if this harness started it and it still runs (its images stay in /var/lib/docker
        as a cache)."""
        pid = our_pid(self.pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            deadline = time.monotonic() + 20
            while running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ images

    def has(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def ensure_base(self) -> str:
        """codex.local/debian:bookworm: debootstrap's minbase, imported; the rootfs tar is cached."""
        if self.has(BASE):
            return BASE
        tar = self.cache / "debian-bookworm-minbase.tar"
        if not tar.is_file():
            self.cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
                rootfs = Path(tmp) / "rootfs"
                subprocess.run(
                    ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR],
                    check=True,
                    capture_output=True,
                )
                shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
                (rootfs / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
                part = tar.with_suffix(".part")
                subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(part), "."], check=True)
                os.replace(part, tar)
        self.docker("import", "--change", 'CMD ["/bin/bash"]', str(tar), BASE)
        return BASE

    def ensure_pause(self, tag: str) -> None:
        """The pod sandbox image, built from pause.c, in Docker and in the node's containerd."""
        if not self.has(tag):
            with tempfile.TemporaryDirectory() as tmp:
                binary = Path(tmp) / "pause"
                subprocess.run(["gcc", "-static", "-Os", "-o", str(binary), str(HERE / "pause.c")], check=True)
                archive = Path(tmp) / "pause.tar"
                with tarfile.open(archive, "w") as t:
                    t.add(binary, arcname="pause")
                self.docker("import", "--change", 'ENTRYPOINT ["/pause"]', str(archive), tag)
        self.load(tag)

    def load(self, tag: str) -> None:
        """Copy a Docker image into the node's containerd (namespace k8s.io), as a pull would."""
        saved = self.docker("save", tag).stdout
        r = subprocess.run(self._ctr("images", "import", "-"), input=saved, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"ctr import of {tag} failed: {r.stderr.decode().strip()}")
        tag_full = tag if "/" in tag.split(":")[0] else f"docker.io/library/{tag}"
        listed = subprocess.run(self._ctr("images", "ls", "-q"), capture_output=True, text=True).stdout.split()
        if tag_full not in listed and tag not in listed:
            raise RuntimeError(f"{tag} is not in containerd after import (have: {listed})")

    def remove_all_containers(self) -> list[str]:
        """Kill and delete every container of the node's containerd; returns their ids (pod sandboxes too)."""
        tasks = subprocess.run(self._ctr("tasks", "ls", "-q"), capture_output=True, text=True).stdout.split()
        for t in tasks:
            subprocess.run(self._ctr("tasks", "kill", "-s", "SIGKILL", t), capture_output=True)
        deadline = time.monotonic() + 10
        for t in tasks:
            while subprocess.run(self._ctr("tasks", "delete", t), capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        containers = subprocess.run(self._ctr("containers", "ls", "-q"), capture_output=True, text=True).stdout.split()
        for c in containers:
            subprocess.run(self._ctr("containers", "delete", c), capture_output=True)
        return containers

    def _ctr(self, *args: str) -> list[str]:
        return ["ctr", "--address", self.socket, "--namespace", "k8s.io", *args]
