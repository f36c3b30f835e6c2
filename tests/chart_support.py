"""The Helm chart (charts/codex-operator) as the tests see it: the pinned helm binary and `render(values)`.

    from chart_support import VALUE_SETS, render
    for name, values in VALUE_SETS.items():
        manifests = render(values)      # `helm template`, parsed: a list of dicts

The unit tests (tests/unit/test_chart.py) read what this renders; the cluster suite hands the same
value sets to the API server (`kubectl apply --dry-run=server`). helm comes from `make helm` (built
once into .tools/bin from the Go module proxy, about 4 minutes cold), so both use one binary.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "codex-operator"
HELM = ROOT / ".tools" / "bin" / "helm"
RELEASE = "codex"
NAMESPACE = "codex-system"

# The value sets every test renders (and the cluster suite applies with --dry-run=server). The
# monitors need prometheus-operator's CRDs on the server; the namespaced ones need team-a and team-b.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "namespace-patterns": {"watchNamespacePatterns": ["team-*", "!team-test"]},
    "monitors": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
    "network-policy": {"watchNamespaces": ["team-a", "team-b"], "networkPolicy": {"enabled": True}},
    "two-replicas": {"replicaCount": 2},
    "dashboard": {"grafana": {"dashboard": {"enabled": True}}},
}


_helm_built = threading.Lock()  # one `make helm` at a time in this process (a background one, a test's)
_helm_ready: list[Path] = []


def helm_binary(nice: bool = False) -> Path:
    """.tools/bin/helm at the Makefile's HELM_VERSION: `make helm` builds it unless it is there already
    (`nice`: at the lowest CPU priority, as the cluster session's background build does)."""
    with _helm_built:
        if not _helm_ready:
            make = ["make", "--no-print-directory", "helm"]
            r = subprocess.run(["nice", "-n", "19", *make] if nice else make, cwd=ROOT, capture_output=True,
                               text=True)  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(
                    f"`make helm` failed (it builds helm with Go from the module proxy):\n{r.stdout}{r.stderr}"
                )
            _helm_ready.append(HELM)
        return _helm_ready[0]


def helm(*args: str, values: dict[str, Any] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run helm with ARGS, plus `-f` a file holding `values` (YAML, as a user would write it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-") as f:
        extra: list[str] = []
        if values is not None:
            yaml.safe_dump(values, f)
            f.flush()
            extra = ["-f", f.name]
        return subprocess.run([str(helm_binary()), *args, *extra], capture_output=True, text=True, timeout=timeout)


def template(values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE):
    """`helm template` of the chart, as a CompletedProcess (for the tests of what it refuses)."""
    return helm("template", release, str(CHART), "--namespace", namespace, values=values)


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    """The chart's manifests for `values`, parsed; Helm's message in the error when it refuses them."""
    r = template(values, release=release, namespace=namespace)
    if r.returncode != 0:
        raise ValueError(f"helm template refused {json.dumps(values)}:\n{r.stderr}")
    return [doc for doc in yaml.safe_load_all(r.stdout) if doc]


# ---------------------------------------------------------------- reading what it renders

FULLNAME = f"{RELEASE}-codex-operator"


def kinds(manifests: list[dict]) -> list[tuple[str, str | None]]:
    return sorted((m["kind"], m["metadata"].get("namespace")) for m in manifests)


def one(manifests: list[dict], kind: str, name: str | None = None) -> dict:
    found = [m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} named {name}: {kinds(manifests)}"
    return found[0]


def container(manifests: list[dict]) -> dict:
    (c,) = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env_of(manifests: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in container(manifests).get("env", [])}
