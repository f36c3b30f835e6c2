"""A one-node Kubernetes cluster on this machine, from upstream components, for our tests.

    python tests/cluster/cluster.py up      # build (cached), start, wait until the node is Ready
    python tests/cluster/cluster.py down    # stop everything, remove mounts, links, rules and state
    python tests/cluster/cluster.py status

Components: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy
from one binary built from the Go module proxy (tests/cluster/k8s); containerd, runc and the CNI
bridge from Debian. Everything listens on loopback or on the cluster's own bridge (10.244.0.1),
runs as a process this harness starts, and is stopped by `down`. The default StorageClass is served
by tests/cluster/provisioner.py: world-writable host-path volumes under the state directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from images import Images  # noqa: E402
from pki import Pki  # noqa: E402
from procs import running  # noqa: E402
from provisioner import NAME as PROVISIONER  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SRC = Path(__file__).resolve().parent / "k8s"
DNS_SRC = Path(__file__).resolve().parent / "coredns"
NODE = "codex-node"
BRIDGE, NODE_IP, POD_CIDR = "codex0", "10.244.0.1", "10.244.0.0/24"
SERVICE_CIDR, API_SERVICE_IP, DNS_IP = "10.96.0.0/24", "10.96.0.1", "10.96.0.10"
ETCD_PORT, API_PORT = 23790, 6443
PAUSE = "codex.local/pause:1"
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet",
              "kube-proxy", "coredns", "provisioner"]  # fmt: skip
DNS_HEALTH, DNS_READY = 18080, 18181


class Cluster:
    def __init__(self, state: Path | None = None):
        self.state = Path(state or os.environ.get("CODEX_CLUSTER_DIR", REPO / ".cluster")).resolve()
        self.bin = self.state / "bin" / "k8s"
        self.coredns = self.state / "bin" / "coredns"
        self.run_dir = Path("/run") / f"codex-cluster-{hashlib.sha256(str(self.state).encode()).hexdigest()[:8]}"
        self.pki = Pki(self.state / "pki")
        self.kubeconfig = self.state / "kubeconfig"
        self.server = f"https://{NODE_IP}:{API_PORT}"
        self.images = Images(self.state, self.containerd_socket)

    # ------------------------------------------------------------------ build

    @property
    def version(self) -> str:
        return (SRC / "VERSION").read_text().split()[0]

    def build(self) -> Path:
        """Build the multi-call binary and CoreDNS, each unless built already from the same sources."""
        v = self.version
        major, minor = v[1:].split(".")[:2]
        pkg = "k8s.io/component-base/version"
        stamp_version = [f"-X {pkg}.gitVersion={v}", f"-X {pkg}.gitMajor={major}", f"-X {pkg}.gitMinor={minor}",
                         f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
                         f"-X k8s.io/client-go/pkg/version.gitVersion={v}"]  # fmt: skip
        _go_build(SRC, self.bin, stamp_version)
        _go_build(DNS_SRC, self.coredns, [])
        return self.bin

    # ------------------------------------------------------------------ up

    @contextlib.contextmanager
    def _locked(self):
        """One `up` or `down` at a time on a state directory, across processes: test sessions run
        side by side, and an `up` that starts while a `down` removes pid files leaves orphans."""
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def up(self) -> None:
        with self._locked():
            self._up()

    def _up(self) -> None:
        if self.is_up():
            return
        self.build()
        for d in ("logs", "pids", "etcd", "kubelet", "cni/net.d", "containerd", "volumes"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pki.create([NODE_IP, API_SERVICE_IP], NODE)
        self.pki.kubeconfig("admin", self.server, self.kubeconfig)
        for who in ("controller-manager", "scheduler", "kubelet", "kube-proxy"):
            self.pki.kubeconfig(who, self.server, self.state / f"{who}.kubeconfig")
        self._network_up()
        self._start("etcd", self._etcd_args())
        self._start("kube-apiserver", self._apiserver_args())
        self._wait(self._api_ready, "kube-apiserver /readyz", 90)
        self._start("kube-controller-manager", self._controller_manager_args())
        self._start("kube-scheduler", self._scheduler_args())
        self._write_containerd_config()
        self._start("containerd", ["containerd", "--config", str(self.state / "containerd" / "config.toml")], raw=True)
        self._wait(lambda: Path(self.containerd_socket).exists(), "containerd socket", 30)
        self.images.ensure_pause(PAUSE)
        self._write_kubelet_config()
        self._start("kubelet", self._kubelet_args())
        self._start("kube-proxy", self._proxy_args())
        self._wait(self._node_ready, f"node {NODE} Ready", 120)
        old = self.kubectl("get", "storageclass", "standard", "-o", "jsonpath={.provisioner}", check=False).stdout
        if old and old != PROVISIONER:  # a class's provisioner cannot be changed, only the class replaced
            self.kubectl("delete", "storageclass", "standard")
        self.kubectl("apply", "-f", "-", input=_STORAGE_CLASS)
        self._start("provisioner", self._provisioner_args(), raw=True)
        self._dns_up()
        self._wait(
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            "the default ServiceAccount",
            60,
        )

    def is_up(self) -> bool:
        return all(self._alive(c) for c in COMPONENTS) and self._api_ready()

    # ------------------------------------------------------------------ down

    def down(self) -> None:
        """Stop every process, then remove what they left: containers, mounts, links, rules, state."""
        with self._locked():
            self._down()

    def _down(self) -> None:
        for name in ("kube-proxy", "kubelet"):  # first, or the kubelet restarts what we remove
            self._stop(name)
        if self._alive("containerd"):
            self.images.remove_all_containers()
        for name in reversed(COMPONENTS):
            self._stop(name)
        self._kill_shims()
        if self.bin.is_file():
            subprocess.run([str(self.bin), "kube-proxy", "--cleanup"], capture_output=True)
        self._network_down()
        self._unmount_under(self.state)
        self._unmount_under(self.run_dir)
        self.images.stop_docker()
        for d in ("etcd", "kubelet", "containerd", "cni", "volumes", "pids", "pki"):
            shutil.rmtree(self.state / d, ignore_errors=True)
        for f in self.state.glob("*.kubeconfig"):
            f.unlink()
        self.kubeconfig.unlink(missing_ok=True)
        (self.state / "Corefile").unlink(missing_ok=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        left = self.leftovers()
        if left:
            raise RuntimeError("cluster down left behind: " + "; ".join(left))

    def leftovers(self) -> list[str]:
        """Processes, mounts, links and ports of this cluster that are still there. Every process the
        harness starts names the state directory or the containerd socket on its command line (the
        provisioner its kubeconfig and volumes directory), so the scan of /proc finds them all."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.state) in cmdline or self.containerd_socket in cmdline:
                found.append(f"process {proc.name}: {cmdline[:80]}")
        for line in Path("/proc/self/mounts").read_text().splitlines():
            mountpoint = line.split()[1]
            if mountpoint.startswith((str(self.state) + "/", str(self.run_dir))):
                found.append(f"mount {mountpoint}")
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0:
            found.append(f"link {BRIDGE}")
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout.splitlines()
        found += [f"iptables chain {r[1:].split()[0]}" for r in rules if r.startswith((":KUBE-", ":CNI-"))]
        for port in (ETCD_PORT, ETCD_PORT + 1, ETCD_PORT + 2, 10248, 10249, 10256, 10257, 10259, DNS_HEALTH, DNS_READY):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    found.append(f"port 127.0.0.1:{port}")
        return found

    # ------------------------------------------------------------------ helpers for tests

    @property
    def containerd_socket(self) -> str:
        return str(self.run_dir / "containerd.sock")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [str(self.bin), "kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def load_image(self, tag: str) -> None:
        """Make a locally built Docker image available to the node's containerd."""
        self.images.load(tag)

    # ------------------------------------------------------------------ components

    def _etcd_args(self) -> list[str]:
        url = f"http://127.0.0.1:{ETCD_PORT}"
        return ["etcd", "--data-dir", str(self.state / "etcd"), "--listen-client-urls", url,
                "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PORT + 1}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PORT + 1}",
                "--initial-cluster", f"default=http://127.0.0.1:{ETCD_PORT + 1}",
                "--listen-metrics-urls", f"http://127.0.0.1:{ETCD_PORT + 2}",
                "--quota-backend-bytes", str(2 << 30), "--unsafe-no-fsync"]  # fmt: skip

    def _apiserver_args(self) -> list[str]:
        p = self.pki.path
        return ["kube-apiserver", "--etcd-servers", f"http://127.0.0.1:{ETCD_PORT}",
                "--bind-address", NODE_IP, "--advertise-address", NODE_IP, "--secure-port", str(API_PORT),
                "--tls-cert-file", str(p("apiserver", "crt")), "--tls-private-key-file", str(p("apiserver", "key")),
                "--client-ca-file", str(p("ca", "crt")),
                "--kubelet-client-certificate", str(p("apiserver-kubelet-client", "crt")),
                "--kubelet-client-key", str(p("apiserver-kubelet-client", "key")),
                "--kubelet-preferred-address-types", "InternalIP",  # the node's name is in no DNS
                "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file", str(p("service-account", "pub")),
                "--service-account-signing-key-file", str(p("service-account", "key")),
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--authorization-mode", "Node,RBAC",
                "--enable-admission-plugins", "NodeRestriction",  # ServiceAccount and PodSecurity are on by default
                "--allow-privileged=true", "--profiling=false", "--v=1"]  # fmt: skip

    def _controller_manager_args(self) -> list[str]:
        p = self.pki.path
        return ["kube-controller-manager", "--kubeconfig", str(self.state / "controller-manager.kubeconfig"),
                "--authentication-kubeconfig", str(self.state / "controller-manager.kubeconfig"),
                "--authorization-kubeconfig", str(self.state / "controller-manager.kubeconfig"),
                "--bind-address", "127.0.0.1", "--leader-elect=false",
                "--service-account-private-key-file", str(p("service-account", "key")),
                "--root-ca-file", str(p("ca", "crt")), "--use-service-account-credentials",
                "--cluster-signing-cert-file", str(p("ca", "crt")), "--cluster-signing-key-file", str(p("ca", "key")),
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--v=1"]  # fmt: skip

    def _scheduler_args(self) -> list[str]:
        kc = str(self.state / "scheduler.kubeconfig")
        return ["kube-scheduler", "--kubeconfig", kc, "--authentication-kubeconfig", kc,
                "--authorization-kubeconfig", kc, "--bind-address", "127.0.0.1", "--leader-elect=false",
                "--v=1"]  # fmt: skip

    def _provisioner_args(self) -> list[str]:
        return [sys.executable, "-u", str(Path(__file__).resolve().parent / "provisioner.py"),
                "--kubectl", str(self.bin), "--kubeconfig", str(self.kubeconfig),
                "--volumes", str(self.state / "volumes"), "--name", PROVISIONER]  # fmt: skip

    def _kubelet_args(self) -> list[str]:
        return ["kubelet", "--config", str(self.state / "kubelet" / "config.yaml"),
                "--kubeconfig", str(self.state / "kubelet.kubeconfig"), "--root-dir", str(self.state / "kubelet"),
                "--hostname-override", NODE, "--node-ip", NODE_IP, "--v=1"]  # fmt: skip

    def _proxy_args(self) -> list[str]:
        return ["kube-proxy", "--kubeconfig", str(self.state / "kube-proxy.kubeconfig"),
                "--hostname-override", NODE, "--cluster-cidr", POD_CIDR, "--proxy-mode", "iptables",
                "--bind-address", NODE_IP, "--healthz-bind-address", "127.0.0.1:10256",
                "--metrics-bind-address", "127.0.0.1:10249", "--conntrack-max-per-core", "0", "--v=1"]  # fmt: skip

    def _write_kubelet_config(self) -> None:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "healthzBindAddress": "127.0.0.1",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki.path("ca", "crt"))},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(self.pki.path("kubelet-server", "crt")),
            "tlsPrivateKeyFile": str(self.pki.path("kubelet-server", "key")),
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "failCgroupV1": False,
            "clusterDomain": "cluster.local",
            "clusterDNS": [DNS_IP],
            "resolvConf": "/etc/resolv.conf",
            "imageGCHighThresholdPercent": 100,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": False,
            "localStorageCapacityIsolation": True,
        }
        (self.state / "kubelet" / "config.yaml").write_text(json.dumps(config, indent=2))

    def _write_containerd_config(self) -> None:
        c = self.state / "containerd"
        (c / "config.toml").write_text(
            f"""version = 2
root = "{c / "root"}"
state = "{self.run_dir / "containerd-state"}"
[grpc]
  address = "{self.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  # this machine's root lacks CAP_SYS_RESOURCE: the kubelet's negative OOM scores (-998 for the
  # sandbox) cannot be set, so containerd raises them to its own, as it does for rootless setups
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.state / "cni" / "net.d"}"
"""
        )
        cni = {
            "cniVersion": "1.0.0",
            "name": "codex",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP, "rangeStart": "10.244.0.10"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.state / "cni" / "ipam"),
                    },
                },
                # Docker sets the FORWARD policy to DROP, and bridged pod traffic passes FORWARD (bridge-nf):
                # the firewall plugin accepts each pod's traffic in its CNI-FORWARD chain (removed on down)
                {"type": "firewall", "backend": "iptables"},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.state / "cni" / "net.d" / "10-codex.conflist").write_text(json.dumps(cni, indent=2))

    def _dns_up(self) -> None:
        """CoreDNS as a process on the node's address, behind the kube-dns Service the kubelet
        gives pods as their resolver: Service and pod names, headless ones included, resolve."""
        corefile = self.state / "Corefile"
        corefile.write_text(
            f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{DNS_HEALTH}
    ready 127.0.0.1:{DNS_READY}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig} codex
        pods insecure
    }}
    cache 5
}}
"""
        )
        self._start("coredns", [str(self.coredns), "-conf", str(corefile)], raw=True)
        self.kubectl("apply", "-f", "-", input=_KUBE_DNS)

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{DNS_READY}/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        self._wait(ready, "CoreDNS ready", 60)

    # ------------------------------------------------------------------ network

    def _network_up(self) -> None:
        """The cluster's own bridge: the node's address, the API server's, and the pods' gateway."""
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
            subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        for key, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
            path = Path("/proc/sys") / key
            if path.exists():
                path.write_text(value)

    def _network_down(self) -> None:
        netns = Path("/run/netns")
        for ns in netns.glob("cni-*") if netns.is_dir() else []:
            subprocess.run(["umount", str(ns)], capture_output=True)
            ns.unlink(missing_ok=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        _remove_iptables_chains(("KUBE-", "CNI-"))

    # ------------------------------------------------------------------ processes

    def _start(self, name: str, args: list[str], raw: bool = False) -> None:
        if self._alive(name):
            return
        log = (self.state / "logs" / f"{name}.log").open("ab")
        cmd = args if raw else [str(self.bin), *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        (self.state / "pids" / f"{name}.pid").write_text(str(proc.pid))
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at once; see {self.state / 'logs' / f'{name}.log'}")

    def _pid(self, name: str) -> int | None:
        f = self.state / "pids" / f"{name}.pid"
        return int(f.read_text()) if f.is_file() else None

    def _alive(self, name: str) -> bool:
        pid = self._pid(name)
        return pid is not None and running(pid)

    def _stop(self, name: str, grace: float = 15) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._alive(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        (self.state / "pids" / f"{name}.pid").unlink(missing_ok=True)

    def _kill_shims(self) -> None:
        """containerd-shim processes outlive containerd by design; ours name our socket."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "containerd-shim" in cmdline and self.containerd_socket in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    @staticmethod
    def _unmount_under(root: Path) -> None:
        prefix = str(root) + "/"
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)

    # ------------------------------------------------------------------ readiness

    def _api_ready(self) -> bool:
        if not self.pki.path("admin", "crt").is_file():
            return False
        ctx = ssl.create_default_context(cafile=str(self.pki.path("ca", "crt")))
        ctx.load_cert_chain(str(self.pki.path("admin", "crt")), str(self.pki.path("admin", "key")))
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=3) as r:
                return r.status == 200
        except OSError:
            return False

    def _node_ready(self) -> bool:
        r = self.kubectl("get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                         check=False)  # fmt: skip
        return r.stdout.strip() == "True"

    def _wait(self, cond, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            for name in COMPONENTS:
                if self._pid(name) is not None and not self._alive(name):
                    raise RuntimeError(f"{name} died while waiting for {what}; see {self.state}/logs/{name}.log")
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.state}/logs")


def _remove_iptables_chains(prefixes: tuple[str, ...]) -> None:
    """Delete the rules that jump to chains with these prefixes, then the chains (the kubelet's
    canary and firewall chains stay behind after `kube-proxy --cleanup`)."""
    for table in ("filter", "nat", "mangle"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout.splitlines()
        chains = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(prefixes)]
        for rule in rules:
            parts = rule.split()
            if parts[0] == "-A" and not parts[1].startswith(prefixes) and any(c in parts for c in chains):
                subprocess.run(["iptables", "-t", table, "-D", *parts[1:]], capture_output=True)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)


def _go_build(src: Path, out: Path, ldflags: list[str]) -> None:
    stamp = hashlib.sha256(b"".join((src / f).read_bytes() for f in ("go.mod", "go.sum", "main.go"))).hexdigest()
    stamp_file = out.with_suffix(".stamp")
    if out.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    started = time.monotonic()
    flags = " ".join(["-s -w", *ldflags])
    subprocess.run(["go", "build", "-buildvcs=false", "-trimpath", "-ldflags", flags, "-o", str(tmp), "."],
                   cwd=src, check=True)  # fmt: skip
    os.replace(tmp, out)
    stamp_file.write_text(stamp)
    print(f"built {out} in {time.monotonic() - started:.0f} s", file=sys.stderr)


_KUBE_DNS = f"""
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  clusterIP: {DNS_IP}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels: {{kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: codex-test-cluster}}
addressType: IPv4
endpoints:
- addresses: ["{NODE_IP}"]
  conditions: {{ready: true}}
ports:
- {{name: dns, port: 53, protocol: UDP}}
- {{name: dns-tcp, port: 53, protocol: TCP}}
"""

_STORAGE_CLASS = f"""
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {{storageclass.kubernetes.io/is-default-class: "true"}}
provisioner: {PROVISIONER}
reclaimPolicy: Delete
volumeBindingMode: Immediate
"""


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
        cluster.build()
    elif command == "status":
        for name in COMPONENTS:
            print(f"{name:<24} {'running' if cluster._alive(name) else 'stopped'}")
        print(f"{'api /readyz':<24} {'ok' if cluster._api_ready() else 'no'}")
    else:
        sys.exit(f"usage: {sys.argv[0]} up|down|status|build")


if __name__ == "__main__":
    main()
