"""A one-node Kubernetes cluster on this machine, from upstream components, for our tests.

    python tests/cluster/cluster.py up      # build (cached), start, wait until the node is Ready
    python tests/cluster/cluster.py down    # stop everything, remove mounts, links, rules and state
    python tests/cluster/cluster.py status

Components: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy
from one binary built from the Go module proxy (tests/cluster/k8s); containerd, runc and the CNI
bridge from Debian. Everything listens on loopback or on the cluster's own bridge (10.244.0.1),
runs as a process this harness starts, and is stopped by `down`. The default StorageClass is served
by tests/cluster/provisioner.py: world-writable host-path volumes under the state directory.

It touches only what it made. `up` refuses to start, changing nothing, when another cluster's
iptables chains (KUBE-*, CNI-*), the bridge, the node's address or one of the ports below are
already there; it then records the sysctls it and the kubelet may change in the run directory
(host.json) before changing any. `down` removes the chains, the bridge and the mounts only while
that record says they are ours, puts the sysctls back, and signals a pid from a pid file only while
that process still runs the command line we started. A failed `up` runs `down` before it raises.
A run killed before its `down` (its processes gone, its record left) is cleaned up by the next `up`
from any checkout, with that run's record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shlex
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
from procs import our_pid, signal_group, write_pid_file  # noqa: E402
from provisioner import NAME as PROVISIONER  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SRC = Path(__file__).resolve().parent / "k8s"
DNS_SRC = Path(__file__).resolve().parent / "coredns"


def _setting(name: str, default: str) -> str:
    return os.environ.get(f"CODEX_CLUSTER_{name}", default)


# Every address and port the cluster takes, each overridable as CODEX_CLUSTER_<NAME> (docs/development.md lists
# them), so that a second checkout can take others. Loopback ports are checked free before `up`.
BRIDGE = _setting("BRIDGE", "codex0")
POD_CIDR = _setting("POD_CIDR", "10.244.0.0/24")  # the bridge takes the first address: the node's
SERVICE_CIDR = _setting("SERVICE_CIDR", "10.96.0.0/24")  # the API Service takes the first, DNS the tenth
ETCD_PORT = int(_setting("ETCD_PORT", "23790"))  # client; peer and metrics on the next two
API_PORT = int(_setting("API_PORT", "6443"))  # on the node's address
KUBELET_PORT = int(_setting("KUBELET_PORT", "10250"))  # on the node's address
KUBELET_HEALTHZ_PORT = int(_setting("KUBELET_HEALTHZ_PORT", "10248"))
PROXY_METRICS_PORT = int(_setting("PROXY_METRICS_PORT", "10249"))
PROXY_HEALTHZ_PORT = int(_setting("PROXY_HEALTHZ_PORT", "10256"))
CONTROLLER_MANAGER_PORT = int(_setting("CONTROLLER_MANAGER_PORT", "10257"))
SCHEDULER_PORT = int(_setting("SCHEDULER_PORT", "10259"))
DNS_HEALTH, DNS_READY = int(_setting("DNS_HEALTH_PORT", "18080")), int(_setting("DNS_READY_PORT", "18181"))
LOOPBACK_PORTS = (ETCD_PORT, ETCD_PORT + 1, ETCD_PORT + 2, KUBELET_HEALTHZ_PORT, PROXY_METRICS_PORT,
                  PROXY_HEALTHZ_PORT, CONTROLLER_MANAGER_PORT, SCHEDULER_PORT, DNS_HEALTH, DNS_READY)  # fmt: skip
_pods, _services = ipaddress.ip_network(POD_CIDR), ipaddress.ip_network(SERVICE_CIDR)
NODE_IP, POD_RANGE_START = str(_pods[1]), str(_pods[10])
API_SERVICE_IP, DNS_IP = str(_services[1]), str(_services[10])

NODE = "codex-node"
PAUSE = "codex.local/pause:1"
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet",
              "kube-proxy", "coredns", "provisioner"]  # fmt: skip
CNI_NETWORK = "codex"
CHAIN_PREFIXES = ("KUBE-", "CNI-")
# Set by `up` (the first two) or by the kubelet (setupKernelTunables); recorded before and put back by `down`.
SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "vm/overcommit_memory", "vm/panic_on_oom",
           "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
           "net/ipv4/conf/all/route_localnet")  # fmt: skip


class Cluster:
    def __init__(self, state: Path | None = None, broken: str | None = None):
        """`broken` names a component to start with an argument it refuses, so that `up` fails there:
        the test that a failed `up` leaves nothing behind."""
        self.broken = broken
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
        kubectl = self.bin.parent / "kubectl"  # for people: PATH=$PWD/.cluster/bin:$PATH, then plain kubectl
        if not kubectl.is_symlink():
            kubectl.symlink_to(self.bin.name)
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
        """Start what is not running. Refuses, changing nothing, when the host has another cluster's
        networking; when a step fails, stops and removes what it started before raising."""
        with self._locked():
            if self.is_up():
                return
            self.build()
            if self._host_record() is None:
                for stale in self.dead_runs():
                    print(f"removing what a killed test cluster run left ({stale.state})", file=sys.stderr)
                    stale.down()
                taken = self.conflicts()
                if taken:
                    raise RuntimeError(
                        "refusing to start the test cluster: this machine already has "
                        + "; ".join(taken)
                        + ". Another cluster (k3s, microk8s, kind, a second checkout) or one this harness left"
                        " must go first, or take other addresses and ports (CODEX_CLUSTER_* in docs/development.md)."
                    )
            try:
                self._up()
            except BaseException:
                try:
                    self._down()
                except Exception as e:  # the first error is the one to see; this one is printed
                    print(f"cleaning up after the failed up: {e}", file=sys.stderr)
                raise

    def conflicts(self) -> list[str]:
        """What on this host the cluster would collide with: chains of the kind kube-proxy, the kubelet
        and the CNI plugins write, the bridge, the node's address, a loopback port in use."""
        chains = [f"{tool} {chain}" for tool, chain in _chains()]
        found = [f"{len(chains)} KUBE-*/CNI-* chains ({', '.join(chains[:3])}{', ...' if len(chains) > 3 else ''})"]
        found = found if chains else []
        if _link_exists(BRIDGE):
            found.append(f"a network link {BRIDGE}")
        addr = subprocess.run(["ip", "-o", "addr", "show", "to", NODE_IP], capture_output=True, text=True).stdout
        if addr.strip():
            found.append(f"the address {NODE_IP} (on {addr.split()[1]})")
        found += [f"port 127.0.0.1:{port} in use" for port in LOOPBACK_PORTS if _port_open(port)]
        return found

    def dead_runs(self) -> list[Cluster]:
        """This harness's clusters from other state directories (another clone, a finished temporary
        checkout) whose host record is still there but none of whose processes run: a run killed before
        its `down`. Their record says what they changed, so their `down` can put it back."""
        found = []
        for record_file in Path("/run").glob("codex-cluster-*/host.json"):
            if record_file.parent == self.run_dir:
                continue
            try:
                state = json.loads(record_file.read_text())["state"]
            except (OSError, ValueError, KeyError):
                continue  # a record from before records named their state directory
            other = Cluster(Path(state))
            if other.run_dir == record_file.parent and not other._processes():
                found.append(other)
        return found

    def _up(self) -> None:
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
        containers = self.images.remove_all_containers() if self._alive("containerd") else []
        for name in reversed(COMPONENTS):
            self._stop(name)
        self._kill_shims()
        record = self._host_record()
        if record is not None:  # the host's networking changes are ours only while the record exists
            if self.bin.is_file():
                subprocess.run([str(self.bin), "kube-proxy", "--cleanup"], capture_output=True)
            _remove_chains()
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        _remove_cni_results(containers)
        _remove_links_into(Path("/var/log/containers"), self.state)  # the kubelet's links to pod logs
        self._unmount_under(self.state)
        self._unmount_under(self.run_dir)
        self.images.stop_docker()
        if record is not None:
            _restore_sysctls(record["sysctls"])
        for d in ("etcd", "kubelet", "containerd", "cni", "volumes", "pids", "pki"):
            shutil.rmtree(self.state / d, ignore_errors=True)
        for f in self.state.glob("*.kubeconfig"):
            f.unlink()
        self.kubeconfig.unlink(missing_ok=True)
        (self.state / "Corefile").unlink(missing_ok=True)
        for entry in self.run_dir.iterdir() if self.run_dir.is_dir() else []:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            elif entry != self._record_file:
                entry.unlink(missing_ok=True)
        left = self.leftovers()
        if left:  # the record stays, so that another `down` still knows what is ours
            raise RuntimeError("cluster down left behind: " + "; ".join(left))
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Processes, mounts, links and ports of this cluster that are still there, and while the host
        record exists (from `up` until `down` has restored everything) the chains and changed sysctls.
        Every process the harness starts names the state directory or the containerd socket on its
        command line (the provisioner its kubeconfig and volumes directory), so the scan of /proc finds
        them all."""
        found = self._processes()
        for line in Path("/proc/self/mounts").read_text().splitlines():
            mountpoint = line.split()[1]
            if mountpoint.startswith((str(self.state) + "/", str(self.run_dir))):
                found.append(f"mount {mountpoint}")
        if _link_exists(BRIDGE):
            found.append(f"link {BRIDGE}")
        found += [f"port 127.0.0.1:{port}" for port in LOOPBACK_PORTS if _port_open(port)]
        record = self._host_record()
        if record is not None:
            found += [f"{tool} chain {chain}" for tool, chain in _chains()]
            found += [f"sysctl {k} is {v}, was {record['sysctls'][k]}" for k, v in _sysctls().items()
                      if k in record["sysctls"] and v != record["sysctls"][k]]  # fmt: skip
        return found

    def _processes(self) -> list[str]:
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
        return found

    @property
    def _record_file(self) -> Path:
        return self.run_dir / "host.json"

    def _host_record(self) -> dict | None:
        """What the host was like before our `up` changed it; its existence says the changes are ours."""
        try:
            return json.loads(self._record_file.read_text())
        except (OSError, ValueError):
            return None

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
                "--bind-address", "127.0.0.1", "--secure-port", str(CONTROLLER_MANAGER_PORT), "--leader-elect=false",
                "--service-account-private-key-file", str(p("service-account", "key")),
                "--root-ca-file", str(p("ca", "crt")), "--use-service-account-credentials",
                "--cluster-signing-cert-file", str(p("ca", "crt")), "--cluster-signing-key-file", str(p("ca", "key")),
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--v=1"]  # fmt: skip

    def _scheduler_args(self) -> list[str]:
        kc = str(self.state / "scheduler.kubeconfig")
        return ["kube-scheduler", "--kubeconfig", kc, "--authentication-kubeconfig", kc,
                "--authorization-kubeconfig", kc, "--bind-address", "127.0.0.1",
                "--secure-port", str(SCHEDULER_PORT), "--leader-elect=false",
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
                "--bind-address", NODE_IP, "--healthz-bind-address", f"127.0.0.1:{PROXY_HEALTHZ_PORT}",
                "--metrics-bind-address", f"127.0.0.1:{PROXY_METRICS_PORT}",
                # 0: leave the host's conntrack table size and timeouts as they are
                "--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0",
                "--conntrack-tcp-timeout-close-wait", "0", "--v=1"]  # fmt: skip

    def _write_kubelet_config(self) -> None:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": KUBELET_PORT,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki.path("ca", "crt"))},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(self.pki.path("kubelet-server", "crt")),
            "tlsPrivateKeyFile": str(self.pki.path("kubelet-server", "key")),
            "podLogsDir": str(self.state / "kubelet" / "pod-logs"),  # not /var/log/pods
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
  # pods' network namespaces under containerd's state directory (in our run directory), not /run/netns
  netns_mounts_under_state_dir = true
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
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP, "rangeStart": POD_RANGE_START}]],
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
        """The cluster's own bridge: the node's address, the API server's, and the pods' gateway. The
        sysctls are recorded first (once per `up`ed cluster: a second `up` must not record ours)."""
        if self._host_record() is None:
            tmp = self._record_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"state": str(self.state), "sysctls": _sysctls()}, indent=2))
            os.replace(tmp, self._record_file)
        if not _link_exists(BRIDGE):
            subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "replace", f"{NODE_IP}/{_pods.prefixlen}", "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        for key, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
            path = Path("/proc/sys") / key
            if path.exists():
                path.write_text(value)

    # ------------------------------------------------------------------ processes

    def _start(self, name: str, args: list[str], raw: bool = False) -> None:
        if self._alive(name):
            return
        log = (self.state / "logs" / f"{name}.log").open("ab")
        cmd = args if raw else [str(self.bin), *args]
        if name == self.broken:
            cmd = [*cmd, "--no-such-flag-for-a-test"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        write_pid_file(self.state / "pids" / f"{name}.pid", proc, cmd)
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at once; see {self.state / 'logs' / f'{name}.log'}")

    def _alive(self, name: str) -> bool:
        return our_pid(self.state / "pids" / f"{name}.pid") is not None

    def _stop(self, name: str, grace: float = 15) -> None:
        """Stop the process group we started for `name`: only while its pid still runs our command line."""
        pid_file = self.state / "pids" / f"{name}.pid"
        pid = our_pid(pid_file)
        if pid is not None:
            signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self._alive(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            signal_group(pid, signal.SIGKILL)  # the rest of the group, and a leader that ignored SIGTERM
        pid_file.unlink(missing_ok=True)

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
                if (self.state / "pids" / f"{name}.pid").is_file() and not self._alive(name):
                    raise RuntimeError(f"{name} died while waiting for {what}; see {self.state}/logs/{name}.log")
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.state}/logs")


_TOOLS, _TABLES = ("iptables", "ip6tables"), ("filter", "nat", "mangle")


def _chains() -> list[tuple[str, str]]:
    """(tool, table/chain) for every KUBE-* and CNI-* chain on the host, IPv4 and IPv6."""
    found = []
    for tool in _TOOLS:
        for table in _TABLES:
            rules = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout.splitlines()
            found += [(tool, f"{table}/{r.split()[1]}") for r in rules
                      if r.startswith("-N ") and r.split()[1].startswith(CHAIN_PREFIXES)]  # fmt: skip
    return found


def _remove_chains() -> None:
    """Delete the rules that jump to KUBE-*/CNI-* chains, then the chains (the kubelet's canary and
    firewall chains stay behind after `kube-proxy --cleanup`). Called only while the host record says
    there were none before our `up`, so every one of them is ours."""
    for tool in _TOOLS:
        for table in _TABLES:
            rules = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout.splitlines()
            chains = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(CHAIN_PREFIXES)]
            for rule in rules:
                parts = shlex.split(rule)  # comments are quoted: "CNI firewall plugin rules"
                if parts[0] == "-A" and not parts[1].startswith(CHAIN_PREFIXES) and any(c in parts for c in chains):
                    subprocess.run([tool, "-t", table, "-D", *parts[1:]], capture_output=True)
            for op in ("-F", "-X"):
                for chain in chains:
                    subprocess.run([tool, "-t", table, op, chain], capture_output=True)


def _sysctls() -> dict[str, str]:
    values = {}
    for key in SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = (Path("/proc/sys") / key).read_text().strip()
    return values


def _restore_sysctls(before: dict[str, str]) -> None:
    now = _sysctls()
    for key, value in before.items():
        if key in now and now[key] != value:
            try:
                (Path("/proc/sys") / key).write_text(value)
            except OSError as e:
                print(f"could not restore sysctl {key} to {value}: {e}", file=sys.stderr)


def _remove_cni_results(containers: list[str]) -> None:
    """libcni caches each attachment in /var/lib/cni/results/<network>-<container id>-<interface>; pod
    sandboxes removed without a CNI DEL leave theirs. Container ids are unique: these are ours."""
    results = Path("/var/lib/cni/results")
    for cid in containers:
        for f in results.glob(f"*-{cid}-*") if results.is_dir() else []:
            f.unlink(missing_ok=True)


def _remove_links_into(directory: Path, root: Path) -> None:
    for link in directory.iterdir() if directory.is_dir() else []:
        with contextlib.suppress(OSError):
            if link.is_symlink() and Path(os.readlink(link)).is_relative_to(root):
                link.unlink()


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


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
        if not cluster.is_up():
            print(f"{'leftovers':<24} {'; '.join(cluster.leftovers()) or 'none'}")
    else:
        sys.exit(f"usage: {sys.argv[0]} up|down|status|build")


if __name__ == "__main__":
    main()
