"""The chart's RBAC, rendered by the real helm: it grants exactly what the operator calls (found in its code),
cluster-wide or per watched namespace, never a wildcard, and binds a named ServiceAccount without creating it."""

from __future__ import annotations

import ast

import pytest

import chart_support
from chart_support import FULLNAME, NAMESPACE, VALUE_SETS, container, one, render
from codex_operator import informer, names
from support import ROOT


@pytest.fixture(scope="session", autouse=True)
def helm():
    return chart_support.helm_binary()


KIND_RESOURCES = {  # the kinds the operator's metrics.api_call names, as RBAC (group, resource)
    "Job": ("batch", "jobs"),
    "Pod": ("", "pods"),
    "pods/proxy": ("", "pods/proxy"),
    "ConfigMap": ("", "configmaps"),
    "PersistentVolumeClaim": ("", "persistentvolumeclaims"),
    "Service": ("", "services"),
    names.KIND: (names.GROUP, names.PLURAL),
    f"{names.KIND}/status": (names.GROUP, f"{names.PLURAL}/status"),
    "Lease": ("coordination.k8s.io", "leases"),
    "Event": ("", "events"),
    "Workload": ("kueue.x-k8s.io", "workloads"),
}

# what the API server asks of the operator beyond the calls it makes, and a call the search does not find
BEYOND_CALLS = {
    ("", "events", "create"),  # Kube.post_event posts core/v1 Events
    # blockOwnerDeletion on the children (builders.owner_reference), where OwnerReferencesPermissionEnforcement runs
    (names.GROUP, f"{names.PLURAL}/finalizers", "update"),
}


def _strings(node: ast.expr, func: ast.AST) -> list[str]:
    """What an argument of metrics.api_call can be: a literal, a names constant, an f-string of those, or
    a variable chosen from a dict literal in the same function (Kube.create's kinds)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "names":
        return [getattr(names, node.attr)]
    if isinstance(node, ast.JoinedStr):
        parts = [_strings(v.value if isinstance(v, ast.FormattedValue) else v, func) for v in node.values]
        return ["".join(p[0] for p in parts)]
    if isinstance(node, ast.Name):
        dicts = [d for d in ast.walk(func) if isinstance(d, ast.Dict)]
        return [k.value for d in dicts for k in d.keys if isinstance(k, ast.Constant)]
    raise AssertionError(f"cannot tell what api_call's argument {ast.unparse(node)} is")


def _kinds(node: ast.expr, verb: str, func: ast.AST) -> list[str]:
    """The kinds an api_call names: a kind passed in (Kube.create, get, patch) is any kind whose client
    calls (Kube._calls) include that verb."""
    if isinstance(node, ast.Attribute) and ast.unparse(node) == "self.source.kind":  # an informer's
        return [source.kind for source in (informer.JOBS, *informer.CHILDREN)]
    params = {a.arg for a in func.args.args} if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef) else set()
    dicts = any(isinstance(d, ast.Dict) for d in ast.walk(func))
    if isinstance(node, ast.Name) and (node.id in params or not dicts):
        return [kind for kind, verbs in child_calls().items() if verb in verbs]
    return _strings(node, func)


def child_calls() -> dict[str, set[str]]:
    """Kube._calls as written: {kind: {verb, ...}}."""
    tree = ast.parse((ROOT / "operator" / "codex_operator" / "kube.py").read_text())
    func = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "_calls")
    outer = next(d for d in ast.walk(func) if isinstance(d, ast.Dict))
    return {
        k.value: {v.value for v in d.keys if isinstance(v, ast.Constant)}
        for k, d in zip(outer.keys, outer.values, strict=True)
        if isinstance(k, ast.Constant) and isinstance(d, ast.Dict)
    }


def operator_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every metrics.api_call(verb, kind) in the operator's modules."""
    calls = set()
    for path in sorted((ROOT / "operator" / "codex_operator").glob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for call in ast.walk(func):
                if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "api_call" and call.args:
                    for verb in _strings(call.args[0], func):
                        for kind in _kinds(call.args[1], verb, func):
                            assert kind in KIND_RESOURCES, f"{path.name}: api_call {kind!r}: add it to KIND_RESOURCES"
                            calls.add((*KIND_RESOURCES[kind], verb))
    return calls


def granted(manifests: list[dict], kind: str, namespace: str | None = None) -> set[tuple[str, str, str]]:
    out = set()
    for m in manifests:
        if m["kind"] == kind and m["metadata"].get("namespace") == namespace:
            for rule in m["rules"]:
                out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def test_the_operator_calls_are_found():
    calls = operator_calls()
    assert ("batch", "jobs", "patch") in calls and (names.GROUP, f"{names.PLURAL}/status", "patch") in calls
    assert ("", "persistentvolumeclaims", "create") in calls and ("", "pods/proxy", "get") in calls


def test_rbac_grants_exactly_what_the_operator_calls_cluster_wide():
    needed = operator_calls() | BEYOND_CALLS
    manifests = render({"progress": {"via": "proxy"}, "replicaCount": 2})
    leases = {c for c in needed if c[1] == "leases"}
    assert granted(manifests, "ClusterRole") == needed - leases
    assert granted(manifests, "Role", NAMESPACE) == leases
    lease_rule = [r for r in one(manifests, "Role")["rules"] if "resourceNames" in r]
    assert lease_rule == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [FULLNAME],
            "verbs": ["get", "update"],
        }
    ]


def test_pods_proxy_and_leases_only_when_used():
    manifests = render({"leaderElection": {"enabled": "auto"}})
    proxy = {("", "pods/proxy", "get")}
    leases = {c for c in operator_calls() if c[1] == "leases"}
    assert granted(manifests, "ClusterRole") == (operator_calls() - proxy - leases) | BEYOND_CALLS
    assert not [m for m in manifests if m["kind"] in ("Role", "RoleBinding")]


def test_watch_namespaces_gets_a_role_in_each_and_nothing_cluster_wide():
    manifests = render(VALUE_SETS["watch-namespaces"])
    assert not [m for m in manifests if m["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for ns in ("team-a", "team-b"):
        assert granted(manifests, "Role", ns) == (operator_calls() | BEYOND_CALLS) - {
            ("", "pods/proxy", "get"),
            *(c for c in operator_calls() if c[1] == "leases"),
        }
        binding = next(m for m in manifests if m["kind"] == "RoleBinding" and m["metadata"]["namespace"] == ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    args = container(manifests)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_namespace_patterns_watch_through_a_cluster_role_that_reads_no_namespaces():
    """A pattern matches namespaces the install cannot name, so no Role can be made for them; the operator
    watches the cluster's jobs and keeps the matching ones, so it lists no namespaces."""
    manifests = render(VALUE_SETS["namespace-patterns"] | {"watchNamespaces": ["team-a"]})
    no_proxy_or_leases = {("", "pods/proxy", "get"), *(c for c in operator_calls() if c[1] == "leases")}
    assert granted(manifests, "ClusterRole") == (operator_calls() | BEYOND_CALLS) - no_proxy_or_leases
    assert {m["metadata"]["namespace"] for m in manifests if m["kind"] in ("Role", "RoleBinding")} == {NAMESPACE}
    args = container(manifests)["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [
        "--namespace=team-a", "--namespace=team-*", "--namespace=!team-test"]  # fmt: skip


@pytest.mark.parametrize("name", VALUE_SETS)
def test_no_rule_holds_a_wildcard(name):
    for m in render(VALUE_SETS[name] | {"progress": {"via": "proxy"}}):
        for rule in m.get("rules", []) if m["kind"] in ("Role", "ClusterRole") else []:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in v for v in rule.get(key, [])), f"{m['kind']} {m['metadata']['name']}: {rule}"


def test_a_named_service_account_is_bound_and_not_created():
    manifests = render({"serviceAccount": {"create": False, "name": "platform-sa"}})
    assert "ServiceAccount" not in [m["kind"] for m in manifests]
    assert one(manifests, "ClusterRoleBinding")["subjects"][0]["name"] == "platform-sa"
    assert one(manifests, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-sa"
