"""A host-path volume provisioner for the test cluster (run in its control-plane node by systemd).

    python tests/cluster/provisioner.py --kubectl K8S --kubeconfig KC --volumes DIR [--name codex.ml/hostpath]

Every second it lists PersistentVolumeClaims, PersistentVolumes and StorageClasses with kubectl
(`K8S kubectl` when K8S is the multi-call binary) and then:

- for each pending claim of a StorageClass whose provisioner is NAME, creates DIR/pvc-<claim uid>
  with mode 0777 (any uid can write: pods run as non-root and hostPath has no fsGroup) and a
  hostPath PersistentVolume of the claim's size and access modes, pre-bound to it (`claimRef`);
- for each PersistentVolume of ours that is Released, removes its directory, then the volume;
- removes directories under DIR that belong to no PersistentVolume (a crash between the two steps).

Names are derived from the claim's uid, so every step is idempotent and a restart carries on where
the last run stopped. Only `Filesystem` claims are served; this is test tooling, not a CSI driver.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

NAME = "codex.ml/hostpath"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


def log(message: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%S"), message, flush=True)


class Provisioner:
    def __init__(self, kubectl: list[str], volumes: Path, name: str = NAME):
        self.kubectl_cmd = kubectl
        self.volumes = volumes.resolve()
        self.name = name

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*self.kubectl_cmd, *args], input=input, capture_output=True, text=True, timeout=60)

    def snapshot(self) -> tuple[list[dict], list[dict], list[dict]] | None:
        r = self.kubectl("get", "storageclasses,persistentvolumes,persistentvolumeclaims", "--all-namespaces",
                         "-o", "json")  # fmt: skip
        if r.returncode != 0:
            log(f"list failed: {r.stderr.strip()}")
            return None
        items = json.loads(r.stdout)["items"]
        kinds = ("StorageClass", "PersistentVolume", "PersistentVolumeClaim")
        classes, pvs, pvcs = ([i for i in items if i["kind"] == kind] for kind in kinds)
        return classes, pvs, pvcs

    def sync(self) -> None:
        snap = self.snapshot()
        if snap is None:
            return
        classes, pvs, pvcs = snap
        ours = {c["metadata"]["name"]: c for c in classes if c.get("provisioner") == self.name}
        default = [n for n, c in ours.items() if c["metadata"].get("annotations", {}).get(DEFAULT_CLASS) == "true"]
        mine = [pv for pv in pvs if pv["metadata"].get("annotations", {}).get(PROVISIONED_BY) == self.name]
        existing = {pv["metadata"]["name"] for pv in pvs}
        self.sweep(existing)
        for pv in mine:
            if pv.get("status", {}).get("phase") == "Released" and "deletionTimestamp" not in pv["metadata"]:
                self.delete(pv)
        for pvc in pvcs:
            spec = pvc["spec"]
            klass = spec.get("storageClassName", default[0] if default else None)
            pending = pvc.get("status", {}).get("phase", "Pending") == "Pending" and not spec.get("volumeName")
            fresh = "deletionTimestamp" not in pvc["metadata"] and f"pvc-{pvc['metadata']['uid']}" not in existing
            if klass in ours and pending and fresh:
                self.provision(pvc, ours[klass])

    def provision(self, pvc: dict, klass: dict) -> None:
        meta, spec = pvc["metadata"], pvc["spec"]
        who = f"{meta['namespace']}/{meta['name']}"
        if spec.get("volumeMode", "Filesystem") != "Filesystem":
            log(f"claim {who}: volumeMode {spec['volumeMode']} is not supported; skipped")
            return
        name = f"pvc-{meta['uid']}"
        path = self.volumes / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # mkdir's mode is filtered by the umask
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": meta["namespace"],
            "name": meta["name"],
        }
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: self.name}},
            "spec": {
                "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "volumeMode": "Filesystem",
                "persistentVolumeReclaimPolicy": klass.get("reclaimPolicy", "Delete"),
                "storageClassName": klass["metadata"]["name"],
                "claimRef": {**claim, "uid": meta["uid"]},
                "hostPath": {"path": str(path), "type": "Directory"},
            },
        }
        r = self.kubectl("create", "-f", "-", input=json.dumps(pv))
        if r.returncode == 0:
            log(f"claim {who}: created volume {name} at {path}")
        elif "AlreadyExists" not in r.stderr and "already exists" not in r.stderr:
            log(f"claim {who}: creating volume {name} failed: {r.stderr.strip()}")

    def delete(self, pv: dict) -> None:
        name = pv["metadata"]["name"]
        if pv["spec"].get("persistentVolumeReclaimPolicy") != "Delete":
            return
        path = Path(pv["spec"].get("hostPath", {}).get("path", ""))
        if path.parent == self.volumes:  # never remove anything outside our directory
            shutil.rmtree(path, ignore_errors=True)
        r = self.kubectl("delete", "persistentvolume", name, "--wait=false", "--ignore-not-found")
        if r.returncode == 0:
            log(f"volume {name} released: removed {path} and the volume")
        else:
            log(f"volume {name} released: deleting it failed: {r.stderr.strip()}")

    def sweep(self, pv_names: set[str]) -> None:
        for path in self.volumes.glob("pvc-*"):
            if path.name not in pv_names:
                shutil.rmtree(path, ignore_errors=True)
                log(f"removed {path}: no volume of that name")

    def run(self, interval: float = 1.0) -> None:
        log(f"provisioner {self.name}: volumes in {self.volumes}")
        while True:
            started = time.monotonic()
            try:
                self.sync()
            except Exception as e:  # an API server restart or a malformed object must not end the loop
                log(f"sync failed: {e!r}")
            time.sleep(max(0.0, interval - (time.monotonic() - started)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubectl", required=True, help="kubectl, or the multi-call binary that has it")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--volumes", required=True, type=Path, help="directory the volumes are created in")
    p.add_argument("--name", default=NAME, help="the provisioner name StorageClasses refer to")
    a = p.parse_args()
    kubectl = [a.kubectl] if Path(a.kubectl).name == "kubectl" else [a.kubectl, "kubectl"]
    a.volumes.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Provisioner([*kubectl, "--kubeconfig", a.kubeconfig], a.volumes, a.name).run()


if __name__ == "__main__":
    main()
