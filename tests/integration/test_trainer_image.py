"""The trainer image on the cluster's node: it trains as uid 1000 under runAsNonRoot, and a bad job
leaves exit code 2 and its one-line message as the pod's termination message."""

from __future__ import annotations

import json

import pytest
from build import ensure_trainer_image

from support import wait_for

pytestmark = pytest.mark.cluster

TERMINATION_LOG = "/dev/termination-log"


@pytest.fixture(scope="session")
def trainer_image(cluster) -> str:
    return ensure_trainer_image(cluster)


def trainer_pod(name: str, image: str, args: list[str]) -> str:
    container = {
        "name": "trainer",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["codex-train", *args],
        "env": [{"name": "CODEX_TERMINATION_LOG", "value": TERMINATION_LOG}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}},
    }
    spec = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "automountServiceAccountToken": False,
        # no runAsUser: the kubelet must verify the image's own numeric USER
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def finish(cluster, ns: str, name: str, manifest: str, timeout: float = 300) -> dict:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=manifest)

    def done():
        pod = json.loads(cluster.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    return wait_for(done, f"pod {name} to finish", timeout, interval=1)


def test_the_trainer_image_trains_as_uid_1000(cluster, namespace, trainer_image):
    args = ["run", "configs/examples/tiny-cpu.yaml", "--set", "training.maxSteps=5", "--output-dir", "/tmp/out"]
    pod = finish(cluster, namespace, "train", trainer_pod("train", trainer_image, args))
    logs = cluster.kubectl("logs", "-n", namespace, "train").stdout
    assert pod["status"]["phase"] == "Succeeded", (logs, cluster.kubectl("describe", "pod", "-n", namespace, "train"))
    assert '"event": "done", "step": 5' in logs


def test_training_compile_works_in_the_image(cluster, namespace, trainer_image):
    """training.compile needs a C++ compiler and Python's headers (a C compiler for Triton on a GPU): the image
    carries them, so a compiled run trains, as uid 1000 with its cache under HOME, where it would otherwise
    stop at once naming the field."""
    args = ["run", "configs/examples/tiny-cpu.yaml", "--set", "training.maxSteps=3", "--set", "training.compile=true"]
    pod = finish(
        cluster, namespace, "compiled", trainer_pod("compiled", trainer_image, [*args, "--output-dir", "/tmp/out"])
    )
    logs = cluster.kubectl("logs", "-n", namespace, "compiled").stdout
    assert pod["status"]["phase"] == "Succeeded", logs
    assert '"event": "done", "step": 3' in logs


def test_a_bad_job_exits_2_with_its_message_as_the_termination_message(cluster, namespace, trainer_image):
    args = [
        "launch",
        "configs/examples/tiny-cpu.yaml",
        "--set",
        "data.train=[/data/nope.jsonl]",
        "--output-dir",
        "/tmp/o",
    ]
    pod = finish(cluster, namespace, "bad", trainer_pod("bad", trainer_image, args), timeout=120)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 2, terminated
    assert terminated["message"].strip() == "invalid spec.data.train: file '/data/nope.jsonl' not found"
