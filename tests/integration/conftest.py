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
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images"))  # build.py: the images' builds
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
    c.up()  # a failed `up` removes what it started before it raises
    try:
        yield c
    finally:  # also when the session fails or is interrupted
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


# ---------------------------------------------------------------- the operator's suite

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "codextrainingjobs.codex.ml.yaml"


@pytest.fixture(scope="session")
def crd(cluster):
    """The generated CodexTrainingJob CRD, applied and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "crd/codextrainingjobs.codex.ml", "--timeout=60s")
    return CRD_FILE


@pytest.fixture(scope="session")
def trainer_image(cluster) -> str:
    """The real trainer image from Dockerfile.trainer, built (when its sources changed) and on the node."""
    from build import ensure_trainer_image

    return ensure_trainer_image(cluster)


class OperatorProcess:
    """`codex-operator run` as a user starts it from a laptop: outside the cluster, through $KUBECONFIG."""

    # the tests' namespaces only (t-*): a benchmark may run its own operator beside
    def __init__(self, kubeconfig: Path, image: str, log: Path, namespaces: str = "t-*", via: str = "proxy"):
        self.kubeconfig, self.image, self.log = kubeconfig, image, log
        self.namespaces, self.via = namespaces, via
        self.metrics_port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codex_operator.cli", "run", "--progress-interval", "2",
             "--metrics-port", str(self.metrics_port), "--default-image", self.image, "--progress-via", self.via,
             "--namespace", self.namespaces],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        from support import wait_for

        wait_for(lambda: self.metrics() is not None, "the operator's /metrics", 60)

    def metrics(self) -> str | None:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as when a node dies under it."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def operator(cluster, crd, trainer_image, tmp_path_factory):
    op = OperatorProcess(Path(cluster.kubeconfig), trainer_image, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()
    print(f"operator log: {op.log}")
