"""The test cluster: kind, with a node image made on this machine.

    python tests/cluster/cluster.py up      # build (cached), create the cluster, wait until it is Ready
    python tests/cluster/cluster.py down    # delete it: its node containers and volumes
    python tests/cluster/cluster.py status

One control-plane node and CODEX_CLUSTER_WORKERS workers (default 2), each a Docker container; the
kubeconfig is written to <state>/kubeconfig. kind and the node image come from node_image.py (no
registry needed; CODEX_KIND_NODE_IMAGE names another node image, kindest/node where a registry is
reachable). After `kind create cluster` this module does what kind's default CNI and storage would:
- each node gets a ptp CNI configuration for its pod range, a route to every other node's range (the
  nodes share Docker's `kind` network, so no overlay is needed) and a masquerade rule for traffic
  leaving the pod network;
- the default StorageClass `standard` is served by provisioner.py, a systemd unit of the control-plane
  node, from
  <state>/volumes, which every node mounts at the same path: a volume written on one node is read on
  any other, as a ReadWriteMany class would be.
Nothing here touches the host beyond Docker and the state directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_image  # noqa: E402
from images import Images  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SRC = Path(__file__).resolve().parent / "k8s"
DNS_SRC = Path(__file__).resolve().parent / "coredns"
ROLE_LABEL = "io.x-k8s.kind.role"
POD_NETWORK = "10.244.0.0/16"  # kind's default podSubnet
CLUSTER_LABEL = "io.x-k8s.kind.cluster"
# After `ctr images import` a node holds an image twice: its layers as imported and unpacked into snapshots. A
# pull with containerd's discard_unpacked_layers (kind's setting) keeps only the snapshots; this does the
# same for a loaded image (the trainer's is 6 GB), keeping its manifest and config, which is all the
# kubelet and kind's "already present" check read.
DISCARD_LAYERS = """set -eu
digest=$(ctr -n k8s.io images ls | awk -v ref="$1" '$1 == ref || $1 == "docker.io/library/" ref {print $3; exit}')
[ -n "$digest" ] || { echo "no image $1 on this node" >&2; exit 1; }
manifest=$(ctr -n k8s.io content get "$digest")
if [ "$(echo "$manifest" | jq -r '.manifests // empty | length')" != "" ]; then  # an index (Docker's containerd
  digest=$(echo "$manifest" | jq -r '[.manifests[] | select(.platform.architecture == "amd64")][0].digest')  # store)
  manifest=$(ctr -n k8s.io content get "$digest")
fi
layers=$(echo "$manifest" | jq -r '.layers[].digest')
for attempt in 1 2 3 4 5 6 7 8 9 10; do  # right after an import a layer may still be held
  ctr -n k8s.io content rm $layers >/dev/null 2>&1 || true
  present=$(ctr -n k8s.io content ls -q)
  left=""
  for layer in $layers; do
    case "$present" in *"$layer"*) left="$left $layer" ;; esac
  done
  [ -z "$left" ] && exit 0
  sleep 2
done
echo "containerd kept these layers of $1 (each a copy of what is unpacked):$left" >&2
exit 1
"""


# A load from an archive wants about this many times the image's size free (the archive, one node's
# unpacked copy, the other node's import: blobs and snapshots), plus a margin; with less it is streamed.
ARCHIVE_ROOM = 4


class Cluster:
    def __init__(self, state: Path | None = None, name: str | None = None, workers: int | None = None,
                 node_image: str | None = None, bin_dir: Path | None = None):  # fmt: skip
        """`node_image` and `bin_dir` (where the binaries are built) for tests of the harness itself."""
        self.state = Path(state or os.environ.get("CODEX_CLUSTER_DIR", REPO / ".cluster")).resolve()
        self.name = name or os.environ.get("CODEX_KIND_CLUSTER", "codex")
        self.workers = int(os.environ.get("CODEX_CLUSTER_WORKERS", "2")) if workers is None else workers
        self.node_image = node_image or os.environ.get("CODEX_KIND_NODE_IMAGE")
        bin_dir = bin_dir or self.state / "bin"
        self.bin = bin_dir / "k8s"
        self.coredns = bin_dir / "coredns"
        self.kind = bin_dir / "kind"
        self.kubeconfig = self.state / "kubeconfig"
        self.volumes = self.state / "volumes"
        self.images = Images(self.state)

    # ------------------------------------------------------------------ build

    @property
    def version(self) -> str:
        return (SRC / "VERSION").read_text().split()[0]

    def build(self) -> str:
        """kubectl (the multi-call binary), CoreDNS, kind and the node image, each unless built already
        from the same sources; returns the node image."""
        v = self.version
        major, minor = v[1:].split(".")[:2]
        pkg = "k8s.io/component-base/version"
        stamp_version = [f"-X {pkg}.gitVersion={v}", f"-X {pkg}.gitMajor={major}", f"-X {pkg}.gitMinor={minor}",
                         f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
                         f"-X k8s.io/client-go/pkg/version.gitVersion={v}"]  # fmt: skip
        _go_build(SRC, self.bin, stamp_version)
        _go_build(DNS_SRC, self.coredns, [])
        kubectl = self.bin.parent / "kubectl"  # for people: PATH=$PWD/.cluster/bin:$PATH, then plain kubectl
        if not kubectl.is_symlink():
            kubectl.symlink_to(self.bin.name)
        node_image.build_kind(self.kind)
        node_image.build_crictl(self.bin.parent / "crictl")
        if self.node_image:
            return self.node_image
        return node_image.ensure_node_image(self.images, v, self.bin, self.coredns)

    # ------------------------------------------------------------------ up and down

    @contextlib.contextmanager
    def _locked(self):
        """One `up` or `down` at a time on a state directory, across processes."""
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def up(self) -> None:
        """Create the cluster unless it is up from the current node image. A cluster of this name that
        is not up, or was made from another image, or was left by a run that stopped (its checkout gone,
        or its test session no longer holding `session.lock`) is deleted first; one another checkout
        still uses is refused. A failed create deletes what it made."""
        with self._locked():
            image = self.build()
            if self.nodes():
                owner = self.owner()
                if owner is None:
                    raise RuntimeError(
                        f"a kind cluster named {self.name} exists and was not made by this harness: delete it "
                        f"(kind delete cluster --name {self.name}), or give this one another name (CODEX_KIND_CLUSTER)"
                    )
                if owner != self.state and _in_use(owner):
                    raise RuntimeError(
                        f"the kind cluster {self.name} is in use by another checkout ({owner}): run "
                        f"`make cluster-down` there, or give this one another name (CODEX_KIND_CLUSTER)"
                    )
                if owner == self.state and self.is_up() and self._image() == image:
                    self._network_up()  # a restarted node has lost its routes, and may have a new address
                    self._provisioner_up()
                    return
                print(f"deleting the kind cluster {self.name}: not up, from another node image, or left by "
                      "a stopped run", file=sys.stderr)  # fmt: skip
                self._kind("delete", "cluster", "--name", self.name)
            try:
                self._create(image)
            except BaseException:
                if self.owner() in (self.state, None):  # never another checkout's cluster of the same name
                    self._kind("delete", "cluster", "--name", self.name, check=False)
                self.kubeconfig.unlink(missing_ok=True)
                raise

    @contextlib.contextmanager
    def session(self):
        """Held by a test session for as long as it uses the cluster: another checkout's `up` then
        refuses to delete it, and once it is released (the session ended, or was killed) does not."""
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "session.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            yield

    def owner(self) -> Path | None:
        """The state directory of the checkout that created this cluster: the host directory its control
        plane mounts as the volumes directory (there from the moment the container exists)."""
        planes = self.nodes("control-plane")
        if not planes:
            return None
        r = self.images.docker("inspect", "-f", "{{json .Mounts}}", planes[0], check=False)
        mounts = json.loads(r.stdout.decode() or "[]") if r.returncode == 0 else []
        source = next((m["Source"] for m in mounts if m["Destination"] == node_image.VOLUMES_IN_NODE), None)
        return Path(source).parent if source else None

    def _image(self) -> str:
        planes = self.nodes("control-plane")
        r = self.images.docker("inspect", "-f", "{{.Config.Image}}", *planes[:1], check=False)
        return r.stdout.decode().strip()

    def _create(self, image: str) -> None:
        self.volumes.mkdir(parents=True, exist_ok=True)
        mount = [{"hostPath": str(self.volumes), "containerPath": node_image.VOLUMES_IN_NODE}]
        config = {
            "kind": "Cluster",
            "apiVersion": "kind.x-k8s.io/v1alpha4",
            "networking": {"disableDefaultCNI": True},
            "nodes": [{"role": "control-plane", "extraMounts": mount}]
            + [{"role": "worker", "extraMounts": mount} for _ in range(self.workers)],
        }
        config_file = self.state / "kind.yaml"
        config_file.write_text(json.dumps(config, indent=2))
        self._kind("create", "cluster", "--name", self.name, "--image", image, "--config", str(config_file),
                   "--kubeconfig", str(self.kubeconfig), capture=False)  # fmt: skip
        self._network_up()
        self._wait(self._nodes_ready, "every node Ready", 120)
        self._provisioner_up()
        self._wait(
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            "the default ServiceAccount",
            60,
        )
        self.kubectl("rollout", "status", "-n", "kube-system", "deployment/coredns", "--timeout=120s")

    def is_up(self) -> bool:
        if not self.kubeconfig.is_file() or not self._running():
            return False
        r = self.kubectl("get", "--raw", "/readyz", check=False)
        return r.returncode == 0 and r.stdout.strip() == "ok"

    def down(self) -> None:
        """Delete the cluster (its node containers and their volumes), its kubeconfig and its volumes."""
        with self._locked():
            owner = self.owner()
            if owner is not None and owner != self.state and _in_use(owner):
                raise RuntimeError(f"the kind cluster {self.name} is in use by another checkout ({owner}): "
                                   "`make cluster-down` there")  # fmt: skip
            if self.nodes():
                self._kind("delete", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig))
            self.kubeconfig.unlink(missing_ok=True)
            shutil.rmtree(self.volumes, ignore_errors=True)
            left = self.leftovers()
            if left:
                raise RuntimeError("cluster down left behind: " + "; ".join(left))

    def leftovers(self) -> list[str]:
        found = [f"node container {n}" for n in self.nodes()]
        if self.volumes.exists():
            found.append(f"volumes directory {self.volumes}")
        return found

    # ------------------------------------------------------------------ the nodes

    def nodes(self, role: str | None = None) -> list[str]:
        """This cluster's node containers, running or not (`role`: control-plane or worker)."""
        self.images.ensure_docker()  # a stopped dockerd hides containers that come back when it starts
        filters = ["--filter", f"label={CLUSTER_LABEL}={self.name}"]
        if role:
            filters += ["--filter", f"label={ROLE_LABEL}={role}"]
        out = self.images.docker("ps", "-a", *filters, "--format", "{{.Names}}").stdout.decode()
        return sorted(out.split())

    def _running(self) -> bool:
        names = self.nodes()
        if len(names) != self.workers + 1:
            return False
        out = self.images.docker("inspect", "-f", "{{.State.Running}}", *names, check=False).stdout.decode()
        return out.split() == ["true"] * len(names)

    def _network_up(self) -> None:
        """What kind's default CNI (kindnetd) does, once: each node's pod range on a ptp configuration,
        and on every node a route to every other node's range through that node's address."""
        nodes: dict[str, tuple[str, str]] = {}

        def ranges_assigned() -> bool:
            listed = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
            ours = set(self.nodes())  # not the fake nodes a benchmark's kwok may be running meanwhile
            for n in listed:
                if n["metadata"]["name"] not in ours:
                    continue
                address = next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
                if n["spec"].get("podCIDR"):
                    nodes[n["metadata"]["name"]] = (n["spec"]["podCIDR"], address)
            return len(nodes) == self.workers + 1

        self._wait(ranges_assigned, "a pod range on every node", 120)
        for name, (cidr, _) in nodes.items():
            conf = {
                "cniVersion": "0.4.0",
                "name": "codex",
                "plugins": [
                    {"type": "ptp", "ipMasq": False, "mtu": 1500,
                     "ipam": {"type": "host-local", "dataDir": "/run/cni-ipam-state", "routes": [{"dst": "0.0.0.0/0"}],
                              "ranges": [[{"subnet": cidr}]]}},
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            }  # fmt: skip
            self._exec(name, "sh", "-c", "cat > /etc/cni/net.d/10-codex.conflist", input=json.dumps(conf))
            # traffic leaving the pod network takes the node's address, as kindnetd does
            rule = ["POSTROUTING", "-t", "nat", "-s", POD_NETWORK, "!", "-d", POD_NETWORK, "-j", "MASQUERADE"]
            if self._exec(name, "iptables", "-C", *rule, check=False).returncode != 0:
                self._exec(name, "iptables", "-A", *rule)
            for other, (other_cidr, other_address) in nodes.items():
                if other != name:
                    self._exec(name, "ip", "route", "replace", other_cidr, "via", other_address)

    def _provisioner_up(self) -> None:
        """The provisioner's systemd unit in the control-plane node (in the node image), restarted by
        systemd when it exits and started again with the node; its log: journalctl -u codex-provisioner."""
        self._exec(self.nodes("control-plane")[0], "systemctl", "enable", "--now", node_image.PROVISIONER_UNIT)

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}",
                           check=False).stdout.split()  # fmt: skip
        return out == ["True"] * (self.workers + 1)

    def _exec(self, node: str, *cmd: str, input: str | None = None, check: bool = True):
        r = subprocess.run(["docker", "exec", "-i", node, *cmd], input=input, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} on {node} failed: {r.stderr.strip()}")
        return r

    def _kind(self, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
        self.images.ensure_docker()
        env = dict(os.environ)
        if node_image.privileged_refused(self.images):
            env["CODEX_KIND_NO_PRIVILEGED"] = "1"  # kind-unprivileged.patch
        r = subprocess.run([str(self.kind), *args], env=env, capture_output=capture, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"kind {' '.join(args)} failed: {(r.stderr or '').strip()[-3000:]}")
        return r

    # ------------------------------------------------------------------ helpers for tests

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [str(self.bin), "kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def load_image(self, tag: str) -> None:
        """Put a Docker image on the nodes that run pods (the workers), as a pull would, skipping a node
        that has this very image (kind's own check, through the node's crictl). Each node in turn imports
        it and drops the imported layers once unpacked. Where the disk has room, Docker writes the image
        once, as an archive in the volumes directory every node mounts, and each node imports that file:
        for the 6 GB trainer image about 24 GB of disk at the peak (the archive, one node's unpacked copy,
        the other's import). Where it has not, `docker save` is streamed into each node through `docker
        exec`: about 18 GB at the peak, but the image is saved once per node and every byte passes through
        the Docker daemon's exec stream, minutes of CPU more for the trainer image. `kind load
        docker-image` imports into every node at once and keeps the layers: about 30 GB."""
        with self._locked():  # two loads into one node would drop layers the other is unpacking
            self._load(tag)

    def _load(self, tag: str) -> None:
        image = json.loads(self.images.docker("image", "inspect", tag).stdout)[0]
        nodes = []
        for node in self.nodes("worker") or self.nodes():
            r = self._exec(node, "crictl", "inspecti", "-o", "json", tag, check=False)
            if r.returncode != 0 or json.loads(r.stdout)["status"]["id"] != image["Id"]:
                nodes.append(node)
        if not nodes:
            return
        self.volumes.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(self.volumes).free >= ARCHIVE_ROOM * image["Size"] + 10 * 2**30:
            self._load_from_archive(tag, image["Id"], nodes)
            return
        for node in nodes:
            started = time.monotonic()
            cmd = (f"docker save {shlex.quote(tag)} | docker exec -i {node} ctr --namespace=k8s.io images import "
                   "--all-platforms --snapshotter=overlayfs -")  # fmt: skip
            r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
            self._imported(node, tag, r, started, " (streamed)")

    def _load_from_archive(self, tag: str, image_id: str, nodes: list[str]) -> None:
        archive = self.volumes / ".images" / f"{image_id.split(':')[-1][:16]}.tar"
        archive.parent.mkdir(exist_ok=True)
        in_node = f"{node_image.VOLUMES_IN_NODE}/.images/{archive.name}"
        try:
            started = time.monotonic()
            r = self.images.docker("save", "-o", str(archive), tag, check=False)
            if r.returncode != 0:
                raise RuntimeError(f"docker save {tag} failed: {r.stderr.decode().strip()[-2000:]}")
            print(f"saved {tag} in {time.monotonic() - started:.0f} s", file=sys.stderr)
            for node in nodes:
                started = time.monotonic()
                r = self._exec(node, "ctr", "--namespace=k8s.io", "images", "import", "--all-platforms",
                               "--snapshotter=overlayfs", in_node, check=False)  # fmt: skip
                self._imported(node, tag, r, started)
        finally:
            archive.unlink(missing_ok=True)

    def _imported(self, node: str, tag: str, r: subprocess.CompletedProcess, started: float, how: str = "") -> None:
        """After `ctr images import` into `node`: its failure raised, or the imported layers dropped."""
        if r.returncode != 0:
            raise RuntimeError(f"loading {tag} into {node} failed: {r.stderr.strip()[-2000:]}")
        self._exec(node, "sh", "-s", tag, input=DISCARD_LAYERS)
        print(f"loaded {tag} into {node}{how} in {time.monotonic() - started:.0f} s", file=sys.stderr)

    def host_path(self, node_path: str) -> Path:
        """Where a volume's directory in the nodes is on this machine."""
        return self.volumes / Path(node_path).relative_to(node_image.VOLUMES_IN_NODE)

    def _wait(self, cond, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} on the kind cluster {self.name}")


def _in_use(state: Path) -> bool:
    """Whether the checkout with this state directory still uses its cluster: its kubeconfig is there, and
    a test session holds its session lock, or no session ever ran there (`make cluster-up`)."""
    if not (state / "kubeconfig").is_file():
        return False
    lock = state / "session.lock"
    if not lock.exists():
        return True
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _go_build(src: Path, out: Path, ldflags: list[str]) -> None:
    stamp = node_image.sources_hash(src)
    stamp_file = out.with_suffix(".stamp")
    if out.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    started = time.monotonic()
    flags = " ".join(["-s -w", *ldflags])
    with node_image.go_env(out) as env:
        subprocess.run(["go", "build", "-buildvcs=false", "-trimpath", "-ldflags", flags, "-o", str(tmp), "."],
                       cwd=src, check=True, env=env)  # fmt: skip
    os.replace(tmp, out)
    stamp_file.write_text(stamp)
    print(f"built {out} in {time.monotonic() - started:.0f} s", file=sys.stderr)


def main() -> None:
    cluster = Cluster()
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "up":
        started = time.monotonic()
        cluster.up()
        print(f"cluster up in {time.monotonic() - started:.0f} s; export KUBECONFIG={cluster.kubeconfig}")
    elif command == "down":
        cluster.down()
        print("cluster down")
    elif command == "build":
        print(cluster.build())
    elif command == "status":
        print(f"kind cluster {cluster.name}: {'up' if cluster.is_up() else 'not up'}")
        for node in cluster.nodes():
            print(f"  {node}")
        if not cluster.is_up():
            print(f"leftovers: {'; '.join(cluster.leftovers()) or 'none'}")
    else:
        sys.exit(f"usage: {sys.argv[0]} up|down|status|build")


if __name__ == "__main__":
    main()
