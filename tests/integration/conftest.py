"""The cluster the integration tests run against.

By default the local cluster of tests/cluster (built and started here when not already up, and
stopped at the end if this session started it). With CODEX_KUBECONFIG set, any other cluster,
kind for example (CODEX_KIND_CLUSTER names it, for loading images).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from images import Images  # noqa: E402

from cluster import Cluster  # noqa: E402


class ExistingCluster:
    """A cluster we did not start, reached through a kubeconfig (kind on a CI runner, say)."""

    def __init__(self, kubeconfig: str, kind_name: str | None):
        self.kubeconfig = Path(kubeconfig)
        self.kind_name = kind_name
        self.state = Path(os.environ.get("CODEX_CLUSTER_DIR", Path(__file__).resolve().parents[2] / ".cluster"))
        self.images = Images(self.state, containerd_socket="")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], input=input,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def load_image(self, tag: str) -> None:
        subprocess.run(["kind", "load", "docker-image", tag, "--name", self.kind_name or "kind"], check=True)


@pytest.fixture(scope="session")
def cluster():
    if os.environ.get("CODEX_KUBECONFIG"):
        yield ExistingCluster(os.environ["CODEX_KUBECONFIG"], os.environ.get("CODEX_KIND_CLUSTER"))
        return
    c = Cluster()
    started_here = not c.is_up()
    c.up()
    yield c
    if started_here and not os.environ.get("CODEX_KEEP_CLUSTER"):
        c.down()


@pytest.fixture(scope="session")
def base_image(cluster) -> str:
    tag = cluster.images.ensure_base()
    cluster.load_image(tag)
    return tag


@pytest.fixture
def namespace(cluster):
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
