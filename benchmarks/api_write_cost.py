"""What one write costs the API server: a CodexTrainingJob's against a ConfigMap's and an Event's.

Every progress write of the operator is an update of a CodexTrainingJob (its status subresource). The
API server decodes the stored object, applies the patch, validates the whole object against the CRD's
schema and rules, tracks managed fields and re-encodes it for storage and every watcher; for a custom
resource that all goes through its generic (JSON) path. This measures, on the test cluster, the CPU
the kube-apiserver and etcd processes spend per call (psutil, their CPU time before and after N calls
made one after another), for the calls the operator makes per job:

    python benchmarks/api_write_cost.py [--calls 300]

It needs the kind test cluster (python tests/cluster/cluster.py up): the API server must run on this
machine for its CPU time to be read. It works in a namespace of its own and deletes it at the end.
It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client, config

from process_cpu import count, cpu_by_process

ROOT = Path(__file__).resolve().parents[1]
KUBECONFIG = Path(os.environ.get("KUBECONFIG") or ROOT / ".cluster" / "kubeconfig")
EXAMPLE = ROOT / "configs" / "examples" / "tiny-cpu.yaml"
GROUP, VERSION, PLURAL = "codex.ml", "v1alpha1", "codextrainingjobs"
MERGE = "application/merge-patch+json"


def cpu(name: str) -> float:
    """CPU seconds so far of every process of this name on the machine."""
    return cpu_by_process((name,)).get(name, 0.0)


async def per_call(n: int, call: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    """The API server's and etcd's CPU per call, and the wall time per call, over n calls in a row."""
    api0, etcd0, t0 = cpu("kube-apiserver"), cpu("etcd"), time.perf_counter()
    for i in range(n):
        await call(i)
    return {
        "apiserver_ms": (cpu("kube-apiserver") - api0) / n * 1000,
        "etcd_ms": (cpu("etcd") - etcd0) / n * 1000,
        "wall_ms": (time.perf_counter() - t0) / n * 1000,
    }


async def measure(n: int) -> dict[str, dict[str, float]]:
    servers = count("kube-apiserver")
    if servers == 0:
        raise SystemExit("no kube-apiserver process on this machine: start the test cluster first")
    if servers > 1:
        print(f"warning: {servers} API servers on this machine; their CPU is counted together", flush=True)
    await config.load_kube_config(config_file=str(KUBECONFIG))
    api = client.ApiClient()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = f"codex-apicost-{uuid.uuid4().hex[:6]}"
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    job_file = yaml.safe_dump({"spec": spec})
    ctj = (GROUP, VERSION, ns, PLURAL)
    await core.create_namespace({"metadata": {"name": ns}})
    calls: dict[str, Callable[[int], Awaitable[Any]]] = {
        "create CodexTrainingJob": lambda i: custom.create_namespaced_custom_object(
            *ctj,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "CodexTrainingJob",
                "metadata": {"name": f"j{i}"},
                "spec": spec,
            },
            _preload_content=False,
        ),  # fmt: skip
        "patch CodexTrainingJob/status (a progress write)": lambda i: custom.patch_namespaced_custom_object_status(
            *ctj,
            f"j{i}",
            {"status": {"phase": "Running", "progress": {"step": i, "totalSteps": 300}}},
            _content_type=MERGE,
            _preload_content=False,
        ),  # fmt: skip
        "create ConfigMap (a job file)": lambda i: core.create_namespaced_config_map(
            ns, {"metadata": {"name": f"j{i}-config"}, "data": {"job.yaml": job_file}}, _preload_content=False
        ),
        "patch ConfigMap": lambda i: core.patch_namespaced_config_map(
            f"j{i}-config", ns, {"metadata": {"labels": {"step": str(i)}}}, _preload_content=False
        ),
        "create Event": lambda i: core.create_namespaced_event(
            ns,
            {
                "metadata": {"generateName": "e-"},
                "type": "Normal",
                "reason": "Running",
                "message": "running",
                "involvedObject": {"kind": "CodexTrainingJob", "name": f"j{i}", "namespace": ns},
                "source": {"component": "codex-operator"},
            },
            _preload_content=False,
        ),  # fmt: skip
    }
    try:
        return {label: await per_call(n, call) for label, call in calls.items()}
    finally:
        await core.delete_namespace(ns)
        await api.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300, help="calls of each kind, one after another")
    args = ap.parse_args()
    res = asyncio.run(measure(args.calls))
    base = res["patch ConfigMap"]["apiserver_ms"]
    print(f"`python benchmarks/api_write_cost.py --calls {args.calls}` — {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}, the kind test cluster\n")  # fmt: skip
    print("| call | API server CPU per call | vs patch ConfigMap | etcd CPU per call | wall per call |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, r in res.items():
        print(f"| {label} | {r['apiserver_ms']:.1f} ms | {r['apiserver_ms'] / base:.1f}× | {r['etcd_ms']:.1f} ms | "
              f"{r['wall_ms']:.1f} ms |")  # fmt: skip


if __name__ == "__main__":
    main()
