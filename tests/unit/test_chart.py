"""The Helm chart, rendered by the real helm (`make helm`): it lints, renders every value set, refuses bad
values with their names, carries the generated CRD, grants exactly what the operator calls, runs it
locked down, passes it every option, and its dashboard queries only metrics the code exports.

Applying what it renders to an API server (`kubectl apply --dry-run=server`) is the cluster suite's part."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import chart_support
from chart_support import (
    CHART,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    container,
    env_of,
    kinds,
    one,
    render,
    template,
)
from codex_operator import builders, cli, crd, names
from codex_operator import metrics as operator_metrics
from codex_trainer.manifest import parse_manifest
from codex_trainer.metrics import Prometheus, Series
from support import ROOT, TINY


@pytest.fixture(scope="session", autouse=True)
def helm():
    """The pinned helm, built by `make helm` on first use (about 4 minutes cold, then cached in .tools/bin)."""
    return chart_support.helm_binary()


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
NAMED = [k for k in BASE if k[0] not in ("ClusterRole", "ClusterRoleBinding")] + PER_TEAM  # nothing cluster-wide
EXPECTED = {
    "defaults": BASE,
    "watch-namespaces": NAMED,
    "namespace-patterns": BASE,
    "monitors": BASE + [("PodMonitor", NAMESPACE), ("ServiceMonitor", NAMESPACE)],
    "network-policy": NAMED + [("NetworkPolicy", "team-a"), ("NetworkPolicy", "team-b")],
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
