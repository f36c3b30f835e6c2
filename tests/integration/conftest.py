"""The cluster the integration tests run against.

By default the kind cluster of tests/cluster (built and created here when not already up, and
deleted at the end if this session created it, unless CODEX_KEEP_CLUSTER is set). With
CODEX_KUBECONFIG set, any other cluster (CODEX_KIND_CLUSTER names a kind cluster, for loading images).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images"))  # build.py: the images' builds
import kueue  # noqa: E402
from images import Images  # noqa: E402

from cluster import Cluster  # noqa: E402


class ExistingCluster:
    """A cluster we did not start, reached through a kubeconfig (kind on a CI runner, say)."""

    def __init__(self, kubeconfig: str, kind_name: str | None):
        self.kubeconfig = Path(kubeconfig)
        self.kind_name = kind_name
        self.state = Path(os.environ.get("CODEX_CLUSTER_DIR", Path(__file__).resolve().parents[2] / ".cluster"))
        self.images = Images(self.state)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], input=input,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def load_image(self, tag: str) -> None:
        subprocess.run(["kind", "load", "docker-image", tag, "--name", self.kind_name or "kind"], check=True)


def build_in_background(kueue_manager: Path) -> threading.Thread:
    """helm (test_helm.py needs it first) and then the Kueue manager (test_kueue.py), built at the lowest
    CPU priority while the session builds and starts the cluster and its images: that Go build keeps both
    cores busy, but the node image, the cluster's start and the image loads leave one idle for minutes.
    A test that needs one of them waits for this build (each holds a lock), or builds it itself when this
    one failed."""

    def build() -> None:
        from chart_support import helm_binary

        for what, step in (("helm", lambda: helm_binary(nice=True)),
                           ("Kueue", lambda: kueue.build_manager(kueue_manager, nice=True))):  # fmt: skip
            try:
                step()
            except Exception as e:  # the test that needs it builds it again and fails with the reason
                print(f"building {what} in the background failed: {e}", file=sys.stderr)

    thread = threading.Thread(target=build, name="background builds", daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="session")
def cluster():
    if os.environ.get("CODEX_KUBECONFIG"):
        yield ExistingCluster(os.environ["CODEX_KUBECONFIG"], os.environ.get("CODEX_KIND_CLUSTER"))
        return
    c = Cluster()
    with c.session():  # another checkout's `up` leaves the cluster be while this session runs
        started_here = not c.is_up()
        build_in_background(c.state / "bin" / "kueue")  # helm and Kueue, needed later, in the up's idle time
        c.up()  # a failed `up` removes what it made before it raises
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
    """The generated CodexTrainingJob CRD, applied and Established. It carries Helm's ownership marks for
    the suite's release (HelmOperator), as a user who applied crds/ before installing the chart adds them
    (charts/codex-operator/README.md), so that `helm install` adopts it instead of refusing it."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "crd/codextrainingjobs.codex.ml", "--timeout=60s")
    name = "crd/codextrainingjobs.codex.ml"
    cluster.kubectl("label", "--overwrite", name, "app.kubernetes.io/managed-by=Helm")
    cluster.kubectl("annotate", "--overwrite", name, f"meta.helm.sh/release-name={HelmOperator.release}",
                    f"meta.helm.sh/release-namespace={HelmOperator.namespace}")  # fmt: skip
    return CRD_FILE


@pytest.fixture(scope="session")
def trainer_image(cluster) -> str:
    """The real trainer image from Dockerfile.trainer, built (when its sources changed) and on the node."""
    from build import ensure_trainer_image

    return ensure_trainer_image(cluster)


class OperatorProcess:
    """`codex-operator run` as a user starts it from a laptop: outside the cluster, through $KUBECONFIG."""

    # the tests' namespaces only (t-*): a benchmark may run its own operator beside
    def __init__(self, kubeconfig: Path, image: str, log: Path, namespaces: str = "t-*", via: str = "proxy",
                 extra: tuple[str, ...] = ()):  # fmt: skip
        self.kubeconfig, self.image, self.log = kubeconfig, image, log
        self.namespaces, self.via, self.extra = namespaces, via, extra
        self.metrics_port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codex_operator.cli", "run", "--progress-interval", "2",
             "--metrics-port", str(self.metrics_port), "--default-image", self.image, "--progress-via", self.via,
             "--namespace", self.namespaces, *self.extra],
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


class HelmOperator:
    """The operator as a platform team runs it: `helm install` of charts/codex-operator, from the operator
    image, inside the cluster under the chart's own ServiceAccount and RBAC (a missing verb fails a test),
    reading progress by pod IP. The same start/kill/stop/metrics as OperatorProcess."""

    release, namespace = "codex", "codex-system"

    def __init__(self, cluster, operator_image: str, trainer_image: str, namespaces: str = "t-*"):
        self.cluster = cluster
        repository, tag = operator_image.rsplit(":", 1)
        self.values: dict = {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},  # loaded onto the node
            "trainer": {"image": trainer_image},
            "progress": {"interval": 2},
            "watchNamespacePatterns": [namespaces],  # the tests' namespaces only: a benchmark may run its own operator
        }
        self.replicas = 1

    def helm(self, *args: str, values: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        from chart_support import helm

        r = helm("--kubeconfig", str(self.cluster.kubeconfig), *args, values=values, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
        return r

    def install(self, **changes) -> float:
        """`helm upgrade --install ... --wait` with the values changed by `changes`; seconds it took."""
        from chart_support import CHART

        self.values = _merged(self.values, changes)
        self.replicas = int(self.values.get("replicaCount", 1))
        start = time.monotonic()
        self.helm("upgrade", "--install", self.release, str(CHART), "-n", self.namespace, "--create-namespace",
                  "--wait", "--timeout", "240s", values=self.values)  # fmt: skip
        self.wait_ready(self.replicas)
        return time.monotonic() - start

    def uninstall(self) -> None:
        self.helm("uninstall", self.release, "-n", self.namespace, "--wait")

    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.cluster.kubectl(*args, "-n", self.namespace, **kw)

    def pods(self) -> list[dict]:
        out = self.kubectl("get", "pods", "-l", f"app.kubernetes.io/instance={self.release}", "-o", "json").stdout
        return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]

    def wait_ready(self, replicas: int) -> list[dict]:
        from support import wait_for

        def ready() -> list[dict]:
            pods = self.pods()
            up = [p for p in pods if {"type": "Ready", "status": "True"}.items() <= _condition(p, "Ready").items()]
            return up if len(up) == replicas == len(pods) else []

        return wait_for(ready, f"{replicas} operator pod(s) Ready", 240, interval=1)

    def leader(self) -> str:
        """The pod that acts: the Lease's holder with several replicas, else the one pod."""
        if self.replicas == 1:
            (pod,) = self.pods()
            return pod["metadata"]["name"]
        lease = self.kubectl("get", "lease", f"{self.release}-codex-operator", "-o", "jsonpath={.spec.holderIdentity}")
        return lease.stdout.strip()

    def start(self) -> None:
        self.kubectl("scale", "deployment", f"{self.release}-codex-operator", f"--replicas={self.replicas}")
        self.wait_ready(self.replicas)

    def kill(self) -> None:
        """No operator at all, at once: scaled to zero and its pods force-deleted (the kubelet still sends
        SIGTERM first, so the operator may hand its Lease back; a holder that dies without doing so is
        test_leader.py's, against a fake API server)."""
        self.kubectl("scale", "deployment", f"{self.release}-codex-operator", "--replicas=0")
        self.kubectl("delete", "pods", "-l", f"app.kubernetes.io/instance={self.release}", "--grace-period=0",
                     "--force", "--wait=true", check=False)  # fmt: skip

    def stop(self) -> None:
        self.helm("uninstall", self.release, "-n", self.namespace, "--wait", timeout=120)

    def metrics(self, pod: str | None = None) -> str | None:
        """The acting replica's /metrics, through the API server's pods/proxy."""
        port = self.values.get("metrics", {}).get("port", 8000)
        r = self.cluster.kubectl(
            "get",
            "--raw",
            f"/api/v1/namespaces/{self.namespace}/pods/{pod or self.leader()}:{port}/proxy/metrics",
            check=False,
        )
        return r.stdout if r.returncode == 0 else None

    def logs(self) -> str:
        return self.kubectl("logs", "-l", f"app.kubernetes.io/instance={self.release}", "--tail=-1", "--prefix",
                            check=False).stdout  # fmt: skip


def _condition(obj: dict, kind: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for k, v in changes.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="session")
def operator_image(cluster) -> str:
    """The operator image from Dockerfile.operator, built (when its sources changed) and on the node."""
    from build import ensure_operator_image

    return ensure_operator_image(cluster)


@pytest.fixture(scope="session")
def operator(cluster, crd, trainer_image, operator_image, tmp_path_factory):
    """The operator the suite runs against: in the cluster from the chart (default), or, with
    CODEX_OPERATOR=process, `codex-operator run` on this machine as a laptop user starts it."""
    if os.environ.get("CODEX_OPERATOR") == "process":
        op = OperatorProcess(Path(cluster.kubeconfig), trainer_image, tmp_path_factory.mktemp("operator") / "op.log")
        op.start()
        yield op
        op.stop()
        print(f"operator log: {op.log}")
        return
    helm_op = HelmOperator(cluster, operator_image, trainer_image)
    took = helm_op.install()
    print(f"helm install → operator Ready in {took:.1f} s")
    yield helm_op
    (tmp_path_factory.mktemp("operator") / "operator.log").write_text(helm_op.logs())
    helm_op.stop()
