"""The Helm chart, rendered by the real helm (`make helm`): it lints, renders every value set, refuses bad
values with their names, carries the generated CRD, grants exactly what the operator calls, runs it
locked down, passes it every option, and its dashboard queries only metrics the code exports.

Applying what it renders to an API server (`kubectl apply --dry-run=server`) is the cluster suite's part."""

from __future__ import annotations

import ast
import json
import re
import shutil

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import chart_support
from chart_support import CHART, NAMESPACE, RELEASE, VALUE_SETS, render, template
from codex_operator import builders, cli, crd, informer, names
from codex_operator import metrics as operator_metrics
from codex_trainer.manifest import parse_manifest
from codex_trainer.metrics import Prometheus, Series
from support import ROOT, TINY

FULLNAME = f"{RELEASE}-codex-operator"


@pytest.fixture(scope="session", autouse=True)
def helm():
    """The pinned helm, built by `make helm` on first use (about 4 minutes cold, then cached in .tools/bin)."""
    return chart_support.helm_binary()


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


# ---------------------------------------------------------------- lint, render, refuse


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict_passes(values):
    r = chart_support.helm("lint", "--strict", str(CHART), values=values)
    assert r.returncode == 0, r.stdout + r.stderr


BASE = [
    ("ClusterRole", None),
    ("ClusterRoleBinding", None),
    ("CustomResourceDefinition", None),
    ("Deployment", NAMESPACE),
    ("Lease", NAMESPACE),  # leader election (on by default): made with the release
    ("Role", NAMESPACE),  # ... and the rights on it
    ("RoleBinding", NAMESPACE),
    ("Service", NAMESPACE),
    ("ServiceAccount", NAMESPACE),
]
PER_TEAM = [(kind, ns) for ns in ("team-a", "team-b") for kind in ("Role", "RoleBinding")]
EXPECTED = {
    "defaults": BASE,
    "watch-namespaces": BASE + PER_TEAM,
    "namespace-patterns": BASE,
    "monitors": BASE + [("PodMonitor", NAMESPACE), ("ServiceMonitor", NAMESPACE)],
    "network-policy": BASE + PER_TEAM + [("NetworkPolicy", "team-a"), ("NetworkPolicy", "team-b")],
    "two-replicas": BASE,
    "dashboard": BASE + [("ConfigMap", NAMESPACE)],
}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_each_value_set_renders_the_expected_objects(name):
    manifests = render(VALUE_SETS[name])
    assert kinds(manifests) == sorted(EXPECTED[name])
    for m in manifests:
        assert m["metadata"]["name"] and m["apiVersion"], m
        if m["kind"] not in ("CustomResourceDefinition",):  # the CRD is the generated file, as it is
            assert m["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, m["kind"]


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"watchNamespace": ["team-a"]}, "'watchNamespace'"),  # a typo of watchNamespaces
        ({"image": {"tag": 3}}, "/image/tag"),
        ({"progress": {"via": "ssh"}}, "/progress/via"),
        ({"watchNamespaces": ["team-*"]}, "/watchNamespaces/0"),  # globs cannot get a Role
        ({"leaderElection": {"enabled": "yes"}}, "/leaderElection/enabled"),
        ({"securityContext": {"runAsUser": "root"}}, "/securityContext/runAsUser"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_wrong_value_is_refused_naming_it(values, named):
    r = template(values)
    assert r.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in r.stderr and named in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "leaderElection.enabled"),
        ({"networkPolicy": {"enabled": True}}, "networkPolicy.namespaces or watchNamespaces"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name"),
    ],
)
def test_combinations_that_cannot_work_are_refused_with_a_message(values, says):
    r = template(values)
    assert r.returncode != 0 and says in r.stderr, r.stderr


def test_every_value_has_a_type_in_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value, node, path):
        assert node is not None, f"{path} has no schema"
        assert "type" in node or "enum" in node, f"{path} has no type"
        if isinstance(value, dict) and "properties" in node:
            for k, v in value.items():
                walk(v, node["properties"].get(k), f"{path}.{k}")

    assert schema["additionalProperties"] is False
    walk(values, schema, "values")


def test_the_readme_names_every_top_level_value():
    readme = (CHART / "README.md").read_text()
    missing = [k for k in yaml.safe_load((CHART / "values.yaml").read_text()) if f"`{k}" not in readme]
    assert not missing, f"charts/codex-operator/README.md does not mention {missing}"


def test_chart_version_follows_the_project():
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["version"], chart["appVersion"]) == ("v2", version, version)


def test_notes_give_the_next_three_commands(tmp_path):
    """helm template leaves NOTES.txt out: render it through a copy of the chart that includes it."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    notes = (copy / "templates" / "NOTES.txt").read_text()
    (copy / "templates" / "notes.yaml").write_text(
        '{{- define "notes" }}' + notes + '{{- end }}\nnotes: {{ include "notes" . | toJson }}\n'
    )

    def rendered(values):
        r = chart_support.helm("template", RELEASE, str(copy), "--show-only", "templates/notes.yaml", values=values)
        assert r.returncode == 0, r.stderr
        return yaml.safe_load(r.stdout)["notes"]

    assert [line.strip() for line in rendered({}).splitlines()[-3:]] == [
        "kubectl apply -f configs/examples/tiny-cpu.yaml",
        "kubectl get ctj -w",
        "kubectl describe ctj tiny-cpu",
    ]
    assert yaml.safe_load((ROOT / "configs/examples/tiny-cpu.yaml").read_text())["metadata"]["name"] == "tiny-cpu"
    assert "kubectl get ctj -n team-a -w" in rendered({"watchNamespaces": ["team-a"]})


# ---------------------------------------------------------------- the CRD


def test_the_charts_crd_is_the_generated_one_kept_on_uninstall():
    rendered = one(render({}), "CustomResourceDefinition")
    annotations = rendered["metadata"].pop("annotations")
    assert annotations == {"helm.sh/resource-policy": "keep"}
    assert rendered == yaml.safe_load(crd.OUTPUT.read_text()), "the chart's CRD differs from crds/: run `make crds`"
    assert "CustomResourceDefinition" not in [m["kind"] for m in render({"crds": {"install": False}})]


def test_template_braces_in_the_crd_reach_the_server_as_text(tmp_path):
    """A description with `{{` in it is text, not a template action, in the chart's copy."""
    plain = f"description: {names.GROUP}/{names.VERSION}\n"
    braced = f"description: {names.GROUP}/{names.VERSION} {{{{ .Values.x }}}}\n"
    text = crd.render().replace(plain, braced, 1)
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    (copy / "templates" / "crd.yaml").write_text(crd.render_chart_template(text))
    r = chart_support.helm("template", RELEASE, str(copy), "--show-only", "templates/crd.yaml")
    assert r.returncode == 0, r.stderr
    schema = yaml.safe_load(r.stdout)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["apiVersion"]["description"] == f"{names.GROUP}/{names.VERSION} {{{{ .Values.x }}}}"


# ---------------------------------------------------------------- RBAC: exactly what the operator calls

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

# what kopf calls for the operator, and what the API server asks of it
KOPF = {
    (names.GROUP, names.PLURAL, "list"),  # @kopf.on.event: list + watch of the jobs (handlers.job_event)
    (names.GROUP, names.PLURAL, "watch"),
    ("", "events", "create"),  # Kube.post_event posts core/v1 Events
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),  # kopf's resource observer
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
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
        return [source.kind for source in informer.CHILDREN]
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
    needed = operator_calls() | KOPF
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
    assert granted(manifests, "ClusterRole") == (operator_calls() - proxy - leases) | KOPF
    assert not [m for m in manifests if m["kind"] in ("Role", "RoleBinding")]


def test_watch_namespaces_gets_a_role_in_each_and_only_crd_reads_cluster_wide():
    manifests = render(VALUE_SETS["watch-namespaces"])
    cluster_wide = granted(manifests, "ClusterRole")
    assert cluster_wide == {c for c in KOPF if c[0] == "apiextensions.k8s.io"}
    for ns in ("team-a", "team-b"):
        assert granted(manifests, "Role", ns) == (operator_calls() | KOPF) - cluster_wide - {
            ("", "pods/proxy", "get"),
            *(c for c in operator_calls() if c[1] == "leases"),
        }
        binding = next(m for m in manifests if m["kind"] == "RoleBinding" and m["metadata"]["namespace"] == ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    args = container(manifests)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_namespace_patterns_watch_through_a_cluster_role_that_also_follows_namespaces():
    """A pattern matches namespaces the install cannot name, so no Role can be made for them."""
    manifests = render(VALUE_SETS["namespace-patterns"] | {"watchNamespaces": ["team-a"]})
    follow = {("", "namespaces", "list"), ("", "namespaces", "watch")}
    no_proxy_or_leases = {("", "pods/proxy", "get"), *(c for c in operator_calls() if c[1] == "leases")}
    assert granted(manifests, "ClusterRole") == (operator_calls() | KOPF | follow) - no_proxy_or_leases
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


# ---------------------------------------------------------------- the Deployment


def test_the_operator_runs_locked_down():
    manifests = render({})
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    c = container(manifests)
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["image"] == "codex.local/codex-operator:dev" and c["imagePullPolicy"] == "IfNotPresent"


def test_the_user_and_group_can_be_changed_or_left_to_the_platform():
    pod = one(render({"securityContext": {"runAsUser": 2000, "runAsGroup": None}}), "Deployment")["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 2000 and "runAsGroup" not in pod["spec"]["securityContext"]


def test_probes_use_kopfs_health_endpoint():
    c = container(render({"health": {"port": 9090}}))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8000, "health": 9090} and "--liveness-port=9090" in c["args"]
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}


def test_one_replica_is_recreated_never_two_at_once():
    for values in ({}, {"leaderElection": {"enabled": False}}, {"leaderElection": {"enabled": "auto"}}):
        assert one(render(values), "Deployment")["spec"]["strategy"] == {"type": "Recreate"}, values
    assert "CODEX_LEADER_ELECTION" not in env_of(render({"leaderElection": {"enabled": "auto"}}))


def test_one_replica_holds_the_lease_too_so_a_scale_up_never_has_two_acting():
    """Going from one replica to two (helm upgrade), the pod that acts already holds the Lease, so the
    new ones stand by; with election only above one replica, the old pod and a new leader would both act."""
    env = env_of(render({}))
    assert env["CODEX_LEADER_ELECTION"]["value"] == "true"


def test_two_replicas_elect_a_leader_through_a_lease():
    manifests = render(VALUE_SETS["two-replicas"])
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    env = env_of(manifests)
    assert env["CODEX_LEADER_ELECTION"]["value"] == "true"
    assert env["CODEX_LEASE_NAME"]["value"] == FULLNAME and env["CODEX_LEASE_NAMESPACE"]["value"] == NAMESPACE
    assert env["CODEX_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    custom = env_of(render({"replicaCount": 2, "leaderElection": {"leaseName": "codex-leader"}}))
    assert custom["CODEX_LEASE_NAME"]["value"] == "codex-leader"


def test_pod_placement_and_extras_pass_through():
    values = {
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {}},
        "priorityClassName": "system-cluster-critical",
        "imagePullSecrets": [{"name": "registry"}],
        "podAnnotations": {"a": "1"},
        "podLabels": {"team": "ml"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    }
    manifests = render(values)
    template_ = one(manifests, "Deployment")["spec"]["template"]
    pod = template_["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        assert pod[key] == values[key], key
    assert template_["metadata"]["annotations"] == {"a": "1"} and template_["metadata"]["labels"]["team"] == "ml"
    assert env_of(manifests)["HTTPS_PROXY"]["value"] == "http://proxy:3128"


# The options the chart passes as environment variables (cli.py reads them as the options' defaults)
BY_ENV = {
    "--leader-election": "CODEX_LEADER_ELECTION",
    "--lease-name": "CODEX_LEASE_NAME",
    "--lease-namespace": "CODEX_LEASE_NAMESPACE",
}
EVERY_OPTION = {
    "replicaCount": 2,
    "watchNamespaces": ["team-a", "team-b"],
    "metrics": {"port": 9100},
    "health": {"port": 9101},
    "trainer": {"image": "registry.example/codex-trainer:1.2"},
    "progress": {"interval": 2.5, "via": "proxy", "writesPerSecond": 7.5},
    "verbose": True,
    "kueue": {"manageJobsWithoutQueueName": True},
}


def run_options() -> set[str]:
    """The long flag of each `codex-operator run` option."""
    sub = next(a for a in cli._parser()._actions if a.dest == "command")
    run = sub.choices["run"]  # type: ignore[index]
    return {max(a.option_strings, key=len) for a in run._actions if a.option_strings and a.dest != "help"}


def test_every_operator_option_is_a_value(monkeypatch):
    """The rendered args (and env) parse with the operator's own parser into the values that were set, and
    every option of `codex-operator run` is reached: a new option without a value fails here."""
    manifests = render(EVERY_OPTION)
    c = container(manifests)
    assert c["command"] == ["codex-operator"] and c["args"][0] == "run"
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    for name in ("CODEX_NAMESPACES", "CODEX_METRICS_PORT", "CODEX_LIVENESS_PORT", "CODEX_DEFAULT_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    for name in BY_ENV.values():
        monkeypatch.setenv(name, env[name])
    args = cli._parser().parse_args(c["args"])
    assert (args.namespace, args.metrics_port, args.liveness_port) == (["team-a", "team-b"], 9100, 9101)
    assert (args.default_image, args.progress_interval, args.progress_via, args.verbose) == (
        "registry.example/codex-trainer:1.2",
        2.5,
        "proxy",
        True,
    )
    assert (args.leader_election, args.lease_name, args.lease_namespace) == (True, FULLNAME, NAMESPACE)
    assert args.queue_manages_all_jobs and args.progress_writes_per_second == 7.5
    given = {a.split("=")[0] for a in c["args"][1:]} | {flag for flag, name in BY_ENV.items() if name in env}
    missing = set(run_options()) - given
    assert not missing, f"codex-operator run options the chart never passes: {sorted(missing)}"


# ---------------------------------------------------------------- monitoring and the network policy


def trainer_pod() -> dict:
    """The pod template the operator gives rank 0 of the example job."""
    raw = yaml.safe_load(TINY.read_text())
    job = builders.Job(raw["metadata"]["name"], "team-a", "uid-1", parse_manifest(raw).spec)
    return builders.attempt_job(job, 1, builders.Settings())["spec"]["template"]


def test_monitors_select_the_trainer_pods_rank_0_and_the_operator_service():
    manifests = render(VALUE_SETS["monitors"])
    pod = trainer_pod()
    port_name = pod["spec"]["containers"][0]["ports"][0]["name"]
    spec = one(manifests, "PodMonitor")["spec"]
    assert spec["selector"]["matchExpressions"] == [{"key": names.LABEL_JOB, "operator": "Exists"}]
    assert names.LABEL_JOB in pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"] == {"batch.kubernetes.io/job-completion-index": "0"}
    assert spec["podMetricsEndpoints"][0]["port"] == port_name and spec["namespaceSelector"] == {"any": True}
    service = one(manifests, "Service")
    monitor = one(manifests, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    scoped = one(render(VALUE_SETS["monitors"] | VALUE_SETS["watch-namespaces"]), "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


TRAINER_PODS = [{"podSelector": {"matchExpressions": [{"key": names.LABEL_JOB, "operator": "Exists"}]}}]


def tcp_ports_open_to(policy: dict, peers: list[dict] | None) -> set[int]:
    """TCP ports the policy's rules open to exactly `peers` (None: a rule with no `from`, open to all)."""
    open_ = set()
    for rule in policy["spec"]["ingress"]:
        if rule.get("from") == peers:
            for p in rule["ports"]:
                if p["protocol"] == "TCP" and isinstance(p["port"], int):
                    open_ |= set(range(p["port"], p.get("endPort", p["port"]) + 1))
    return open_


def test_the_network_policy_opens_the_metrics_port_to_the_operator_and_the_rest_to_the_jobs_pods_only():
    manifests = render(VALUE_SETS["network-policy"])
    policies = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    pod = trainer_pod()
    operator_pod = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for policy in policies:
        spec = policy["spec"]
        assert spec["podSelector"] == {"matchExpressions": [{"key": names.LABEL_JOB, "operator": "Exists"}]}
        assert spec["policyTypes"] == ["Ingress"]
        # nothing is open to all (policies add up: a rule without `from` would undo a default-deny)
        assert tcp_ports_open_to(policy, None) == set()
        # between trainer pods, every port but the metrics port (the rendezvous on MASTER_PORT, collectives)
        assert tcp_ports_open_to(policy, TRAINER_PODS) == set(range(1, 65536)) - {names.METRICS_PORT}
        assert names.MASTER_PORT in tcp_ports_open_to(policy, TRAINER_PODS)
        (metrics_rule,) = [r for r in spec["ingress"] if r["from"] != TRAINER_PODS]
        assert metrics_rule["ports"] == [{"port": pod["spec"]["containers"][0]["ports"][0]["name"], "protocol": "TCP"}]
        (peer,) = metrics_rule["from"]
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
        assert peer["podSelector"]["matchLabels"].items() <= operator_pod.items()
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    more = render({"networkPolicy": {"enabled": True, "namespaces": ["ml"], "metricsFrom": [prometheus]}})
    (policy,) = [m for m in more if m["kind"] == "NetworkPolicy"]
    assert policy["metadata"]["namespace"] == "ml" and prometheus in policy["spec"]["ingress"][0]["from"]


def test_the_chart_defaults_follow_the_shared_names():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["networkPolicy"]["metricsPort"] == names.METRICS_PORT
    assert values["trainer"]["image"] == names.DEFAULT_IMAGE


# ---------------------------------------------------------------- the dashboard

DASHBOARD = CHART / "dashboards" / "codex.json"
# labels Prometheus itself puts on every scraped series (prometheus-operator's target labels)
TARGET_LABELS = {"namespace", "pod", "container", "instance", "job", "endpoint", "service"}
SUFFIXES = {"gauge": [""], "counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"]}


def exported() -> dict[str, set[str]]:
    """Every series name the operator and the trainer export -> its label names, read from the metric
    objects themselves (prometheus_client keeps a metric's label names in `_labelnames` only)."""
    metrics = [v for v in vars(operator_metrics).values() if isinstance(v, MetricWrapperBase)]
    metrics += [v.gauge for v in vars(Prometheus(None, "job")).values() if isinstance(v, Series)]
    out = {}
    for m in metrics:
        family = m.describe()[0]
        for suffix in SUFFIXES[family.type]:
            out[family.name + suffix] = set(m._labelnames) | ({"le"} if suffix == "_bucket" else set())
    return out


GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
KEYWORDS = {"bool", "offset", "and", "or", "unless", "group_left", "group_right", "inf", "nan"}


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names a PromQL expression uses."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    s = re.sub(r"\$\{[^}]*\}|\$\w+", "", s)  # Grafana's variables
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges
    labels = set()
    for inner in re.findall(r"\{([^}]*)\}", s):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", inner))
    s = re.sub(r"\{[^}]*\}", "", s)
    for _, inner in GROUPING.findall(s):
        labels |= set(re.findall(r"[A-Za-z_]\w*", inner))
    s = GROUPING.sub("", s)
    metrics = {  # what is left: names that are not functions (followed by a parenthesis) or keywords
        m.group(0)
        for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", s)
        if m.group(0) not in KEYWORDS and not s[m.end() :].lstrip().startswith("(")
    }
    return metrics, labels


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every templating query; label_values(expr, label) as
    the expression plus a selector that names the label."""
    board = json.loads(DASHBOARD.read_text())
    out = [(f"panel {p['title']!r}", t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
            assert m, var["definition"]
            out.append((f"variable {var['name']!r}", f'{m.group(1)} and {{{m.group(2)}=""}}'))
    return out


def test_the_expression_parser_finds_names_and_labels():
    metrics, labels = promql_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{namespace=~"$ns", job_name="x{y}"}[$__rate_interval])))'
        " / on (pod) group_left b_total offset 5m > bool 1e3"
    )
    assert metrics == {"a_bucket", "b_total"} and labels == {"le", "namespace", "job_name", "pod"}


def test_every_series_the_dashboard_queries_is_exported():
    known = exported()
    assert "codex_operator_reconcile_seconds_bucket" in known and known["codex_trainer_loss"] == {"job_name"}
    queries = dashboard_queries()
    used = set()
    for where, expr in queries:
        metrics, labels = promql_names(expr)
        assert metrics, f"{where}: no metric found in {expr}"
        unknown = metrics - set(known)
        assert not unknown, f"{where} queries {unknown}, which neither the operator nor the trainer exports"
        allowed = set().union(*(known[m] for m in metrics)) | TARGET_LABELS
        assert labels <= allowed, f"{where} uses labels {labels - allowed} that {metrics} do not carry"
        used |= metrics
    for wanted in ("jobs", "restarts_total", "reconcile_seconds_bucket", "api_errors_total"):
        assert f"codex_operator_{wanted}" in used, wanted
    for wanted in ("loss", "eval_loss", "tokens_per_second", "step", "gpu_memory_used_bytes"):
        assert f"codex_trainer_{wanted}" in used, wanted


def test_the_dashboard_configmap_is_labelled_for_the_grafana_sidecar():
    cm = one(render(VALUE_SETS["dashboard"]), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["codex.json"]) == json.loads(DASHBOARD.read_text())
    elsewhere = one(render({"grafana": {"dashboard": {"enabled": True, "namespace": "monitoring"}}}), "ConfigMap")
    assert elsewhere["metadata"]["namespace"] == "monitoring"
