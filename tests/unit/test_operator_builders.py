"""The operator's pure builders: what a CodexTrainingJob becomes on the cluster, without a cluster."""

from __future__ import annotations

import pytest
import yaml

from codex_operator import builders, names
from codex_operator.builders import Job, Settings
from codex_trainer import contract
from codex_trainer.manifest import apply_overrides, parse_manifest
from support import TINY


def make_job(*overrides: str, name: str = "tiny-cpu") -> Job:
    raw = yaml.safe_load(TINY.read_text())
    raw["metadata"]["name"] = name
    manifest = parse_manifest(apply_overrides(raw, list(overrides)))
    return Job(name=name, namespace="team-a", uid="uid-1", spec=manifest.spec, generation=3)


def env_of(pod_spec: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod_spec["containers"][0]["env"]}


def test_every_child_is_owned_by_the_job_and_labelled_with_it():
    job = make_job()
    children = [
        builders.checkpoint_claim(job),
        builders.config_map(job, 1),
        builders.headless_service(job),
        builders.attempt_job(job, 1, Settings()),
    ]
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["labels"][names.LABEL_JOB] == "tiny-cpu"
        (ref,) = meta["ownerReferences"]
        assert ref == {
            "apiVersion": "codex.ml/v1alpha1",
            "kind": "CodexTrainingJob",
            "name": "tiny-cpu",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    assert [c["metadata"]["name"] for c in children] == [
        "tiny-cpu-checkpoints",
        "tiny-cpu-a1-config",
        "tiny-cpu-workers",
        "tiny-cpu-a1",
    ]


def test_each_attempt_has_its_own_immutable_job_file_that_its_pods_mount():
    job = make_job()
    cm = builders.config_map(job, 3)
    assert cm["immutable"] is True and cm["metadata"]["name"] == "tiny-cpu-a3-config"
    pod = builders.attempt_job(job, 3, Settings())["spec"]["template"]["spec"]
    assert {"name": "config", "configMap": {"name": "tiny-cpu-a3-config"}} in pod["volumes"]


def test_a_child_is_the_jobs_only_by_its_uid():
    job = make_job()
    mine = builders.headless_service(job)
    assert builders.owned_by(mine, "uid-1") and not builders.owned_by(mine, "uid-2")
    user_made = {"kind": "Service", "metadata": {"name": "tiny-cpu-workers", "labels": mine["metadata"]["labels"]}}
    assert not builders.owned_by(user_made, "uid-1")
    kept = builders.checkpoint_claim(make_job("storage.retain=true"))
    assert "ownerReferences" not in kept["metadata"] and builders.owned_by(kept, "uid-1")
    assert not builders.owned_by(kept, "uid-2")  # kept from an earlier job of the same name


def test_the_volume_is_kept_after_deletion_when_storage_retain_says_so():
    assert "ownerReferences" not in builders.checkpoint_claim(make_job("storage.retain=true"))["metadata"]
    assert builders.checkpoint_claim(make_job("storage.existingClaim=shared")) is None
    job = make_job("storage.existingClaim=shared")
    pod = builders.attempt_job(job, 1, Settings())["spec"]["template"]["spec"]
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "shared"}} in pod["volumes"]


@pytest.mark.parametrize(
    ("overrides", "size", "mode", "cls"),
    [
        ((), "1Gi", "ReadWriteOnce", None),
        (("storage.size=20Gi", "storage.storageClassName=fast"), "20Gi", "ReadWriteOnce", "fast"),
        (("numNodes=2",), "1Gi", "ReadWriteMany", None),
    ],
)
def test_checkpoint_volume_size_class_and_access_mode(overrides, size, mode, cls):
    spec = builders.checkpoint_claim(make_job(*overrides))["spec"]
    assert spec["resources"]["requests"]["storage"] == size
    assert spec["accessModes"] == [mode]
    assert spec.get("storageClassName") == cls


def test_the_config_map_holds_the_resolved_job_file_the_trainer_accepts():
    job = make_job("training.maxSteps=7")
    text = builders.config_map(job, 1)["data"][names.CONFIG_FILE]
    again = parse_manifest(yaml.safe_load(text))
    assert again.metadata.name == "tiny-cpu"
    assert again.spec.model_copy(update={"env": job.spec.env}) == job.spec
    assert again.spec.training.max_steps == 7
    assert "  tokenizer: bytes\n" in text and "    learningRate: 0.003\n" in text  # reads as YAML a person wrote


def test_the_job_file_leaves_out_what_only_the_pods_need():
    job = make_job("env=[{name: TOKEN, value: s3cret}]", "imagePullSecrets=[{name: regcred}]")
    text = builders.config_map(job, 1)["data"][names.CONFIG_FILE]
    assert "s3cret" not in text and "regcred" not in text


def test_single_node_pod_runs_the_launcher_with_one_process():
    job = make_job()
    attempt = builders.attempt_job(job, 1, Settings(default_image="img:1"))
    spec = attempt["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 1
    assert spec["backoffLimit"] == 0 and spec["suspend"] is False
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert c["name"] == "trainer" and c["image"] == "img:1"
    assert c["command"] == [
        "codex-train",
        "launch",
        "/etc/codex/job.yaml",
        "--output-dir",
        "/checkpoints",
        "--metrics-port",
        "9400",
    ]
    env = env_of(pod)
    assert env["NNODES"] == "1" and env["NPROC_PER_NODE"] == "1"
    assert env["MASTER_ADDR"] == "localhost"  # one node: its processes meet on localhost, no Service needed
    assert pod["restartPolicy"] == "Never" and "subdomain" not in pod and not builders.needs_service(job)
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/checkpoints", "/etc/codex"}


def test_multi_node_env_gives_each_pod_its_rank_from_the_completion_index():
    job = make_job("numNodes=3", "processesPerNode=2")
    attempt = builders.attempt_job(job, 4, Settings())
    assert attempt["metadata"]["name"] == "tiny-cpu-a4"
    spec = attempt["spec"]
    assert spec["completions"] == spec["parallelism"] == 3
    env = env_of(spec["template"]["spec"])
    assert env["NNODES"] == "3" and env["NPROC_PER_NODE"] == "2"
    assert env["NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert env["MASTER_ADDR"] == "tiny-cpu-a4-0.tiny-cpu-workers" and env["MASTER_PORT"] == "29500"
    assert spec["template"]["spec"]["subdomain"] == "tiny-cpu-workers" and builders.needs_service(job)
    assert spec["template"]["metadata"]["labels"][names.LABEL_ATTEMPT] == "4"


def test_exit_code_2_and_disruptions_fail_the_attempt_at_once():
    rules = builders.attempt_job(make_job(), 1, Settings())["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
    }
    assert rules[1]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


def test_trainer_pods_meet_the_restricted_pod_security_standard():
    pod = builders.attempt_job(make_job(), 1, Settings())["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert not any("hostPath" in v for v in pod["volumes"])


def test_pass_through_fields_land_on_the_pod():
    job = make_job(
        "nodeSelector={pool: a100}",
        "tolerations=[{key: gpu, operator: Exists, effect: NoSchedule}]",
        "affinity={nodeAffinity: {}}",
        "priorityClassName=high",
        "imagePullSecrets=[{name: regcred}]",
        "imagePullPolicy=Always",
        "image=registry.example/trainer:2",
        "env=[{name: HF_TOKEN, valueFrom: {secretKeyRef: {name: hub, key: token}}}]",
        "envFrom=[{secretRef: {name: mlflow}}]",
        "resources.gpus=2",
        "data.existingClaim=corpus",
    )
    pod = builders.attempt_job(job, 1, Settings())["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == {"nodeAffinity": {}}
    assert pod["priorityClassName"] == "high"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["image"] == "registry.example/trainer:2" and c["imagePullPolicy"] == "Always"
    assert env_of(pod)["HF_TOKEN"] == {"secretKeyRef": {"name": "hub", "key": "token"}}
    assert c["envFrom"] == [{"secretRef": {"name": "mlflow"}}]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}  # the example's, passed through
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "corpus", "readOnly": True}} in pod["volumes"]


def test_kueue_jobs_are_created_suspended_with_the_queue_label():
    job = make_job("runPolicy.queueName=team-queue")
    attempt = builders.attempt_job(job, 1, Settings())
    assert attempt["spec"]["suspend"] is True
    assert attempt["metadata"]["labels"][names.LABEL_QUEUE] == "team-queue"
    assert builders.attempt_job(make_job("runPolicy.suspend=true"), 1, Settings())["spec"]["suspend"] is True


def test_a_priority_class_and_the_grace_period_reach_the_attempt():
    job = make_job(
        "runPolicy.queueName=q", "runPolicy.workloadPriorityClass=high", "runPolicy.terminationGracePeriodSeconds=900"
    )
    attempt = builders.attempt_job(job, 1, Settings())
    assert attempt["metadata"]["labels"][names.LABEL_PRIORITY] == "high"
    pod = attempt["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 900
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env[contract.ENV_LOCK_WAIT] == "900"  # the next attempt waits as long for a stopping one's checkpoint
    plain = builders.attempt_job(make_job(), 1, Settings())
    assert plain["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    assert names.LABEL_PRIORITY not in plain["metadata"]["labels"]


def test_only_a_job_a_queue_may_suspend_ignores_a_trainer_stopped_by_sigterm():
    def ignores_143(attempt):
        return any(r["action"] == "Ignore" for r in attempt["spec"]["podFailurePolicy"]["rules"])

    assert not ignores_143(builders.attempt_job(make_job(), 1, Settings()))  # a deleted pod is a new attempt
    assert ignores_143(builders.attempt_job(make_job("runPolicy.queueName=q"), 1, Settings()))
    assert ignores_143(builders.attempt_job(make_job(), 1, Settings(queue_owns_suspend=True)))


def test_the_deadline_left_becomes_the_attempts_deadline():
    job = make_job("runPolicy.activeDeadlineSeconds=600")
    assert builders.attempt_job(job, 2, Settings(), deadline_left=250)["spec"]["activeDeadlineSeconds"] == 250
    assert builders.attempt_job(job, 2, Settings(), deadline_left=-5)["spec"]["activeDeadlineSeconds"] == 1
    assert "activeDeadlineSeconds" not in builders.attempt_job(make_job(), 1, Settings())["spec"]


def test_names_stay_within_kubernetes_limits_for_the_longest_job_name():
    name = "j" * names.MAX_NAME_LENGTH
    job = make_job(name=name)
    attempt = builders.attempt_job(job, 999, Settings())
    pod_hostname = f"{attempt['metadata']['name']}-999"  # the highest index of a 1000-node job
    assert len(pod_hostname) <= 63 and len(pod_hostname + "-abcde") <= 63
    assert len(builders.headless_service(job)["metadata"]["name"]) <= 63
    assert len(builders.checkpoint_claim(job)["metadata"]["name"]) <= 253


# fmt: off
NASTY = [  # strings a YAML reader could take for something else, or refuse, unless quoted
    "1e3", "2E-5", "0x1F", "1_000", "12:30", "2026-12-05", ".inf", "-.Inf", ".nan", "~", "", " lead", "trail ",
    "yes", "No", "ON", "off", "y", "N", "true", "Null", "<<", "=", "a: b", "a #b", "#x", "- x", "[x]", "{x}",
    "'q'", '"q"', "back\\slash", "tab\there", "two\nlines", "crlf\r\n", "nul\x00", "del\x7f", "nel\x85",
    "c1\x9f", "ls\u2028ps\u2029", "bom\ufeff", "nonchar\uffff", "é ü 中文", "emoji 🦙", "a/b.c-d_e", "@x", "%x", "!x",
    "&a", "*a", "|", ">", "?", ",", "`", "@",
]
# fmt: on


@pytest.mark.parametrize("loader", ["trainer", "pyyaml"])
def test_any_string_or_number_in_the_job_file_reads_back_as_it_was_stored(loader):
    """model.config takes any keys and values a user stores: every string reads back as that string and every
    number as that number, by the trainer's loader (YAML 1.2's numbers) and by PyYAML's safe_load alike."""
    from codex_trainer.manifest import parse_yaml

    value = {
        "strings": NASTY,
        "keys": {s: i for i, s in enumerate(NASTY)},
        "numbers": [0, -1, 2**63, 0.1, -2.5, 1e-05, 3e20, 1.5e300, 5e-324, float("inf"), float("-inf")],
        "nested": [[], {}, [[1, "a"], {"k": [True, False, None]}], [{"a": 1, "b": [{"c": "d"}]}]],
        "empty": {"list": [], "map": {}},
        "long keys": {"k" * 1100: 1, "\x01" * 171: [1, {"k" * 200: {"a": [2]}}], "é" * 1025: {"x" * 300: []}},
    }
    text = builders.yaml_text(value)
    back = parse_yaml(text, "job file") if loader == "trainer" else yaml.safe_load(text)
    assert back == value
    nan = yaml.safe_load(builders.yaml_text({"x": float("nan")}))["x"]
    assert nan != nan


def test_a_string_that_reads_as_a_number_stays_a_string_in_the_job_file():
    """The trainer reads 1e3 as a number, as kubectl does; a string that looks like one is quoted in the job
    file, so the pod reads the string the API server stored (an experiment named 1e3, a model.config value)."""
    from codex_trainer.manifest import parse_yaml

    job = make_job("tracking.mlflow.experiment='1e3'", "model.config.rope_scaling_type='2E-5'")
    text = builders.config_map(job, 1)["data"][names.CONFIG_FILE]
    again = parse_manifest(parse_yaml(text, "job file")).spec
    assert again.tracking.mlflow.experiment == "1e3" and again.model.config["rope_scaling_type"] == "2E-5"
    assert again.model.config["max_position_embeddings"] == 256 and again.training.learning_rate == 3e-3
