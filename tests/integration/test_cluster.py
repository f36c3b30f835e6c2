"""Proof that the test cluster is a real one: each test exercises a piece of Kubernetes that a
mock of the API would fake, on the API server, the controllers and a node that runs containers."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from cluster import Cluster
from support import wait_for

pytestmark = pytest.mark.cluster

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.codex.ml}
spec:
  group: test.codex.ml
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              mode: {type: string, enum: [fast, slow]}
            x-kubernetes-validations:
            - rule: "self.mode != 'fast' || self.size <= 10"
              message: "a fast widget has size 10 at most"
"""


def test_a_failed_up_leaves_nothing_behind(cluster, tmp_path, monkeypatch):
    """An `up` that fails after kind made the nodes (here: setting up their network) deletes the
    cluster and its kubeconfig before it raises, and a second cluster beside the suite's leaves it be."""
    if os.environ.get("CODEX_KUBECONFIG"):
        pytest.skip("tests the harness, not another cluster")
    broken = Cluster(state=tmp_path, name="codex-broken", workers=0, bin_dir=cluster.bin.parent)

    def fail() -> None:
        assert broken.nodes() == ["codex-broken-control-plane"]  # kind's part succeeded
        raise RuntimeError("no network for this test")

    monkeypatch.setattr(broken, "_network_up", fail)
    with pytest.raises(RuntimeError, match="no network for this test"):
        broken.up()
    assert broken.nodes() == []
    assert not broken.kubeconfig.exists()
    assert cluster.is_up()


def pod(name: str, image: str, command: list[str], **extra) -> str:
    spec = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
        "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "command": command}],
        **extra,
    }
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def phase(cluster, ns: str, name: str) -> str:
    return cluster.kubectl("get", "pod", name, "-n", ns, "-o", "jsonpath={.status.phase}").stdout


def run_to_completion(cluster, ns: str, manifest: str, name: str, timeout: float = 120) -> str:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    final = wait_for(lambda: phase(cluster, ns, name) in ("Succeeded", "Failed") and phase(cluster, ns, name),
                     f"pod {name} to finish", timeout)  # fmt: skip
    logs = cluster.kubectl("logs", "-n", ns, name).stdout
    assert final == "Succeeded", (final, logs, cluster.kubectl("describe", "pod", "-n", ns, name).stdout)
    return logs


def test_a_crd_becomes_established_and_its_schema_refuses_bad_objects(cluster, namespace):
    cluster.kubectl("apply", "-f", "-", input=CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.test.codex.ml", "--timeout=60s")
    good = '{"apiVersion":"test.codex.ml/v1","kind":"Widget","metadata":{"name":"ok"},"spec":{"size":3}}'
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=good)

    too_small = good.replace('"size":3', '"size":0').replace('"ok"', '"small"')
    r = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=too_small, check=False)
    assert r.returncode != 0 and "spec.size" in r.stderr and "greater than or equal to 1" in r.stderr

    cel = good.replace('"size":3', '"size":30,"mode":"fast"').replace('"ok"', '"fast"')
    r = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=cel, check=False)
    assert r.returncode != 0 and "a fast widget has size 10 at most" in r.stderr

    r = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=good.replace("ok", "dry"))
    assert "(server dry run)" in r.stdout
    assert cluster.kubectl("get", "widget", "dry", "-n", namespace, check=False).returncode != 0


def test_a_pod_from_a_locally_built_image_runs_and_its_logs_are_readable(cluster, namespace, base_image):
    logs = run_to_completion(
        cluster, namespace, pod("hello", base_image, ["sh", "-c", "echo hello from $(cat /etc/debian_version)"]),
        "hello",
    )  # fmt: skip
    assert logs.startswith("hello from 12.")


def test_a_job_completes(cluster, namespace, base_image):
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "count"},
        "spec": {
            "completions": 2,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {"spec": json.loads(pod("x", base_image, ["sh", "-c", "echo $JOB_COMPLETION_INDEX"]))["spec"]},
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "job/count", "--timeout=120s")
    status = json.loads(cluster.kubectl("get", "job", "count", "-n", namespace, "-o", "json").stdout)["status"]
    assert status["succeeded"] == 2


def bound_claim(cluster, ns: str, name: str, size: str = "16Mi") -> dict:
    """Create a claim of the default StorageClass; return its PersistentVolume once bound."""
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pvc))
    wait_for(
        lambda: cluster.kubectl("get", "pvc", name, "-n", ns, "-o", "jsonpath={.status.phase}").stdout == "Bound",
        f"the PVC {name} to bind",
    )
    volume = cluster.kubectl("get", "pvc", name, "-n", ns, "-o", "jsonpath={.spec.volumeName}").stdout
    return json.loads(cluster.kubectl("get", "pv", volume, "-o", "json").stdout)


def with_claim(manifest: str, claim: str) -> str:
    obj = json.loads(manifest)
    obj["spec"]["volumes"] = [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]
    obj["spec"]["containers"][0]["volumeMounts"] = [{"name": "d", "mountPath": "/data"}]
    return json.dumps(obj)


def restricted(manifest: str, uid: int = 1000) -> str:
    """The securityContext the `restricted` Pod Security level demands, as trainer pods have it."""
    obj = json.loads(manifest)
    obj["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid,
                                      "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    obj["spec"]["containers"][0]["securityContext"] = {"allowPrivilegeEscalation": False,
                                                       "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    return json.dumps(obj)


def test_a_pvc_binds_and_data_written_by_one_pod_is_read_by_the_next(cluster, namespace, base_image):
    pv = bound_claim(cluster, namespace, "data")
    assert pv["spec"]["capacity"]["storage"] == "16Mi" and pv["spec"]["accessModes"] == ["ReadWriteOnce"]
    writer = with_claim(pod("writer", base_image, ["sh", "-c", "echo step-42 > /data/ckpt"]), "data")
    run_to_completion(cluster, namespace, writer, "writer")
    reader = with_claim(pod("reader", base_image, ["cat", "/data/ckpt"]), "data")
    logs = run_to_completion(cluster, namespace, reader, "reader")
    assert logs.strip() == "step-42"


def test_a_non_root_pod_in_a_restricted_namespace_writes_to_a_fresh_pvc(cluster, namespace, base_image):
    """Trainer pods run as uid 1000 under `restricted`, with no fsGroup for host-path volumes:
    the volume itself must let them write their checkpoints."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    bound_claim(cluster, namespace, "ckpt")
    script = "id -u; echo step-7 > /data/ckpt && mkdir /data/checkpoint-7 && echo ok > /data/checkpoint-7/done"
    writer = restricted(with_claim(pod("writer", base_image, ["sh", "-c", script]), "ckpt"))
    assert run_to_completion(cluster, namespace, writer, "writer").split() == ["1000"]
    script = "stat -c '%u %n' /data/ckpt /data/checkpoint-7/done; cat /data/ckpt /data/checkpoint-7/done"
    reader = restricted(with_claim(pod("reader", base_image, ["sh", "-c", script]), "ckpt"))
    logs = run_to_completion(cluster, namespace, reader, "reader").splitlines()
    assert logs == ["1000 /data/ckpt", "1000 /data/checkpoint-7/done", "step-7", "ok"]


def test_deleting_a_pvc_deletes_its_volume_and_the_volume_s_directory(cluster, namespace, base_image):
    pv = bound_claim(cluster, namespace, "scratch")
    name = pv["metadata"]["name"]
    directory = Path(pv["spec"]["hostPath"]["path"]) if "hostPath" in pv["spec"] else None
    local = hasattr(cluster, "host_path")  # on another cluster the volume is not on this machine
    if local:
        directory = cluster.host_path(str(directory))
        assert directory == cluster.volumes / name and directory.is_dir()
        assert directory.stat().st_mode & 0o777 == 0o777
    writer = with_claim(pod("writer", base_image, ["sh", "-c", "echo x > /data/x"]), "scratch")
    run_to_completion(cluster, namespace, writer, "writer")
    if local:
        assert (directory / "x").read_text() == "x\n"
    cluster.kubectl("delete", "pod", "writer", "-n", namespace)  # a pod that uses a claim keeps it
    cluster.kubectl("delete", "pvc", "scratch", "-n", namespace, "--wait=false")
    wait_for(lambda: cluster.kubectl("get", "pv", name, check=False).returncode != 0, f"the volume {name} to go", 60)
    if local:
        assert not directory.exists()


def test_a_restricted_namespace_refuses_a_privileged_pod(cluster, namespace, base_image):
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    privileged = json.loads(pod("root", base_image, ["true"]))
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    r = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(privileged), check=False)
    assert r.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in r.stderr and "privileged" in r.stderr


def test_deleting_an_owner_garbage_collects_its_dependents(cluster, namespace):
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cluster.kubectl("get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(dependent))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: cluster.kubectl("get", "configmap", "dependent", "-n", namespace, check=False).returncode != 0,
        "the garbage collector to delete the dependent",
        60,
    )


@pytest.fixture(scope="session")
def tools_image(cluster, base_image) -> str:
    """The base image plus our multi-call binary, so a pod can run kubectl with in-cluster config."""
    tag = "codex.local/k8s-tools:1"
    binary = getattr(cluster, "bin", None)
    if binary is None:
        pytest.skip("the tools image carries the local cluster's binary; on another cluster it is not built")
    with tempfile.TemporaryDirectory() as ctx:
        (Path(ctx) / "k8s").write_bytes(Path(binary).read_bytes())
        (Path(ctx) / "k8s").chmod(0o755)
        (Path(ctx) / "Dockerfile").write_text(f"FROM {base_image}\nCOPY k8s /usr/local/bin/k8s\n")
        subprocess.run(["docker", "build", "-q", "-t", tag, ctx], check=True, capture_output=True,
                       env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})  # fmt: skip
    cluster.load_image(tag)
    return tag


def test_a_pod_lists_pods_through_the_kubernetes_service_with_its_service_account(cluster, namespace, tools_image):
    cluster.kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "pod-reader", "--role=pod-reader",
                    f"--serviceaccount={namespace}:default", "-n", namespace)  # fmt: skip
    script = "echo host=$KUBERNETES_SERVICE_HOST; k8s kubectl get pods -o name"
    manifest = json.loads(pod("lister", tools_image, ["sh", "-c", script]))
    manifest["spec"]["automountServiceAccountToken"] = True
    logs = run_to_completion(cluster, namespace, json.dumps(manifest), "lister").split()
    # in-cluster config talks to KUBERNETES_SERVICE_HOST: the ClusterIP that kube-proxy forwards
    cluster_ip = cluster.kubectl("get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert logs[0] == f"host={cluster_ip}"
    assert "pod/lister" in logs[1:]


def test_service_and_headless_pod_names_resolve_through_cluster_dns(cluster, namespace, base_image):
    """What a multi-node trainer needs for rendezvous: <pod>.<headless service> resolves to the pod."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "workers"},
        "spec": {"clusterIP": "None", "selector": {"app": "w"}, "ports": [{"port": 29500}]},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(service))
    # perl-base is in debootstrap's minbase: a one-connection TCP server on the rendezvous port
    serve = "use IO::Socket::INET; $s = IO::Socket::INET->new(LocalPort => 29500, Listen => 1, ReuseAddr => 1) " \
            "or die; while ($c = $s->accept) { print $c \"hello from w-0\\n\"; close $c }"  # fmt: skip
    nodes = schedulable_nodes(cluster)
    worker = json.loads(pod("w-0", base_image, ["perl", "-e", serve], hostname="w-0", subdomain="workers",
                            nodeSelector={"kubernetes.io/hostname": nodes[0]}))  # fmt: skip
    worker["metadata"]["labels"] = {"app": "w"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(worker))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod/w-0", "--timeout=90s")
    worker_ip = cluster.kubectl("get", "pod", "w-0", "-n", namespace, "-o", "jsonpath={.status.podIP}").stdout

    names = f"w-0.workers.{namespace}.svc.cluster.local kubernetes.default.svc.cluster.local"
    script = f"for n in {names}; do getent hosts $n || echo unresolved $n; done"
    logs = run_to_completion(cluster, namespace, pod("lookup", base_image, ["sh", "-c", script]), "lookup")
    resolved = {line.split()[1]: line.split()[0] for line in logs.splitlines()}
    assert resolved[f"w-0.workers.{namespace}.svc.cluster.local"] == worker_ip, logs
    api_ip = cluster.kubectl("get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert resolved["kubernetes.default.svc.cluster.local"] == api_ip, logs

    # and one pod reaches another by that name: ranks connect to rank 0's store (pod-to-pod traffic
    # crosses the host's FORWARD chain, whose policy Docker sets to DROP)
    # from another node where there is one, as rank 1 of a two-node job does
    talk = f"exec 3<>/dev/tcp/w-0.workers.{namespace}.svc.cluster.local/29500 && read -t 10 line <&3 && echo $line"
    talker = pod("talk", base_image, ["bash", "-c", talk], nodeSelector={"kubernetes.io/hostname": nodes[-1]})
    logs = run_to_completion(cluster, namespace, talker, "talk")
    assert "hello from w-0" in logs, logs


def schedulable_nodes(cluster) -> list[str]:
    """The nodes that take ordinary pods (not the control plane, where there are workers)."""
    items = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return sorted(n["metadata"]["name"] for n in items
                  if not any(t["effect"] == "NoSchedule" for t in n["spec"].get("taints", [])))  # fmt: skip


def test_a_volume_written_on_one_node_is_read_on_another(cluster, namespace, base_image):
    """What a two-node job's checkpoints need: one volume mounted by pods on two nodes (ReadWriteMany)."""
    nodes = schedulable_nodes(cluster)
    if len(nodes) < 2:
        pytest.skip("the cluster has one node that takes pods")
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "shared"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "16Mi"}}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pvc))
    on = {"nodeSelector": {"kubernetes.io/hostname": nodes[0]}}
    writer = restricted(
        with_claim(pod("writer", base_image, ["sh", "-c", "echo from-$NODE > /data/f"], **on), "shared")
    )
    writer_obj = json.loads(writer)
    writer_obj["spec"]["containers"][0]["env"] = [
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    ]
    run_to_completion(cluster, namespace, json.dumps(writer_obj), "writer")
    on = {"nodeSelector": {"kubernetes.io/hostname": nodes[1]}}
    reader = restricted(with_claim(pod("reader", base_image, ["cat", "/data/f"], **on), "shared"))
    assert run_to_completion(cluster, namespace, reader, "reader").strip() == f"from-{nodes[0]}"
