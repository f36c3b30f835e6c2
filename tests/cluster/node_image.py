"""kind and its node image, made on this machine: nothing is pulled from a registry.

kind itself is built from the Go module proxy (sigs.k8s.io/kind, KIND_VERSION). Where Docker refuses
`docker run --privileged` (some VMs: a root capability bounding set without CAP_SYS_RESOURCE), the
binary carries kind-unprivileged.patch, which gives the node containers every capability the host can
grant instead, and only when CODEX_KIND_NO_PRIVILEGED=1; elsewhere kind behaves as released.

The node image follows kind's own recipe (images/base in kind's module, then `kind build node-image`'s
steps), with every piece from here:
- Debian bookworm (debootstrap) with systemd, containerd, runc, the CNI plugins and iptables from
  Debian, and kind's files (entrypoint, systemd units, containerd config) from kind's module;
- kubeadm, the kubelet and kubectl: the multi-call binary of tests/cluster/k8s; crictl from cri-tools;
- the images kubeadm asks for, made from the same binary, CoreDNS (tests/cluster/coredns) and pause.c,
  tagged as kubeadm expects and imported into the node's containerd;
- the default StorageClass served by provisioner.py from a directory every node mounts.
The image is tagged with a hash of all of that, so an unchanged recipe is never rebuilt.
"""

from __future__ import annotations

import contextlib
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

from images import BASE, Images

HERE = Path(__file__).resolve().parent
KIND_VERSION = os.environ.get("CODEX_KIND_VERSION", "v0.33.0")
# kind asks the node's crictl whether it has an image before loading it; Debian bookworm has no crictl,
# and the module proxy serves sigs.k8s.io/cri-tools from v1.34.0 on (it talks CRI v1 to containerd 1.6)
CRICTL_VERSION = "v1.34.0"
PATCH = HERE / "kind-unprivileged.patch"
VOLUMES_IN_NODE = "/var/local/codex-volumes"  # the host's <state>/volumes, in every node
PROVISIONER_IN_NODE = "/kind/codex/provisioner.py"
PROVISIONER_UNIT = "codex-provisioner.service"  # enabled on the control plane by cluster.py

PACKAGES = (
    "systemd", "conntrack", "iptables", "nftables", "iproute2", "ethtool", "util-linux", "mount", "kmod",
    "libseccomp2", "pigz", "bash", "ca-certificates", "jq", "procps", "containerd", "runc",
    "containernetworking-plugins", "python3",
)  # fmt: skip

# Docker's --privileged asks runc for every capability; where the host's bounding set lacks one this is
# what kind-unprivileged.patch gives the node instead (and what the image build's container gets).
UNPRIVILEGED = ["--cap-add=ALL", "--cap-drop=SYS_RESOURCE", "--security-opt", "systempaths=unconfined",
                "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                "--device-cgroup-rule=a *:* rwm", "--device=/dev/kmsg"]  # fmt: skip

# Without --privileged Docker mounts /sys and the cgroup tree read-only: systemd and the kubelet write
# there. Runs before kind's entrypoint; a no-op where they are writable already.
ENTRYPOINT = """#!/bin/sh
awk '$2 ~ /^\\/sys(\\/fs\\/cgroup.*)?$/ && $4 ~ /(^|,)ro(,|$)/ {print $2}' /proc/self/mounts | while read -r m; do
  mount -o remount,rw "$m" 2>/dev/null || mount -o remount,bind,rw "$m"
done
exec "$@"
"""

PROVISIONER_SERVICE = f"""[Unit]
Description=codex.ml/hostpath volume provisioner (tests/cluster/provisioner.py)
After=kubelet.service

[Service]
ExecStartPre=/bin/sh -c 'until [ -f /etc/kubernetes/admin.conf ]; do sleep 1; done'
ExecStart=/usr/bin/python3 {PROVISIONER_IN_NODE} --kubectl /usr/bin/kubectl --kubeconfig /etc/kubernetes/admin.conf \\
  --volumes {VOLUMES_IN_NODE}
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""

STORAGE = """apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: codex.ml/hostpath
reclaimPolicy: Delete
volumeBindingMode: Immediate
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_refused: dict[str, bool] = {}


def privileged_refused(images: Images) -> bool:
    """Whether Docker here refuses `docker run --privileged` (kind's default for its nodes) for want of a
    capability; asked once. Any other failure is raised, not taken for that."""
    if "privileged" not in _refused:
        r = images.docker("run", "--rm", "--privileged", images.ensure_base(), "true", check=False)
        err = r.stderr.decode()
        if r.returncode != 0 and "unable to apply caps" not in err:
            raise RuntimeError(f"docker run --privileged failed: {err.strip()[-2000:]}")
        _refused["privileged"] = r.returncode != 0
    return _refused["privileged"]


def sources_hash(src: Path) -> str:
    """A Go build's inputs here: its module files and its one source file."""
    return hashlib.sha256(b"".join((src / f).read_bytes() for f in ("go.mod", "go.sum", "main.go"))).hexdigest()


def container_flags(images: Images) -> list[str]:
    return UNPRIVILEGED if privileged_refused(images) else ["--privileged"]


# ---------------------------------------------------------------------- kind


@contextlib.contextmanager
def go_env(out: Path, **extra: str) -> Iterator[dict[str, str]]:
    """The environment of the build of `out`, a tool whose binary is kept (and stamped): Go's build cache
    in a directory of its own beside it, removed once the build succeeded. Go keeps every package it
    compiled in that cache (gigabytes for the Kubernetes binary and for Kueue), on the disk that must
    also hold the trainer image twice over on a CI machine. A build that failed or was cut short keeps
    it, so the next one goes on from there; the downloads stay in the module cache."""
    cache = out.with_name(f".{out.name}.go-build")
    yield {**os.environ, "GOCACHE": str(cache.resolve()), **extra}
    shutil.rmtree(cache, ignore_errors=True)


def build_kind(out: Path) -> Path:
    """kind from the module proxy's source with kind-unprivileged.patch applied (inert unless
    CODEX_KIND_NO_PRIVILEGED=1); rebuilt only when the version or the patch changes."""
    stamp = hashlib.sha256(KIND_VERSION.encode() + PATCH.read_bytes()).hexdigest()
    stamp_file = out.with_suffix(".stamp")
    if out.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return out
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kind"
        shutil.copytree(kind_module(), src)
        for p in src.rglob("*"):  # the module cache is read-only
            p.chmod(p.stat().st_mode | 0o200)
        subprocess.run(["patch", "-p1", "-s", "-i", str(PATCH)], cwd=src, check=True)
        tmp_out = out.with_suffix(".tmp")
        with go_env(out, GOFLAGS="-mod=mod", CGO_ENABLED="0") as env:
            subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp_out), "."], cwd=src,
                           check=True, env=env)  # fmt: skip
        os.replace(tmp_out, out)
    stamp_file.write_text(stamp)
    log(f"built {out} ({KIND_VERSION} with {PATCH.name}) in {time.monotonic() - started:.0f} s")
    return out


def build_crictl(out: Path) -> Path:
    """crictl for the node image, from the module proxy; rebuilt only when the version changes."""
    stamp_file = out.with_suffix(".stamp")
    if out.is_file() and stamp_file.is_file() and stamp_file.read_text() == CRICTL_VERSION:
        return out
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as gobin, go_env(out, GOBIN=gobin, GOFLAGS="-mod=mod", CGO_ENABLED="0") as env:
        module = f"sigs.k8s.io/cri-tools/cmd/crictl@{CRICTL_VERSION}"
        subprocess.run(["go", "install", "-trimpath", "-ldflags", "-s -w", module], cwd=tempfile.gettempdir(),
                       check=True, env=env)  # fmt: skip
        shutil.move(Path(gobin) / "crictl", out)
    stamp_file.write_text(CRICTL_VERSION)
    log(f"built {out} ({CRICTL_VERSION}) in {time.monotonic() - started:.0f} s")
    return out


def kind_module() -> Path:
    """kind's module source, from the module proxy (the module cache keeps it)."""
    info = json.loads(subprocess.run(["go", "mod", "download", "-json", f"sigs.k8s.io/kind@{KIND_VERSION}"],
                                     cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True,
                                     env={**os.environ, "GOFLAGS": "-mod=mod"}).stdout)  # fmt: skip
    return Path(info["Dir"])


def kind_base_files() -> Path:
    """images/base/files of kind's module: the node's entrypoint, systemd units and containerd config."""
    return kind_module() / "images" / "base" / "files"


# ---------------------------------------------------------------------- the node image


def node_image_tag(version: str, k8s: Path, coredns: Path) -> str:
    h = hashlib.sha256()
    for part in (
        KIND_VERSION,
        CRICTL_VERSION,
        version,
        " ".join(PACKAGES),
        ENTRYPOINT,
        STORAGE,
        " ".join(UNPRIVILEGED),
    ):
        h.update(part.encode())
    for f in (k8s.with_suffix(".stamp"), coredns.with_suffix(".stamp"), HERE / "pause.c", HERE / "provisioner.py",
              Path(__file__)):  # fmt: skip
        h.update(f.read_bytes())
    return f"codex.local/kind-node:{version}-{h.hexdigest()[:12]}"


def ensure_node_image(images: Images, version: str, k8s: Path, coredns: Path) -> str:
    tag = node_image_tag(version, k8s, coredns)
    if images.has(tag):
        return tag
    started = time.monotonic()
    flags = container_flags(images)
    required = subprocess.run([str(k8s), "kubeadm", "config", "images", "list", "--kubernetes-version", version],
                              capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    component_images = _component_images(images, k8s, coredns, required)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        _node_context(ctx, k8s, version)
        stage = f"{tag}-stage"
        r = images.docker("build", "--rm", "--force-rm", "-t", stage, str(ctx), check=False)
        if r.returncode != 0:
            raise RuntimeError(f"building the node image failed:\n{r.stdout.decode()[-3000:]}{r.stderr.decode()}")
    name = f"codex-node-build-{os.getpid()}"
    images.docker("rm", "-f", "-v", name, check=False)
    try:
        images.docker("run", "-d", "--name", name, *flags, "--entrypoint", "sleep", stage, "infinity")
        images.docker("exec", "-d", name, "containerd")
        deadline = time.monotonic() + 60
        while images.docker("exec", name, "ctr", "version", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("containerd did not start in the node image's build container")
            time.sleep(0.5)
        # streamed: one archive of the three images, imported as kind's own node-image build does, then
        # named as kubeadm expects in the node's containerd only (never in this machine's Docker)
        sources = sorted(set(component_images.values()))
        ctr = f"docker exec -i {name} ctr --namespace=k8s.io images"
        cmd = f"docker save {' '.join(sources)} | {ctr} import --all-platforms --no-unpack -"
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"importing the control plane's images into the node image failed: {r.stderr}")
        for target, source in component_images.items():
            images.docker("exec", name, "ctr", "--namespace=k8s.io", "images", "tag", "--force", source, target)
            images.docker("exec", name, "ctr", "--namespace=k8s.io", "images", "label", target,
                          "io.cri-containerd.pinned=pinned")  # fmt: skip
        images.docker("exec", name, "ctr", "--namespace=k8s.io", "images", "rm", *sources)
        listed = images.docker("exec", name, "ctr", "--namespace=k8s.io", "images", "list", "-q").stdout.decode()
        missing = [i for i in component_images if i not in listed.split()]
        if missing:
            raise RuntimeError(f"the node image lacks {missing} after the import")
        images.docker("exec", name, "pkill", "containerd", check=False)
        time.sleep(1)
        images.docker("commit", "--change", 'ENTRYPOINT ["/usr/local/bin/codex-entrypoint", '
                      '"/usr/local/bin/entrypoint", "/sbin/init"]', name, tag)  # fmt: skip
    finally:
        images.docker("rm", "-f", "-v", name, check=False)
        images.docker("rmi", stage, check=False)
    log(f"built the node image {tag} in {time.monotonic() - started:.0f} s")
    listed = images.docker("images", "codex.local/kind-node", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode()
    for old in set(listed.split()) - {tag}:  # an older recipe's (a cluster still running it keeps it)
        images.docker("rmi", old, check=False)
    return tag


def _node_context(ctx: Path, k8s: Path, version: str) -> None:
    shutil.copytree(kind_base_files(), ctx / "files")
    for p in (ctx / "files").rglob("*"):
        p.chmod(0o755 if p.is_dir() or p.parent.name == "bin" else 0o644)
    shutil.copy(k8s, ctx / "k8s")
    shutil.copy(k8s.parent / "crictl", ctx / "crictl")
    shutil.copy(HERE / "provisioner.py", ctx / "provisioner.py")
    (ctx / "codex-entrypoint").write_text(ENTRYPOINT)
    (ctx / "default-storage.yaml").write_text(STORAGE)
    (ctx / PROVISIONER_UNIT).write_text(PROVISIONER_SERVICE)
    (ctx / "Dockerfile").write_text(f"""FROM {BASE}
COPY files/ /
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      -o Dpkg::Options::=--force-confold {" ".join(PACKAGES)} >/dev/null \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* \\
 && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo ReadKMsg=no >> /etc/systemd/journald.conf \\
 && ln -sf /usr/lib/systemd/systemd /sbin/init \\
 && ln -s /usr/bin/containerd /usr/local/bin/containerd \\
 && mkdir -p /opt/cni && ln -s /usr/lib/cni /opt/cni/bin \\
 && ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + \\
      {{"path": "/kind/bin/mount-product-files.sh"}}' | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json \\
 && sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
 && systemctl mask systemd-binfmt.service \\
 && mkdir -p /etc/kubernetes/manifests /kind/manifests /kind/codex {VOLUMES_IN_NODE}
COPY k8s /usr/bin/k8s
COPY crictl /usr/local/bin/crictl
COPY codex-entrypoint /usr/local/bin/codex-entrypoint
COPY provisioner.py {PROVISIONER_IN_NODE}
COPY default-storage.yaml /kind/manifests/default-storage.yaml
COPY {PROVISIONER_UNIT} /etc/systemd/system/{PROVISIONER_UNIT}
RUN chmod 755 /usr/local/bin/codex-entrypoint /usr/local/bin/entrypoint /usr/local/bin/clean-install \\
 && for b in kubelet kubeadm kubectl; do ln -s k8s /usr/bin/$b; done && echo {version} > /kind/version
ENV container=docker
STOPSIGNAL SIGRTMIN+3
""")


def _component_images(images: Images, k8s: Path, coredns: Path, required: list[str]) -> dict[str, str]:
    """The images kubeadm asks for, built as three Docker images (the control plane, kube-proxy and etcd
    from the multi-call binary, on Debian with iptables, which kube-proxy runs; CoreDNS; pause): each
    name kubeadm asks for, mapped to the image that serves it. The names are given in the node only."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        shutil.copy(k8s, ctx / "k8s")
        shutil.copy(coredns, ctx / "coredns")
        subprocess.run(["gcc", "-static", "-Os", "-o", str(ctx / "pause"), str(HERE / "pause.c")], check=True)
        links = " ".join(f"/usr/local/bin/{n}" for n in ("kube-apiserver", "kube-controller-manager",
                                                          "kube-scheduler", "kube-proxy", "etcd"))  # fmt: skip
        (ctx / "Dockerfile.components").write_text(f"""FROM {BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      iptables conntrack >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY k8s /usr/local/bin/k8s
RUN for l in {links}; do ln -s k8s $l; done
""")
        (ctx / "Dockerfile.coredns").write_text(f'FROM {BASE}\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n')
        (ctx / "Dockerfile.pause").write_text('FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n')
        built = {}
        for kind in ("components", "coredns", "pause"):
            tag = f"codex.local/kind-{kind}:build"
            r = images.docker("build", "--rm", "--force-rm", "-t", tag, "-f", str(ctx / f"Dockerfile.{kind}"),
                              str(ctx), check=False)  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(f"building {tag} failed:\n{r.stdout.decode()[-3000:]}{r.stderr.decode()}")
            built[kind] = tag
    names = {}
    for image in required:
        name = image.rsplit(":", 1)[0].rsplit("/", 1)[-1]
        names[image] = built.get(name, built["components"])
    return names
