"""Pure builders of a CodexTrainingJob's children: (job, settings) in, Kubernetes manifests (dicts) out.

No API calls here. The handlers send what these return; the unit tests read it. Every child carries
an ownerReference to the job (the API server's garbage collector deletes it with the job), except the
checkpoint volume when `storage.retain` asks to keep it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from codex_trainer import contract
from codex_trainer.manifest import EXPONENT_FLOAT, EXPONENT_FLOAT_FIRST
from codex_trainer.spec import JobSpec

from . import names


@dataclass(frozen=True)
class Job:
    """What the builders need to know of a CodexTrainingJob: its identity and its validated spec."""

    name: str
    namespace: str
    uid: str
    spec: JobSpec
    generation: int = 1

    @property
    def world_size(self) -> int:
        return self.spec.num_nodes * self.spec.processes_per_node

    @property
    def metrics_port(self) -> int:
        return self.spec.metrics.port or names.METRICS_PORT


@dataclass(frozen=True)
class Settings:
    """Operator-wide choices (command-line flags)."""

    default_image: str = names.DEFAULT_IMAGE
    # Kueue runs with manageJobsWithoutQueueName: it may suspend any Job, labelled or not
    queue_owns_suspend: bool = False


def owner_reference(job: Job) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GROUP}/{names.VERSION}",
        "kind": names.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: Job, name: str, owned: bool = True, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.namespace,
        "labels": {names.LABEL_JOB: job.name, **(labels or {})},
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(job)]
    return meta


def checkpoint_claim(job: Job) -> dict[str, Any] | None:
    """The checkpoint volume, or None when the job names an existing claim."""
    storage = job.spec.storage
    if storage.existing_claim:
        return None
    # every pod mounts the volume (rank 0 writes, the others read it to resume): pods of several nodes
    # need a class that offers ReadWriteMany
    mode = "ReadWriteMany" if job.spec.num_nodes > 1 else "ReadWriteOnce"
    spec: dict[str, Any] = {"accessModes": [mode], "resources": {"requests": {"storage": storage.size}}}
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    meta = _metadata(job, names.pvc_name(job.name), owned=not storage.retain)
    meta["annotations"] = {names.ANNOTATION_JOB_UID: job.uid}  # ours even while kept (storage.retain)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether a child is this job's: its ownerReference (or, for a kept volume, its annotation) carries the
    job's UID. A same-named object made by someone else, or left by an earlier job of the same name, is not."""
    meta = obj.get("metadata") or {}
    if any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or []):
        return True
    return (
        obj.get("kind") == "PersistentVolumeClaim"
        and (meta.get("annotations") or {}).get(names.ANNOTATION_JOB_UID) == uid
    )


def claim_owners(job: Job) -> list[dict[str, Any]] | None:
    """The ownerReferences the checkpoint volume should have now: none while storage.retain keeps it."""
    return None if job.spec.storage.retain else [owner_reference(job)]


def claim_name(job: Job) -> str:
    return job.spec.storage.existing_claim or names.pvc_name(job.name)


# what only the pods need, kept out of the job file: a ConfigMap is readable by more people than a
# Secret, and env values or pull secrets have no business there
POD_ONLY = ("env", "envFrom", "imagePullSecrets", "affinity", "tolerations", "nodeSelector", "priorityClassName")


class _JobFileDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # libyaml's where present
    """safe_dump's writer (libyaml's emitter where PyYAML has it: a tenth of the CPU), quoting a string that
    the trainer's loader would read as a number (1e3: YAML 1.2's rule, which it follows as kubectl does)."""


_JobFileDumper.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, EXPONENT_FLOAT_FIRST)


def job_file(job: Job) -> str:
    """The resolved job file the trainer runs: the same manifest, every default filled in."""
    spec = job.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    manifest = {
        "apiVersion": f"{names.GROUP}/{names.VERSION}",
        "kind": names.KIND,
        "metadata": {"name": job.name, "namespace": job.namespace},
        "spec": {k: v for k, v in spec.items() if k not in POD_ONLY},
    }
    return yaml_text(manifest)


def yaml_text(value: dict[str, Any]) -> str:
    """YAML of JSON values that the trainer's loader and PyYAML's safe_load read back as they were."""
    return yaml.dump(value, Dumper=_JobFileDumper, sort_keys=False)


def config_map(job: Job, attempt: int) -> dict[str, Any]:
    """Attempt N's job file, immutable: a spec edited mid-attempt applies from the next attempt, and every
    rank of one attempt reads the same file."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, names.config_name(job.name, attempt), labels={names.LABEL_ATTEMPT: str(attempt)}),
        "immutable": True,
        "data": {names.CONFIG_FILE: job_file(job)},
    }


def needs_service(job: Job) -> bool:
    """Only pods on several nodes meet through DNS: one node's processes meet on localhost, so a
    single-node job has no Service (nor the EndpointSlice the control plane would keep for it)."""
    return job.spec.num_nodes > 1


def headless_service(job: Job) -> dict[str, Any]:
    """Gives each trainer pod of a multi-node job a DNS name (<pod hostname>.<service>) for the rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, names.service_name(job.name)),
        "spec": {
            "clusterIP": "None",
            "selector": {names.LABEL_JOB: job.name},
            "publishNotReadyAddresses": True,  # ranks must find rank 0 before anything is "ready"
            "ports": [{"name": "rendezvous", "port": names.MASTER_PORT}],
        },
    }


def trainer_command(job: Job) -> list[str]:
    return [
        "codex-train",
        "launch",
        f"{names.CONFIG_MOUNT}/{names.CONFIG_FILE}",
        "--output-dir",
        names.OUTPUT_DIR,
        "--metrics-port",
        str(job.metrics_port),
    ]


def rendezvous_env(job: Job, attempt: int) -> list[dict[str, Any]]:
    rank0 = "localhost"
    if needs_service(job):
        rank0 = f"{names.attempt_name(job.name, attempt)}-0.{names.service_name(job.name)}"
    return [
        {"name": contract.ENV_NNODES, "value": str(job.spec.num_nodes)},
        {"name": contract.ENV_NPROC_PER_NODE, "value": str(job.spec.processes_per_node)},
        {
            "name": contract.ENV_NODE_RANK,
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
        {"name": contract.ENV_MASTER_ADDR, "value": rank0},
        {"name": contract.ENV_MASTER_PORT, "value": str(names.MASTER_PORT)},
        {"name": contract.ENV_TERMINATION_LOG, "value": names.TERMINATION_LOG},
        # a pod of the previous attempt may still be checkpointing (its grace period): wait for its lock
        {"name": contract.ENV_LOCK_WAIT, "value": str(job.spec.run_policy.termination_grace_period_seconds)},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def _resources(job: Job) -> dict[str, Any]:
    r = job.spec.resources
    out: dict[str, Any] = {}
    if r.requests:
        out["requests"] = dict(r.requests)
    limits = dict(r.limits)
    if r.gpus:
        limits["nvidia.com/gpu"] = str(r.gpus)
    if limits:
        out["limits"] = limits
    return out


RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_template(job: Job, attempt: int, settings: Settings) -> dict[str, Any]:
    s = job.spec
    volumes: list[dict[str, Any]] = [
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim_name(job)}},
        {"name": "config", "configMap": {"name": names.config_name(job.name, attempt)}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},  # torch's DataLoader and NCCL use /dev/shm
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "checkpoints", "mountPath": names.OUTPUT_DIR},
        {"name": "config", "mountPath": names.CONFIG_MOUNT, "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    if s.data.existing_claim:
        volumes.append(
            {"name": "data", "persistentVolumeClaim": {"claimName": s.data.existing_claim, "readOnly": True}}
        )
        mounts.append({"name": "data", "mountPath": names.DATA_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": names.CONTAINER,
        "image": s.image or settings.default_image,
        "imagePullPolicy": s.image_pull_policy or "IfNotPresent",
        "command": trainer_command(job),
        "env": rendezvous_env(job, attempt)
        + [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in s.env],
        "ports": [{"name": "metrics", "containerPort": job.metrics_port}],
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
        "terminationMessagePath": names.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if s.env_from:
        container["envFrom"] = [dict(e) for e in s.env_from]
    resources = _resources(job)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # trainer pods hold no API rights
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "fsGroupChangePolicy": "OnRootMismatch",  # a large volume is not re-chowned on every attempt
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # SIGTERM: finish the step, checkpoint, exit 143
        "terminationGracePeriodSeconds": job.spec.run_policy.termination_grace_period_seconds,
        "containers": [container],
        "volumes": volumes,
    }
    if needs_service(job):
        pod["subdomain"] = names.service_name(job.name)
    if s.node_selector:
        pod["nodeSelector"] = dict(s.node_selector)
    if s.tolerations:
        pod["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in s.tolerations]
    if s.affinity:
        pod["affinity"] = dict(s.affinity)
    if s.priority_class_name:
        pod["priorityClassName"] = s.priority_class_name
    if s.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": p.name} for p in s.image_pull_secrets]
    return {
        "metadata": {"labels": {names.LABEL_JOB: job.name, names.LABEL_ATTEMPT: str(attempt)}},
        "spec": pod,
    }


# The trainer's exit-code contract, in the Job's own terms: exit 2 (the user must fix the spec or the
# data) fails the attempt at once; so does a disruption (eviction, preemption, node loss), which the
# operator then retries without counting it. Everything else fails the attempt through backoffLimit 0.
POD_FAILURE_POLICY = {
    "rules": [
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": names.CONTAINER, "operator": "In", "values": [contract.EXIT_USER_ERROR]},
        },
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
}

# A queue stops an admitted attempt by suspending its Job: the Job controller deletes the pods, and each
# trainer finishes its step, checkpoints and exits 143. With backoffLimit 0 that would fail the Job; for a
# queued attempt it is ignored instead, and the same Job runs again, from the checkpoint, when re-admitted.
QUEUE_STOP_RULE = {
    "action": "Ignore",
    "onExitCodes": {"containerName": names.CONTAINER, "operator": "In", "values": [contract.EXIT_SIGTERM]},
}


def attempt_job(job: Job, attempt: int, settings: Settings, deadline_left: int | None = None) -> dict[str, Any]:
    """Attempt N of the training: an indexed Job with one pod per node; any failed pod fails the whole
    group (backoffLimit 0), and the operator decides whether attempt N+1 resumes from the volume."""
    s = job.spec
    rp = s.run_policy
    labels = {names.LABEL_ATTEMPT: str(attempt)}
    policy = copy.deepcopy(POD_FAILURE_POLICY)
    if rp.queue_name or settings.queue_owns_suspend:
        policy["rules"].append(copy.deepcopy(QUEUE_STOP_RULE))
    if rp.queue_name:
        labels[names.LABEL_QUEUE] = rp.queue_name
    if rp.workload_priority_class:
        labels[names.LABEL_PRIORITY] = rp.workload_priority_class
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": s.num_nodes,
        "parallelism": s.num_nodes,
        "backoffLimit": 0,
        "podFailurePolicy": policy,
        "podReplacementPolicy": "Failed",  # no second pod of a rank while the first still terminates
        # Kueue admits a queued Job by unsuspending it: create it suspended and leave `suspend` to Kueue
        "suspend": bool(rp.suspend or rp.queue_name),
        "template": pod_template(job, attempt, settings),
    }
    if deadline_left is not None:
        spec["activeDeadlineSeconds"] = max(1, deadline_left)
    meta = _metadata(job, names.attempt_name(job.name, attempt), labels=labels)
    meta["annotations"] = {
        names.ANNOTATION_SPEC: pod_fingerprint(job),
        names.ANNOTATION_LENGTH: training_length(job),
        names.ANNOTATION_GENERATION: str(job.generation),
        names.ANNOTATION_IMAGE: spec["template"]["spec"]["containers"][0]["image"],
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def training_length(job: Job) -> str:
    """How long the job trains, as an attempt's annotation: a finished attempt started with another length is
    followed by one that trains on (status.plan)."""
    t = job.spec.training
    if t.max_steps is not None:
        return f"{t.max_steps} step{'s' * (t.max_steps != 1)}"
    epochs = t.epochs or 1
    return f"{epochs:g} epoch{'s' * (epochs != 1)}"


# runPolicy fields the pods or their Job carry; the others (suspend, retries, deadlines, TTL) the operator applies
POD_RUN_POLICY = ("terminationGracePeriodSeconds", "queueName", "workloadPriorityClass")


def pod_fingerprint(job: Job) -> str:
    """sha256 of what of the job's spec its attempt's pods are made from (the job file and the pod template):
    an attempt whose pods never started is replaced when it differs (status.plan)."""
    spec = job.spec.model_dump(mode="json", by_alias=True)
    spec["runPolicy"] = {k: spec["runPolicy"].get(k) for k in POD_RUN_POLICY}
    spec["storage"].pop("retain", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
