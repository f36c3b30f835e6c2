"""Kueue on the kind test cluster, with every piece made here (no registry is reachable).

- The manager: `go install sigs.k8s.io/kueue/cmd/kueue@v0.17.0` from the Go module proxy, into
  `.cluster/bin/kueue` (about 11 to 18 minutes on 2 cores, once per version: Go's build cache for it
  is a directory of its own, removed once the build succeeded, so that it leaves no gigabytes behind).
- The image `codex.local/kueue:v0.17.0`: that static binary FROM scratch, user 65532 (Kueue's
  Deployment runs as non-root), loaded onto the workers like the project's own images.
- The manifests: the module's own `config/default` (CRDs, RBAC, Deployment, webhooks, internal
  certificates), rendered by kubectl's kustomize with `tests/cluster/kueue/` on top: this image, the
  configuration there, no visibility API, and no webhooks of integrations that are off.

`install(cluster, manage_jobs_without_queue_name)` applies them (server-side: the Workload CRD is too
large for client-side apply) and waits until Kueue's webhooks answer; called again with the other
value, it changes Kueue's configuration and restarts it. `uninstall` deletes the queue objects first
(their finalizers need Kueue running), then Kueue. Deleting the cluster removes it with everything else.

    python3 tests/cluster/kueue.py install [--manage-jobs-without-queue-name] | uninstall   (make kueue)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import node_image

HERE = Path(__file__).resolve().parent
OVERLAY = HERE / "kueue"
KUEUE_VERSION = "v0.17.0"
MODULE = "sigs.k8s.io/kueue"
IMAGE = f"codex.local/kueue:{KUEUE_VERSION}"
NAMESPACE = "kueue-system"
DEPLOYMENT = "kueue-controller-manager"
CONFIG_MAP = "kueue-manager-config"
HASH_LABEL = "codex.kueue.hash"
DOCKERFILE = """FROM scratch
COPY manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
"""
# what Kueue's finalizers hold: deleted while Kueue still runs, before Kueue itself
QUEUE_KINDS = (
    "workloads.kueue.x-k8s.io",
    "localqueues.kueue.x-k8s.io",
    "clusterqueues.kueue.x-k8s.io",
    "resourceflavors.kueue.x-k8s.io",
    "workloadpriorityclasses.kueue.x-k8s.io",
)


GO_SETTINGS = {"GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}


def module_dir() -> Path:
    """Kueue's module source (its config/ has the manifests), from the module proxy's cache."""
    go = ["go", "mod", "download", "-json", f"{MODULE}@{KUEUE_VERSION}"]
    env = {**os.environ, **GO_SETTINGS}
    out = subprocess.run(go, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True, env=env).stdout
    return Path(json.loads(out)["Dir"])


def build_manager(out: Path, nice: bool = False) -> Path:
    """The Kueue manager, rebuilt only when the version changes (`nice`: at the lowest CPU priority)."""
    with _build_lock(out):
        return _build_manager(out, nice)


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """One build at a time (the background one a session starts, and the one a test waits for)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build_manager(out: Path, nice: bool) -> Path:
    stamp_file = out.with_suffix(".stamp")
    if out.is_file() and stamp_file.is_file() and stamp_file.read_text() == KUEUE_VERSION:
        return out
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    version = f"{MODULE}/pkg/version"
    ldflags = f"-s -w -X {version}.GitVersion={KUEUE_VERSION} -X {version}.GitCommit=module-proxy"
    with tempfile.TemporaryDirectory() as gobin, node_image.go_env(out, **GO_SETTINGS, GOBIN=gobin) as env:
        go = ["go", "install", "-trimpath", "-ldflags", ldflags, f"{MODULE}/cmd/kueue@{KUEUE_VERSION}"]
        r = subprocess.run(["nice", "-n", "19", *go] if nice else go, cwd=tempfile.gettempdir(),
                           env=env, capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(go)} failed: {r.stderr.strip()[-3000:]}")
        shutil.move(Path(gobin) / "kueue", out)
    stamp_file.write_text(KUEUE_VERSION)
    node_image.log(f"built {out} ({MODULE} {KUEUE_VERSION}) in {time.monotonic() - started:.0f} s")
    return out


def ensure_image(cluster, manager: Path) -> str:
    """The image of the manager, built unless Docker has it from this very binary, and on the workers."""
    want = hashlib.sha256(manager.read_bytes() + DOCKERFILE.encode()).hexdigest()[:16]
    images = cluster.images
    r = images.docker("image", "inspect", "-f", f'{{{{ index .Config.Labels "{HASH_LABEL}" }}}}', IMAGE, check=False)
    if r.returncode != 0 or r.stdout.decode().strip() != want:
        with tempfile.TemporaryDirectory() as ctx:
            shutil.copy2(manager, Path(ctx) / "manager")
            (Path(ctx) / "Dockerfile").write_text(DOCKERFILE)
            images.docker("build", "--force-rm", "-q", "--label", f"{HASH_LABEL}={want}", "-t", IMAGE, ctx)
    cluster.load_image(IMAGE)
    return IMAGE


def render(kubectl: Path, manage_jobs_without_queue_name: bool = False) -> str:
    """Kueue's manifests for the test cluster: config/default with tests/cluster/kueue/ on top."""
    with tempfile.TemporaryDirectory() as tmp:
        for f in OVERLAY.iterdir():
            shutil.copy2(f, Path(tmp) / f.name)
        k = Path(tmp) / "kustomization.yaml"
        module = os.path.relpath(module_dir(), tmp)  # kustomize takes no absolute path for a resource
        k.write_text(k.read_text().replace("KUEUE_MODULE", module).replace("KUEUE_VERSION", KUEUE_VERSION))
        config = Path(tmp) / "controller_manager_config.yaml"
        value = "true" if manage_jobs_without_queue_name else "false"
        config.write_text(config.read_text().replace("manageJobsWithoutQueueName: false",
                                                     f"manageJobsWithoutQueueName: {value}"))  # fmt: skip
        r = subprocess.run([str(kubectl), "kubectl", "kustomize", tmp], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"rendering Kueue's manifests failed: {r.stderr.strip()[-2000:]}")
        return r.stdout


def install(cluster, manage_jobs_without_queue_name: bool = False, timeout: float = 420) -> float:
    """Kueue installed (or its configuration changed) and answering; the seconds it took."""
    started = time.monotonic()
    manager = build_manager(cluster.state / "bin" / "kueue")
    ensure_image(cluster, manager)
    manifests = render(cluster.bin, manage_jobs_without_queue_name)
    before = _config(cluster)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifests)
    if before is not None and before != _config(cluster):  # Kueue reads its configuration at start only
        cluster.kubectl("-n", NAMESPACE, "rollout", "restart", f"deployment/{DEPLOYMENT}")
    _wait_for_rollout(cluster, started + timeout)
    _wait_for_webhooks(cluster, started + timeout)
    took = time.monotonic() - started
    node_image.log(f"Kueue {KUEUE_VERSION} answering in {took:.0f} s "
                   f"(manageJobsWithoutQueueName: {str(manage_jobs_without_queue_name).lower()})")  # fmt: skip
    return took


def _config(cluster) -> str | None:
    r = cluster.kubectl("-n", NAMESPACE, "get", "configmap", CONFIG_MAP, "-o", "json", check=False)
    return json.loads(r.stdout)["data"] if r.returncode == 0 else None


def _wait_for_rollout(cluster, deadline: float) -> None:
    said = ""
    while time.monotonic() < deadline:
        r = cluster.kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{DEPLOYMENT}", "--timeout=60s",
                            check=False)  # fmt: skip
        if r.returncode == 0:
            return
        said = (r.stderr or r.stdout).strip()
    pods = cluster.kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide", check=False).stdout
    raise RuntimeError(f"Kueue's Deployment did not become ready: {said}\n{pods}")


PROBE = {
    "apiVersion": "kueue.x-k8s.io/v1beta2",
    "kind": "ResourceFlavor",
    "metadata": {"name": "codex-webhook-probe"},
}


def _wait_for_webhooks(cluster, deadline: float) -> None:
    """Kueue is Ready once its certificates are mounted, but its webhooks may refuse calls for a while
    after that: a server-side dry run goes through them, and changes nothing."""
    said = ""
    while time.monotonic() < deadline:
        r = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(PROBE), check=False)
        if r.returncode == 0:
            return
        said = r.stderr.strip()
        time.sleep(2)
    raise RuntimeError(f"Kueue's webhooks did not answer: {said}")


def uninstall(cluster, timeout: float = 120) -> None:
    """The queue objects (while Kueue can still release their finalizers), then Kueue itself."""
    for kind in QUEUE_KINDS:
        cluster.kubectl("delete", kind, "--all", "--all-namespaces", "--ignore-not-found", f"--timeout={int(timeout)}s",
                        check=False)  # fmt: skip
    manifests = render(cluster.bin)
    cluster.kubectl("delete", "--ignore-not-found", "--wait", f"--timeout={int(timeout)}s", "-f", "-", input=manifests)


def main() -> None:
    from cluster import Cluster

    cluster = Cluster()
    args = sys.argv[1:]
    if args[:1] == ["install"]:
        install(cluster, "--manage-jobs-without-queue-name" in args)
    elif args[:1] == ["uninstall"]:
        uninstall(cluster)
    else:
        sys.exit(f"usage: {sys.argv[0]} install [--manage-jobs-without-queue-name] | uninstall")


if __name__ == "__main__":
    main()
