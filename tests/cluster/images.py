"""Images without a registry: Docker (started here when not running) and a Debian base from debootstrap."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

BASE = "codex.local/debian:bookworm"
MIRROR = os.environ.get("CODEX_DEBIAN_MIRROR", "http://deb.debian.org/debian")


class Images:
    def __init__(self, state: Path):
        self.state = state
        self.cache = state / "cache"

    # ------------------------------------------------------------------ docker engine

    def docker(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        self.ensure_docker()
        return subprocess.run(["docker", *args], input=input, capture_output=True, check=check)

    def ensure_docker(self) -> None:
        """Start dockerd when it is not running (a machine's daemon is not started at boot here); it is
        left running, as a system daemon is."""
        if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
            return
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        log = (self.state / "logs" / "dockerd.log").open("ab")
        proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {self.state / 'logs' / 'dockerd.log'}")
            time.sleep(0.5)

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
