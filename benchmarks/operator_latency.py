"""Operator latency: N CodexTrainingJobs created at once, measured from the client side.

Starts the operator as a subprocess (as a user does on a laptop: outside the cluster, through
$KUBECONFIG, progress read through the API server's pods/proxy), runs kwok (sigs.k8s.io/kwok) with a
few fake nodes so that a thousand trainer pods can "run" on a two-worker cluster, creates N jobs in a
namespace of its own as fast as the client allows, and reports from watch streams (local monotonic
clock, taken when each event's line arrives):

  create→Job      the create call returning → the attempt Job `<name>-a1` appearing
  create→Running  the create call returning → `status.phase == Running`
  Job→pod Running the attempt Job appearing → its pod Running (the Job controller, scheduler, kwok)
  pod→Running     the pod Running → the job's phase Running (Job status update + the operator)

and the operator's RSS (psutil, every 0.2 s: peak, with all N running, at the end), its CPU time, and
its API writes per job over the whole lifecycle (create → Running → a quiet interval → delete), from
its /metrics counter `codex_operator_api_calls_total` (verbs create/patch/delete) plus the Events it
posts (Events whose involvedObject is a CodexTrainingJob). kwok never starts a container, so no
progress can be read (the operator's progress reads fail and write nothing): every write counted is
a write "besides progress".

    python benchmarks/operator_latency.py --jobs 100 [--readme]
    python benchmarks/operator_latency.py --jobs 1000 [--readme] [--profile]

--profile samples the operator with py-spy (on PATH) and adds where its CPU goes, by package and by
function. --controller-qps Q raises the controller-manager's client limit (20 requests/s per
controller) to Q for the run, on the kind control-plane node, and puts it back at the end: 10,000 jobs
need it to reach Running within the hour.

Needs the test cluster (python tests/cluster/cluster.py up) and kwok in .cluster/bin
(GOBIN=$PWD/.cluster/bin go install sigs.k8s.io/kwok/cmd/kwok@v0.8.0; `make bench-operator` does
both). Everything it creates (namespace, fake nodes, kwok, the operator) is removed at the end, also
on Ctrl-C or an error. It measures; it asserts nothing about the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from operator_report import malloc_report, report, rounds_summary, update_readme
from process_cpu import cpu_by_process
from pyspy_profile import PROFILE_RATE, profile, profile_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STATE = Path(os.environ.get("CODEX_CLUSTER_DIR", ROOT / ".cluster"))
KUBECONFIG = Path(os.environ.get("KUBECONFIG") or STATE / "kubeconfig")
KWOK = Path(os.environ.get("KWOK", STATE / "bin" / "kwok"))
KWOK_VERSION = os.environ.get("KWOK_VERSION", "v0.8.0")
STAGES = Path(__file__).resolve().parent / "kwok-stages.yaml"
CRD_FILE = ROOT / "crds" / "codextrainingjobs.codex.ml.yaml"
EXAMPLE = ROOT / "configs" / "examples" / "tiny-cpu.yaml"
GROUP, VERSION, PLURAL, KIND = "codex.ml", "v1alpha1", "codextrainingjobs", "CodexTrainingJob"
FAKE = "kwok.x-k8s.io/node"
BENCH_LABEL = "codex.ml/benchmark"
SETTLE_SECONDS = 30  # after the delete, before the RSS called settled
CLAIM = "bench-checkpoints"
WRITE_VERBS = ("create", "patch", "delete")
# kopf's own writes (not in the operator's API counter): its timers put this finalizer on every job
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


CONTROLLER_MANIFEST = "/etc/kubernetes/manifests/kube-controller-manager.yaml"
CONTROLLER_BACKUP = "/etc/kubernetes/kube-controller-manager.yaml.bench"  # outside manifests/: not a second pod


def kubectl(*args: str, check: bool = True, timeout: float = 120, input: str | None = None):
    cmd = [str(STATE / "bin" / "k8s"), "kubectl", "--kubeconfig", str(KUBECONFIG), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r


def _as_list(docs: list[dict[str, Any]]) -> str:
    """Objects for `kubectl create -f -`, as JSON (in YAML an all-digit run id would turn into a number)."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _others_running() -> dict[str, int]:
    """Other users of the cluster that distort the figures: integration tests and other operators."""

    def count(pattern: str) -> int:
        r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        return len([p for p in r.stdout.split() if int(p) != os.getpid()])

    return {
        "pytest tests/integration": count("pytest tests/integration"),
        "codex_operator": count("codex_operator.cli"),
    }


# ---------------------------------------------------------------- what the benchmark starts


@dataclass
class Run:
    jobs: int
    nodes: int
    progress_interval: float
    image: str
    concurrency: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="codex-bench-")))
    kwok: subprocess.Popen | None = None
    operator: subprocess.Popen | None = None
    metrics_port: int = field(default_factory=_free_port)
    namespace_made: bool = False
    nodes_made: list[str] = field(default_factory=list)
    profiler: subprocess.Popen | None = None
    throttle: int = 0  # APF shares of the operator's own priority level; 0: not throttled
    throttle_made: bool = False
    controller_qps: int = 0  # the controller-manager's client limit for this run; 0: as the cluster has it
    controller_node: str | None = None  # the node whose controller-manager cleanup puts back
    malloc_stats: bool = False  # sample the operator's allocators (benchmarks/malloc_stats)

    @property
    def namespace(self) -> str:
        return f"codex-bench-{self.id}"

    # -------------------------------------------------------------- kwok and its nodes

    def start_kwok(self) -> None:
        if not KWOK.exists():
            raise SystemExit(
                f"kwok not found at {KWOK}: GOBIN={KWOK.parent} go install sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"
            )
        log = (self.workdir / "kwok.log").open("w")
        self.kwok = subprocess.Popen(
            [str(KWOK), "--kubeconfig", str(KUBECONFIG), "-c", str(STAGES), "--manage-all-nodes=false",
             f"--manage-nodes-with-annotation-selector={FAKE}=fake", "--node-lease-duration-seconds=40",
             "--cidr=10.128.0.0/16", "-v", "WARN"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def make_nodes(self) -> None:
        docs = []
        for i in range(self.nodes):
            name = f"kwok-{self.id}-{i}"
            self.nodes_made.append(name)
            capacity = {"cpu": "1000", "memory": "4Ti", "pods": str(max(110, 2 * self.jobs // self.nodes + 10))}
            docs.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": {FAKE: "fake"},
                             "labels": {"type": "kwok", BENCH_LABEL: self.id, "kubernetes.io/hostname": name}},
                "spec": {"taints": [{"key": FAKE, "value": "fake", "effect": "NoSchedule"}]},
                "status": {"allocatable": capacity, "capacity": capacity},
            })  # fmt: skip
        kubectl("create", "-f", "-", input=_as_list(docs))
        kubectl("wait", "--for=condition=Ready", "node", "-l", f"{BENCH_LABEL}={self.id}", "--timeout=60s")

    # -------------------------------------------------------------- the controller-manager's request limit

    def raise_controller_qps(self) -> None:
        """--controller-qps: each controller's client (the Job controller's, the garbage collector's) is limited
        to 20 requests/s by default, which 10,000 pods and their Jobs' status updates take over an hour to get
        through. The kind control plane's static pod gets --kube-api-qps (and twice that as burst) for this run;
        cleanup puts the manifest back, and the kubelet restarts the controller-manager both times."""
        node = kubectl("get", "nodes", "-l", "node-role.kubernetes.io/control-plane",
                       "-o", "jsonpath={.items[0].metadata.name}").stdout.strip()  # fmt: skip
        q = self.controller_qps
        flags = f"\\n    - --kube-api-qps={q}\\n    - --kube-api-burst={2 * q}"
        script = (f"cp {CONTROLLER_MANIFEST} {CONTROLLER_BACKUP} && "
                  f"sed -i 's|^    - kube-controller-manager$|&{flags}|' {CONTROLLER_MANIFEST}")  # fmt: skip
        subprocess.run(["docker", "exec", node, "sh", "-c", script], check=True, capture_output=True)
        self.controller_node = node
        self._wait_controller(node, f"--kube-api-qps={q}")

    def restore_controller(self) -> None:
        if self.controller_node is None:
            return
        script = f"mv {CONTROLLER_BACKUP} {CONTROLLER_MANIFEST}"
        subprocess.run(["docker", "exec", self.controller_node, "sh", "-c", script], check=False, capture_output=True)
        self._wait_controller(self.controller_node, None)
        self.controller_node = None

    @staticmethod
    def _wait_controller(node: str, flag: str | None) -> None:
        """Until the controller-manager's pod runs with (or without) `flag` and is Ready."""
        pod = f"kube-controller-manager-{node}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            r = kubectl("-n", "kube-system", "get", "pod", pod, "-o", "json", check=False)
            if r.returncode == 0:
                got = json.loads(r.stdout)
                command = " ".join(got["spec"]["containers"][0].get("command") or [])
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in got["status"].get("conditions", []))
                if ready and (flag in command if flag else "--kube-api-qps" not in command):
                    return
            time.sleep(2)
        raise RuntimeError(f"the controller-manager on {node} did not come back within 180 s")

    # -------------------------------------------------------------- namespace, volume, operator

    def make_namespace(self) -> None:
        if kubectl("get", "crd", f"{PLURAL}.{GROUP}", check=False).returncode != 0:
            kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
            kubectl("wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
        kubectl("create", "namespace", self.namespace)
        self.namespace_made = True
        kubectl("label", "namespace", self.namespace, f"{BENCH_LABEL}={self.id}")
        claim = {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        }  # fmt: skip
        kubectl("-n", self.namespace, "create", "-f", "-", input=json.dumps(claim))
        kubectl("-n", self.namespace, "wait", "--for=jsonpath={.status.phase}=Bound", f"pvc/{CLAIM}",
                "--timeout=60s")  # fmt: skip

    # -------------------------------------------------------------- --throttle: API Priority and Fairness

    @property
    def throttled_name(self) -> str:
        return f"codex-bench-{self.id}-throttled"

    def throttle_operator(self) -> Path:
        """A ServiceAccount for the operator (the admin kubeconfig's user is in system:masters, which APF
        exempts), and a priority level of its own with `self.throttle` shares, no borrowing, and requests
        over its seats refused with 429 at once. Returns the operator's kubeconfig."""
        sa, name = "codex-bench-operator", self.throttled_name
        kubectl("-n", self.namespace, "create", "serviceaccount", sa)
        docs = [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": self.namespace}]},
            {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
             "metadata": {"name": name},
             "spec": {"type": "Limited", "limited": {
                 "nominalConcurrencyShares": self.throttle, "lendablePercent": 0, "borrowingLimitPercent": 0,
                 "limitResponse": {"type": "Reject"}}}},
            {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": name},
             "spec": {"priorityLevelConfiguration": {"name": name}, "matchingPrecedence": 200,
                      "distinguisherMethod": {"type": "ByUser"},
                      "rules": [{"subjects": [{"kind": "ServiceAccount",
                                               "serviceAccount": {"name": sa, "namespace": self.namespace}}],
                                 "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                    "namespaces": ["*"], "clusterScope": True}],
                                 "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}},
        ]  # fmt: skip
        self.throttle_made = True
        kubectl("create", "-f", "-", input=_as_list(docs))
        token = kubectl("-n", self.namespace, "create", "token", sa, "--duration=4h").stdout.strip()
        admin = yaml.safe_load(KUBECONFIG.read_text())
        cluster = admin["clusters"][0]
        cfg = {
            "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa}}], "current-context": sa,
        }  # fmt: skip
        path = self.workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path

    def start_operator(self) -> None:
        # --namespace: the benchmark's only; an operator for all namespaces would also act on the jobs of
        # whoever else uses this cluster (and theirs on ours)
        log = (self.workdir / "operator.log").open("w")
        kubeconfig = self.throttle_operator() if self.throttle else KUBECONFIG
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "codex_operator.cli", "run", "--metrics-port", str(self.metrics_port),
             "--progress-via", "proxy", "--default-image", self.image, "--namespace", self.namespace,
             "--progress-interval", str(self.progress_interval)],
            env={**os.environ, "KUBECONFIG": str(kubeconfig), **self.malloc_env()}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while self.scrape() is None:
            if self.operator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not start; see {self.workdir / 'operator.log'}")
            time.sleep(0.2)

    @property
    def malloc_path(self) -> Path:
        return self.workdir / "malloc-stats.txt"

    def malloc_env(self) -> dict[str, str]:
        """--malloc-stats: the sampler of benchmarks/malloc_stats/ in the operator process."""
        if not self.malloc_stats:
            return {}
        path = os.pathsep.join(p for p in (str(HERE / "malloc_stats"), os.environ.get("PYTHONPATH", "")) if p)
        return {"PYTHONPATH": path, "CODEX_BENCH_MALLOC_STATS": str(self.malloc_path)}

    def scrape(self) -> dict[tuple[str, str, str], float] | None:
        """The operator's API calls so far, by (verb, kind, outcome); also progress errors as ('progress', ...)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        out: dict[tuple[str, str, str], float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "codex_operator_api_calls_total":
                    out[(s.labels["verb"], s.labels["kind"], s.labels["outcome"])] = s.value
                elif s.name == "codex_operator_progress_errors_total":
                    out[("progress-error", "", "")] = s.value
                elif s.name == "codex_operator_api_throttled_total":
                    out[("throttled", "", "")] = s.value
                elif s.name == "codex_operator_reconcile_seconds_count":
                    out[("reconciles", "", "")] = s.value
                elif s.name == "codex_operator_reconcile_seconds_sum":
                    out[("reconcile-seconds", "", "")] = s.value
                elif s.name == "codex_operator_timer_round_seconds":
                    out[("timer-round", "", "")] = s.value
        return out

    # -------------------------------------------------------------- py-spy, where --profile asks

    @property
    def profile_path(self) -> Path:
        return self.workdir / "operator.pyspy.txt"

    def start_profile(self) -> None:
        spy = shutil.which("py-spy")
        if spy is None:
            raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
        assert self.operator is not None
        self.profiler = subprocess.Popen(
            [spy, "record", "--pid", str(self.operator.pid), "--format", "raw", "--rate", str(PROFILE_RATE),
             "--nonblocking", "--output", str(self.profile_path)],
            stdout=subprocess.DEVNULL, stderr=(self.workdir / "py-spy.log").open("w"), start_new_session=True,
        )  # fmt: skip

    def stop_profile(self) -> None:
        if self.profiler is not None and self.profiler.poll() is None:
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.profiler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.profiler.kill()

    # -------------------------------------------------------------- the end, whatever happened

    def cleanup(self) -> None:
        """Operator, namespace, pods on the fake nodes, kwok, fake nodes: in that order, each best effort."""
        self.stop_profile()
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
        if self.namespace_made:
            kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
            # pods on fake nodes go only when kwok deletes them (or, with the nodes gone, the pod GC)
            deadline = time.monotonic() + 120 + self.jobs * 0.2
            while time.monotonic() < deadline:
                r = kubectl("-n", self.namespace, "get", "pods", "-o", "name", check=False)
                if r.returncode == 0 and not r.stdout.strip():
                    break
                time.sleep(2)
        if self.kwok is not None and self.kwok.poll() is None:
            self.kwok.send_signal(signal.SIGTERM)
            try:
                self.kwok.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kwok.kill()
        if self.nodes_made:
            kubectl("delete", "node", "-l", f"{BENCH_LABEL}={self.id}", "--wait=false", check=False)
        self.restore_controller()
        if self.throttle_made:
            for kind in ("flowschema", "prioritylevelconfiguration", "clusterrolebinding"):
                kubectl("delete", kind, self.throttled_name, "--ignore-not-found", check=False)
        if self.namespace_made:
            r = kubectl("wait", "--for=delete", f"namespace/{self.namespace}", "--timeout=180s", check=False)
            gone = r.returncode == 0
            print(f"namespace {self.namespace} {'deleted' if gone else 'still terminating'}; logs in {self.workdir}")


# ---------------------------------------------------------------- watches: one clock, line by line


@dataclass
class Clocks:
    created: dict[str, float] = field(default_factory=dict)  # create call returned
    pending: dict[str, float] = field(default_factory=dict)  # first status.phase seen (the first reconcile)
    job: dict[str, float] = field(default_factory=dict)  # attempt Job ADDED
    pod_running: dict[str, float] = field(default_factory=dict)  # rank-0 pod phase Running
    running: dict[str, float] = field(default_factory=dict)  # status.phase Running
    ctj_writes: dict[str, int] = field(default_factory=dict)  # MODIFIED events of each job (anyone's writes)
    finalizers: dict[str, list[str]] = field(default_factory=dict)  # each job's finalizers as last seen
    finalizer_writes: int = 0  # kopf's own patches: adding its finalizer, removing it on deletion
    deleted: set[str] = field(default_factory=set)
    other_phases: dict[str, str] = field(default_factory=dict)
    phase: dict[str, str] = field(default_factory=dict)  # each job's phase as last seen
    entered_running: dict[str, int] = field(default_factory=dict)  # times each job went into Running
    attempts: dict[str, set[str]] = field(default_factory=dict)  # each job's attempt Jobs (any name) ever seen

    def on_ctj(self, kind: str, obj: dict, t: float) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.deleted.add(name)
            if KOPF_FINALIZER in self.finalizers.get(name, []):
                self.finalizer_writes += 1  # the last finalizer's removal is what deleted it
            return
        if kind == "MODIFIED":
            self.ctj_writes[name] = self.ctj_writes.get(name, 0) + 1
        fin = obj["metadata"].get("finalizers") or []
        if (KOPF_FINALIZER in fin) != (KOPF_FINALIZER in self.finalizers.get(name, [])):
            self.finalizer_writes += 1
        self.finalizers[name] = fin
        phase = (obj.get("status") or {}).get("phase")
        if phase == "Running" and self.phase.get(name) != "Running":
            self.entered_running[name] = self.entered_running.get(name, 0) + 1
        if phase:
            self.phase[name] = phase
            self.pending.setdefault(name, t)
        if phase == "Running":
            self.running.setdefault(name, t)
        elif phase and phase not in ("Pending", "Running"):
            self.other_phases[name] = phase

    def on_job(self, kind: str, obj: dict, t: float) -> None:
        if kind == "ADDED":
            self.job.setdefault(obj["metadata"]["name"].removesuffix("-a1"), t)
            owner = (obj["metadata"].get("labels") or {}).get("codex.ml/job-name", "?")
            self.attempts.setdefault(owner, set()).add(obj["metadata"]["name"])

    def on_pod(self, kind: str, obj: dict, t: float) -> None:
        owner = (obj["metadata"].get("labels") or {}).get("codex.ml/job-name")
        if owner and (obj.get("status") or {}).get("phase") == "Running":
            self.pod_running.setdefault(owner, t)


async def _watch(list_fn, namespace: str, on_event, ready: asyncio.Event) -> None:
    """Watch a namespaced collection from now on, calling on_event(type, obj, t) for each line."""
    first = await list_fn(namespace, limit=1, _preload_content=False)  # only its resourceVersion
    rv = json.loads(await first.read())["metadata"]["resourceVersion"]
    while True:
        resp = await list_fn(namespace, watch=True, resource_version=rv, allow_watch_bookmarks=True,
                             timeout_seconds=3600, _preload_content=False)  # fmt: skip
        ready.set()
        buf = b""
        async for chunk in resp.content.iter_any():
            t = time.perf_counter()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                ev = json.loads(line)
                obj = ev["object"]
                if ev["type"] == "ERROR":
                    raise RuntimeError(f"watch error: {obj}")
                rv = obj["metadata"]["resourceVersion"]
                if ev["type"] != "BOOKMARK":
                    on_event(ev["type"], obj, t)


def job_manifest(name: str) -> dict[str, Any]:
    """The tiny-cpu example, as a user would apply it, sent to the fake nodes with one shared volume."""
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    spec["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}}
    spec["storage"] = {"existingClaim": CLAIM}
    spec["nodeSelector"] = {"type": "kwok"}
    spec["tolerations"] = [{"key": FAKE, "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec}


async def measure(run: Run, timeout: float, run_profile: bool = False) -> dict[str, Any]:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(KUBECONFIG), client_configuration=cfg)
    cfg.connection_pool_maxsize = run.concurrency + 8
    api = client.ApiClient(cfg)
    custom, batch, core = client.CustomObjectsApi(api), client.BatchV1Api(api), client.CoreV1Api(api)
    ns, n = run.namespace, run.jobs
    c = Clocks()
    names = [f"bench-{i:04d}" for i in range(n)]
    proc = psutil.Process(run.operator.pid)
    rss: list[tuple[float, int]] = []

    async def sample_rss() -> None:
        while True:
            try:
                rss.append((time.perf_counter(), proc.memory_info().rss))
            except psutil.Error:
                return
            await asyncio.sleep(0.2)

    lister = lambda f: lambda namespace, **kw: f(GROUP, VERSION, namespace, PLURAL, **kw)  # noqa: E731
    watches, readies = [], []
    for fn, cb in ((lister(custom.list_namespaced_custom_object), c.on_ctj), (batch.list_namespaced_job, c.on_job),
                   (core.list_namespaced_pod, c.on_pod)):  # fmt: skip
        ready = asyncio.Event()
        readies.append(ready)
        watches.append(asyncio.create_task(_watch(fn, ns, cb, ready)))
    rounds: list[tuple[int, float]] = []  # (jobs Running then, the timer's last round in seconds)

    async def sample_rounds() -> None:
        while True:
            await asyncio.sleep(2)
            seen = await asyncio.to_thread(run.scrape)
            if seen and ("timer-round", "", "") in seen:
                rounds.append((len(c.running) - len(c.deleted), seen[("timer-round", "", "")]))

    sampler = asyncio.create_task(sample_rss())
    round_sampler = asyncio.create_task(sample_rounds())
    try:
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
        await asyncio.sleep(1)  # the operator's own watches are up (it served /metrics before we got here)
        before = run.scrape() or {}
        cpu0 = sum(proc.cpu_times()[:2])
        rss_idle = proc.memory_info().rss
        others_start = _others_running()
        sem = asyncio.Semaphore(run.concurrency)
        if run_profile:
            run.start_profile()

        async def create(name: str) -> None:
            async with sem:
                await custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, job_manifest(name),
                                                             _preload_content=False)  # fmt: skip
                c.created[name] = time.perf_counter()

        burst = asyncio.create_task(_burst_cpu(c, n, run.operator.pid))
        t0 = time.perf_counter()
        await asyncio.gather(*(create(x) for x in names))
        t_created = time.perf_counter() - t0
        print(f"created {n} jobs in {t_created:.1f} s; waiting for them to run", flush=True)
        await _wait_running(c, n, watches, timeout, proc)
        burst_cpu = await burst if burst.done() else None
        t_all_running = time.perf_counter() - t0
        # a quiet interval: every job's timer ticks at least once while it runs
        await asyncio.sleep(run.progress_interval + 3)
        running = run.scrape() or {}
        children = await _children(core, ns)
        rss_running = proc.memory_info().rss
        conns_running = _api_connections(proc)
        cpu_running = sum(proc.cpu_times()[:2]) - cpu0

        # the end of the lifecycle: the user deletes the jobs (the API server's GC deletes the children)
        t_del = time.perf_counter()
        await _delete_all(custom, ns, sem)
        await _wait_deleted(c, n, batch, ns)
        t_delete = time.perf_counter() - t_del
        run.stop_profile()
        after = run.scrape() or {}
        rss_end = proc.memory_info().rss
        cpu_total = sum(proc.cpu_times()[:2]) - cpu0  # the lifecycle's: before the settle below
        # idle connections close after aiohttp's keep-alive (15 s), and with them their TLS buffers
        await asyncio.sleep(SETTLE_SECONDS)
        rss_settled, conns_settled = proc.memory_info().rss, _api_connections(proc)
        events = await _items(core.list_namespaced_event, ns)
        others_end = _others_running()
        log = _log_counts(run.workdir / "operator.log")
    finally:
        sampler.cancel()
        round_sampler.cancel()
        for w in watches:
            w.cancel()
        await asyncio.gather(sampler, round_sampler, *watches, return_exceptions=True)
        await api.close()

    ends = {
        "before": before,
        "running": running,
        "after": after,
        "events": events,
        "children": children,
        "log": log,
        "rounds": rounds,
    }
    spans = {"created": t_created, "all_running": t_all_running, "delete": t_delete}
    rss_at = {"idle": rss_idle, "peak": max([r for _, r in rss] + [rss_idle]), "running": rss_running, "end": rss_end}
    rss_at |= {"settled": rss_settled, "settled_connections": conns_settled, "settled_after_s": SETTLE_SECONDS}
    cpu = {"to_running": cpu_running, "total": cpu_total, "burst": burst_cpu}
    return _results(c, names, ends, spans, rss_at, cpu, conns_running, (others_start, others_end))


def _log_counts(path: Path) -> dict[str, Any]:
    """The operator's log lines by level, a few of its ERROR lines, and kopf's retried requests."""
    levels: dict[str, int] = {}
    errors: list[str] = []
    retried = 0
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 3)
        level = parts[2] if len(parts) > 2 and parts[2].isupper() else ""
        if level:
            levels[level] = levels.get(level, 0) + 1
        if level == "ERROR" and len(errors) < 3:
            errors.append(line[:300])
        # (not a bare "429": job names such as bench-0429 have it)
        if "will retry" in line or "Too many requests" in line or "HTTP 429" in line or "status=429" in line:
            retried += 1
    return {"levels": levels, "errors": errors, "retry_lines": retried}


async def _delete_all(custom, ns: str, sem: asyncio.Semaphore) -> None:
    """Delete every job in one call, as `kubectl delete ctj --all -n NS` would (the API server's GC deletes the
    children). 10,000 objects take the API server longer than its request timeout (60 s): it answers 504
    or closes the connection, and may stop there; what is left is then deleted one by one."""
    try:
        await custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, PLURAL,
                                                                propagation_policy="Background")  # fmt: skip
        return
    except (ApiException, aiohttp.ServerDisconnectedError) as e:
        if isinstance(e, ApiException) and e.status != 504:
            raise
        print(f"  the delete call ran out of time ({e.__class__.__name__}); deleting the rest one by one", flush=True)

    async def delete(name: str) -> None:
        async with sem:
            try:
                await custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                                             propagation_policy="Background")  # fmt: skip
            except ApiException as e:
                if e.status != 404:
                    raise

    lister = lambda namespace, **kw: custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kw)  # noqa: E731
    left = await _items(lister, ns)
    await asyncio.gather(*(delete(item["metadata"]["name"]) for item in left))


async def _items(list_fn, ns: str, **kw: Any) -> list[dict[str, Any]]:
    """A whole collection, 500 at a time: 10,000 job files in one response take the loaded API server
    past its 60 s request timeout."""
    items, token = [], None
    while True:
        resp = await list_fn(ns, limit=500, _continue=token, _preload_content=False, **kw)
        page = json.loads(await resp.read())
        items += page["items"]
        if not (token := page["metadata"].get("continue")):
            return items


async def _children(core, ns: str) -> dict[str, dict[str, int]]:
    """How many ConfigMaps and Services each job has (by the operator's label), once all run."""
    out: dict[str, dict[str, int]] = {"ConfigMap": {}, "Service": {}}
    for kind, fn in (("ConfigMap", core.list_namespaced_config_map), ("Service", core.list_namespaced_service)):
        for item in await _items(fn, ns, label_selector="codex.ml/job-name"):
            job = item["metadata"]["labels"]["codex.ml/job-name"]
            out[kind][job] = out[kind].get(job, 0) + 1
    return out


def correctness(c: Clocks, names: list[str], children: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Each job went into Running exactly once and has exactly one attempt Job, one ConfigMap, and no Service (its
    one node meets on localhost)."""
    wrong = {
        "Running not exactly once": [x for x in names if c.entered_running.get(x, 0) != 1],
        "attempt Jobs not exactly one": [x for x in names if len(c.attempts.get(x, ())) != 1],
        "ConfigMaps not exactly one": [x for x in names if children["ConfigMap"].get(x, 0) != 1],
        "a Service for a one-node job": [x for x in names if children["Service"].get(x, 0) != 0],
    }
    return {k: v for k, v in wrong.items() if v}


async def _burst_cpu(c: Clocks, n: int, operator_pid: int) -> dict[str, Any]:
    """Who used the machine's CPU from the first create until the last attempt Job was seen: what the
    create→Job latency waited on."""
    t0, start = time.perf_counter(), _sharers_cpu(operator_pid)
    while len(c.job) < n:
        await asyncio.sleep(0.2)
    end = _sharers_cpu(operator_pid)
    by = {k: end[k] - start.get(k, 0.0) for k in end}
    return {"wall": time.perf_counter() - t0, "cores": os.cpu_count(), "by": by}


async def _wait_running(c: Clocks, n: int, watches: list[asyncio.Task], timeout: float, proc: psutil.Process) -> None:
    deadline = time.perf_counter() + timeout
    last_report = time.perf_counter()
    while len(c.running) < n and time.perf_counter() < deadline:
        for w in watches:
            if w.done():
                w.result()
        await asyncio.sleep(0.2)
        if time.perf_counter() - last_report > 15:
            last_report = time.perf_counter()
            rss, cpu = proc.memory_info().rss / 2**20, sum(proc.cpu_times()[:2])
            print(f"  {len(c.job)} Jobs, {len(c.pod_running)} pods running, {len(c.running)} jobs Running; "
                  f"operator RSS {rss:.0f} MB, CPU {cpu:.0f} s", flush=True)  # fmt: skip


async def _wait_deleted(c: Clocks, n: int, batch, ns: str) -> None:
    del_deadline = time.perf_counter() + 120 + n * 0.2
    while len(c.deleted) < n and time.perf_counter() < del_deadline:
        await asyncio.sleep(0.2)
    print(f"  {len(c.deleted)} jobs deleted; waiting for the garbage collector to delete their children", flush=True)
    # the GC deletes Jobs and pods after their owners; the operator sees those events too
    while time.perf_counter() < del_deadline:
        resp = await batch.list_namespaced_job(ns, limit=1, _preload_content=False)
        if not json.loads(await resp.read())["items"]:
            break
        await asyncio.sleep(1)
    await asyncio.sleep(3)


def _results(c: Clocks, names: list[str], ends: dict, spans: dict, rss_at: dict, cpu: dict, conns_running: int,
             others: tuple) -> dict[str, Any]:  # fmt: skip
    n = len(names)
    before, running, after, events = ends["before"], ends["running"], ends["after"], ends["events"]
    t_created, t_all_running, t_delete = spans["created"], spans["all_running"], spans["delete"]
    others_start, others_end = others

    def delta(a: dict, b: dict, verbs=WRITE_VERBS) -> dict[tuple[str, str, str], float]:
        return {k: v - a.get(k, 0) for k, v in b.items() if k[0] in verbs and v - a.get(k, 0) > 0}

    def lat(start: dict[str, float], end: dict[str, float]) -> list[float]:
        return [end[k] - start[k] for k in names if k in start and k in end]

    ours = [e for e in events if (e.get("involvedObject") or {}).get("kind") == KIND]
    by_source: dict[str, int] = {}
    for e in events:
        who = e.get("reportingComponent") or (e.get("source") or {}).get("component") or "?"
        by_source[who] = by_source.get(who, 0) + int(e.get("count") or 1)
    return {
        "jobs": n,
        "created_in_s": t_created,
        "all_running_in_s": t_all_running,
        "delete_in_s": t_delete,
        "reached": {"job": len(c.job), "pod_running": len(c.pod_running), "running": len(c.running)},
        "other_phases": c.other_phases,
        "latency": {
            "create→status": lat(c.created, c.pending),
            "create→Job": lat(c.created, c.job),
            "create→Running": lat(c.created, c.running),
            "Job→pod Running": lat(c.job, c.pod_running),
            "pod→Running": lat(c.pod_running, c.running),
        },
        "rss": rss_at,
        "cpu_s": cpu,
        "api_connections": conns_running,
        "writes_to_running": delta(before, running),
        "writes_delete": delta(running, after),
        "writes_total": delta(before, after),
        "reads_total": delta(before, after, verbs=("get", "list")),
        "progress_errors": after.get(("progress-error", "", ""), 0) - before.get(("progress-error", "", ""), 0),
        "reconciles": after.get(("reconciles", "", ""), 0) - before.get(("reconciles", "", ""), 0),
        "reconcile_s": after.get(("reconcile-seconds", "", ""), 0) - before.get(("reconcile-seconds", "", ""), 0),
        "events_ours": sum(int(e.get("count") or 1) for e in ours),
        "events_by_source": by_source,
        "events_ours_by_reason": _count(e.get("reason", "?") for e in ours),
        "finalizer_writes": c.finalizer_writes,
        "ctj_modified": sum(c.ctj_writes.values()),
        "others": {"start": others_start, "end": others_end},
        "wrong": correctness(c, names, ends["children"]),
        "log": ends["log"],
        "rounds_all_running": [r for k, r in ends["rounds"] if k >= n],
        "throttled": after.get(("throttled", "", ""), 0) - before.get(("throttled", "", ""), 0),
        "api_errors": {
            k: v for k, v in delta(before, after, verbs=("get", "list", *WRITE_VERBS)).items() if k[2] == "error"
        },
    }


def _api_connections(proc: psutil.Process) -> int:
    """The operator's open TCP connections to the API server (each TLS connection costs memory)."""
    server = yaml.safe_load(KUBECONFIG.read_text())["clusters"][0]["cluster"]["server"]
    port = int(server.rsplit(":", 1)[1]) if server.count(":") == 2 else 443
    try:
        return sum(1 for c in proc.net_connections("tcp") if c.raddr and c.raddr.port == port)
    except psutil.Error:
        return -1


# the processes that share the machine's cores with the operator during the burst (the kind nodes' are
# visible from the host by name; kubelet and containerd run on every node and count together)
SHARERS = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kubelet", "containerd", "kwok")


def _sharers_cpu(operator_pid: int) -> dict[str, float]:
    """CPU seconds so far of the operator, this benchmark, each control-plane program and the whole machine."""
    return cpu_by_process(SHARERS, {operator_pid: "operator", os.getpid(): "benchmark"})


def _count(xs) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def machine() -> str:
    v = kubectl("version", "-o", "json", check=False).stdout
    server = json.loads(v)["serverVersion"]["gitVersion"] if v else "?"
    return (
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"Kubernetes {server} (kind test cluster) + kwok {KWOK_VERSION}, {time.strftime('%Y-%m-%d')}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=4, help="fake (kwok) nodes")
    ap.add_argument("--concurrency", type=int, default=32, help="create calls in flight at once")
    ap.add_argument("--progress-interval", type=float, default=10.0, help="the operator's (its default: 10)")
    ap.add_argument("--image", default="codex.local/fake-trainer:1", help="--default-image (kwok pulls nothing)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds to wait for all Running")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--readme", action="store_true", help="put the table into benchmarks/README.md")
    ap.add_argument("--profile", action="store_true", help="py-spy the operator from the first create to the end")
    ap.add_argument("--throttle", type=int, default=0, metavar="SHARES",
                    help="run the operator as a ServiceAccount whose API Priority and Fairness level has SHARES "
                    "nominal concurrency shares, no borrowing, 429 beyond (e.g. 1: about 3 seats)")  # fmt: skip
    ap.add_argument("--controller-qps", type=int, default=0, metavar="QPS",
                    help="raise the controller-manager's client limit (default 20 requests/s per controller) to QPS "
                    "for this run, e.g. 200 for 10,000 jobs; put back at the end")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1,
                    help="create, run and delete the N jobs this many times against one operator, each round "
                    "reported; shows whether what it holds after a mass delete is used again or grows")  # fmt: skip
    ap.add_argument("--malloc-stats", action="store_true",
                    help="sample the operator's glibc heap and CPython arenas every 2 s and say where its RSS is at "
                    "idle, at the peak and after the delete")  # fmt: skip
    args = ap.parse_args()
    if args.rounds > 1 and args.readme:
        ap.error("--readme takes one round")
    command = "python benchmarks/operator_latency.py --jobs " + str(args.jobs)
    run = Run(args.jobs, args.nodes, args.progress_interval, args.image, args.concurrency, throttle=args.throttle,
              controller_qps=args.controller_qps, malloc_stats=args.malloc_stats)  # fmt: skip
    if args.throttle:
        command += f" --throttle {args.throttle}"
    if args.controller_qps:
        command += f" --controller-qps {args.controller_qps}"
    print(f"run {run.id}: {args.jobs} jobs, namespace {run.namespace}, logs in {run.workdir}", flush=True)
    try:
        if args.controller_qps:
            run.raise_controller_qps()
        run.start_kwok()
        run.make_nodes()
        run.make_namespace()
        run.start_operator()
        rounds = []
        for r in range(args.rounds):
            if args.rounds > 1:
                print(f"round {r + 1} of {args.rounds}", flush=True)
            started = time.time()
            rounds.append(asyncio.run(measure(run, args.timeout or 120 + args.jobs * 0.6, args.profile and r == 0)))
            if args.malloc_stats:
                print(malloc_report(run.malloc_path, started), flush=True)
        res = rounds[0]
    finally:
        run.cleanup()
    where = machine()
    if args.rounds > 1:
        command += f" --rounds {args.rounds}"
        for r, each in enumerate(rounds[1:], 2):
            print(f"round {r}:\n" + report(each, command, where) + "\n")
        print(rounds_summary(rounds))
    text = report(res, command, where)
    if args.profile:
        command += " --profile"
        text = report(res, command, where) + "\n\n" + profile_report(profile(run.profile_path), args.jobs)
    print(text)
    if args.json:
        raw = {
            **res,
            **{
                k: {" ".join(kk): v for kk, v in res[k].items()}
                for k in res
                if k.startswith(("writes", "reads", "api_errors"))
            },
        }
        Path(args.json).write_text(json.dumps(raw, indent=2))
    if args.readme:
        update_readme(args.jobs, text, throttled=bool(args.throttle))


if __name__ == "__main__":
    main()
