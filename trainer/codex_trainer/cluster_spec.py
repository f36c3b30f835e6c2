"""The CodexTrainingJob fields only a cluster uses (the local trainer ignores them): per-pod resources, the
checkpoint volume, the run policy (retries, deadlines, Kueue), tolerations and the trainer container's env."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    model_validator,
)

from .errors import FieldValueError
from .fields import (
    LABEL_VALUE,
    LABEL_VALUE_PATTERN,
    MAX_LABEL_VALUE,
    MAX_NAME,
    MAX_RESOURCES,
    Name,
    Quantity,
    SpecModel,
    admitted_before,
    cel,
    quantity_value,
)

TOLERATION_NO_KEY = "a toleration without a key must use operator Exists (it then tolerates every taint)"
TOLERATION_EXISTS_VALUE = "a toleration with operator Exists matches any value: remove value"


REQUEST_ABOVE_LIMIT = "a pod may not request more of a resource than its limit; lower the request or raise the limit"
GPU = "nvidia.com/gpu"
GPU_LIMIT_NOT_GPUS = f"which sets the {GPU} request and limit: remove it, or make the two equal"
GPU_REQUEST_NOT_LIMIT = (
    f"a Pod's {GPU} request must equal its limit (GPUs are not shared): remove it and set spec.resources.gpus, "
    "which sets both"
)
GPU_NOT_WHOLE = "GPUs are not shared: a Pod takes only a whole number of them"
_REQ, _LIM = f"self.requests['{GPU}']", f"self.limits['{GPU}']"


def _whole(q: str) -> str:
    """CEL: the quantity `q` is a whole number (isInteger() is false for 1000m, which a Pod takes as 1)."""
    near = f"{q}.asApproximateFloat()"
    return f"({q}.compareTo(quantity('1e15')) >= 0 || double(int({near})) == {near})"


GPU_WHOLE_RULES: list[JsonValue] = [
    {
        "rule": f"!has(self.{where}) || !('{GPU}' in self.{where}) || "
        f"!isQuantity(self.{where}['{GPU}']) || " + _whole(f"quantity(self.{where}['{GPU}'])"),
        "message": f"spec.resources.{where}.{GPU}: {GPU_NOT_WHOLE}",
        "fieldPath": f".{where}",
    }
    for where in ("limits", "requests")
]
_GPUS = "(has(self.gpus) && self.gpus > 0)"


class ResourcesSpec(SpecModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) "
                    "|| !isQuantity(self.requests[k]) || !isQuantity(self.limits[k]) "
                    "|| quantity(self.requests[k]).compareTo(quantity(self.limits[k])) <= 0)",
                    "message": f"a request is more than its limit in spec.resources.limits: {REQUEST_ABOVE_LIMIT}",
                    "fieldPath": ".requests",
                },
                *GPU_WHOLE_RULES,
                {
                    "rule": f"!{_GPUS} || !has(self.limits) || !('{GPU}' in self.limits) || !isQuantity({_LIM}) "
                    f"|| quantity({_LIM}).asApproximateFloat() == double(self.gpus)",
                    "message": f"spec.resources.limits.{GPU} differs from spec.resources.gpus, {GPU_LIMIT_NOT_GPUS}",
                    "fieldPath": ".limits",
                },
                {
                    "rule": f"!has(self.requests) || !('{GPU}' in self.requests) || !isQuantity({_REQ}) || ({_GPUS} "
                    f"? quantity({_REQ}).asApproximateFloat() == double(self.gpus) : has(self.limits) "
                    f"&& '{GPU}' in self.limits "
                    f"&& (!isQuantity({_LIM}) || quantity({_REQ}).compareTo(quantity({_LIM})) == 0))",
                    "message": f"spec.resources.requests.{GPU}: {GPU_REQUEST_NOT_LIMIT}",
                    "fieldPath": ".requests",
                },
            ]
        }
    )

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=MAX_RESOURCES,
        description="Container resource requests per pod, as in a Pod (e.g. {cpu: '8', memory: 32Gi}).",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=MAX_RESOURCES,
        description="Container resource limits per pod, as in a Pod (e.g. {memory: 48Gi}).",
    )
    gpus: int = Field(
        default=0,
        ge=0,
        description="NVIDIA GPUs per pod: becomes the nvidia.com/gpu limit (and request). Usually equal "
        "to processesPerNode.",
    )

    @model_validator(mode="after")
    def _requests_within_limits(self, info: ValidationInfo) -> ResourcesSpec:
        if admitted_before(info):  # a Pod refuses it later, as before this check (fields.STORED)
            return self
        for name, request in self.requests.items():
            limit = self.limits.get(name)
            if limit is None:
                continue
            asked, most = quantity_value(request), quantity_value(limit)
            if asked is not None and most is not None and asked > most:
                above = f"{request} is more than spec.resources.limits.{name}, {limit}"
                raise FieldValueError(f"requests.{name}", f"{above}: {REQUEST_ABOVE_LIMIT}")
        return self._gpus_as_a_pod_takes_them()

    def _gpus_as_a_pod_takes_them(self) -> ResourcesSpec:
        """The GPU limit is spec.resources.gpus where it is set, and a GPU request is that limit: otherwise
        gpus quietly overrode the limit, or the Job's pods were refused."""
        for where, given in (("limits", self.limits.get(GPU)), ("requests", self.requests.get(GPU))):
            value = quantity_value(given) if given is not None else None
            if value is not None and value != int(value):
                raise FieldValueError(f"{where}.{GPU}", f"{given}: {GPU_NOT_WHOLE}")
        asked = self.requests.get(GPU)
        limit = str(self.gpus) if self.gpus else self.limits.get(GPU)
        if self.gpus and GPU in self.limits and quantity_value(self.limits[GPU]) != self.gpus:
            differs = f"{self.limits[GPU]} differs from spec.resources.gpus {self.gpus}"
            raise FieldValueError(f"limits.{GPU}", f"{differs}, {GPU_LIMIT_NOT_GPUS}")
        if asked is not None and (limit is None or quantity_value(asked) != quantity_value(limit)):
            said = f"{asked}, with a limit of {limit or 'none'}"
            raise FieldValueError(f"requests.{GPU}", f"{said}: {GPU_REQUEST_NOT_LIMIT}")
        return self


class StorageSpec(SpecModel):
    size: Quantity = Field(
        default="10Gi", description="Size of the checkpoint volume (a quantity, e.g. 20Gi). Immutable."
    )
    storage_class_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME,
        description="StorageClass of the checkpoint volume (default: the cluster's). Immutable.",
    )
    existing_claim: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME,
        description="Keep checkpoints on this existing PersistentVolumeClaim instead of creating one. Immutable.",
    )
    retain: bool = Field(
        default=False,
        description="Keep the checkpoint volume when the job is deleted (by default it is deleted with the job); "
        "may be changed at any time.",
    )


def _label_value_message(label: str) -> str:
    return (
        f"must be a Kubernetes label value (it becomes the label {label}): letters, digits, "
        f"'-', '_' and '.', beginning and ending with a letter or digit, at most {MAX_LABEL_VALUE} characters"
    )


QUEUE_NAME_MESSAGE = _label_value_message("kueue.x-k8s.io/queue-name")
PRIORITY_CLASS_MESSAGE = _label_value_message("kueue.x-k8s.io/priority-class")


def _label_value(message: str) -> Any:
    def check(v: str) -> str:
        if not LABEL_VALUE.fullmatch(v):
            raise ValueError(message)
        return v

    return AfterValidator(check)


def _label_field(message: str) -> Any:
    return Field(
        min_length=1,
        max_length=MAX_LABEL_VALUE,
        json_schema_extra=cel(f"self.matches('{LABEL_VALUE_PATTERN}')", message),
    )


QueueName = Annotated[str, _label_field(QUEUE_NAME_MESSAGE), _label_value(QUEUE_NAME_MESSAGE)]
PriorityClassName = Annotated[str, _label_field(PRIORITY_CLASS_MESSAGE), _label_value(PRIORITY_CLASS_MESSAGE)]


class RunPolicySpec(SpecModel):
    backoff_limit: int = Field(default=3, ge=0, description="Retries after a crash (pod disruptions do not count).")
    max_disruptions: int = Field(
        default=20,
        ge=0,
        description="Attempts ended by a disruption (eviction, preemption, node loss, a deleted attempt Job) that "
        "are retried without counting against backoffLimit; one more fails the job.",
    )
    active_deadline_seconds: int | None = Field(default=None, gt=0, description="Fail the job after this long.")
    suspend: bool = Field(default=False, description="Create the job suspended (for Kueue and other queues).")
    queue_name: QueueName | None = Field(
        default=None,
        description="Kueue LocalQueue to submit to: becomes the label kueue.x-k8s.io/queue-name of the job's "
        "attempts, so it must be a label value. Immutable.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the job this many seconds after it succeeds or fails (kept when unset).",
    )
    workload_priority_class: PriorityClassName | None = Field(
        default=None,
        description="Kueue WorkloadPriorityClass of the job's attempts (the label kueue.x-k8s.io/priority-class): "
        "in a ClusterQueue that preempts, a higher one evicts a lower one, which checkpoints and waits to be "
        "admitted again. An edit applies to attempts started after it.",
    )
    progress_deadline_seconds: int | None = Field(
        default=None,
        gt=0,
        description="A running attempt whose step has not moved for this long is stalled: it is stopped and the "
        "job restarts from its newest checkpoint, counted against backoffLimit. The clock starts at the "
        "attempt's first progress reading, after the model and the data are loaded. Unset: never stalls.",
    )
    termination_grace_period_seconds: int = Field(
        default=120,
        ge=1,
        le=86400,
        description="How long a stopping trainer (preempted, evicted, deleted) has to finish its step and write "
        "a checkpoint before it is killed; size it to the time a checkpoint of your model takes to write.",
    )


class Toleration(SpecModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.key) || self.operator == 'Exists'", "message": TOLERATION_NO_KEY},
                {"rule": "self.operator != 'Exists' || !has(self.value)", "message": TOLERATION_EXISTS_VALUE},
            ]
        }
    )

    key: str | None = Field(default=None, description="The taint key this toleration matches; empty matches all keys.")
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="'Equal' matches the taint's value; 'Exists' matches any value."
    )
    value: str | None = Field(default=None, description="The taint value to match (with operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="With effect NoExecute: how long the pod stays bound after the taint appears."
    )

    @model_validator(mode="after")
    def _as_a_pod_would(self) -> Toleration:
        if self.key is None and self.operator != "Exists":
            raise ValueError(TOLERATION_NO_KEY)
        if self.operator == "Exists" and self.value is not None:
            raise ValueError(TOLERATION_EXISTS_VALUE)
        return self


class LocalObjectReference(SpecModel):
    name: Name = Field(description="The name of the Secret in the job's namespace.")


# what a Pod takes as an environment variable's name (Kubernetes 1.32 on; earlier ones take only C identifiers)
ENV_NAME_PATTERN = "^[ -<>-~]+$"
ENV_NAME = re.compile(ENV_NAME_PATTERN)
ENV_NAME_MESSAGE = (
    "must be printable ASCII characters other than '=' (a Pod refuses any other environment variable name)"
)


def _env_name(v: str, info: ValidationInfo) -> str:
    if not admitted_before(info) and not ENV_NAME.fullmatch(v):  # a Pod refuses it later (fields.STORED)
        raise ValueError(ENV_NAME_MESSAGE)
    return v


EnvName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_NAME,
        json_schema_extra=cel(f"self.matches('{ENV_NAME_PATTERN}')", ENV_NAME_MESSAGE),
    ),
    AfterValidator(_env_name),
]


class EnvVar(SpecModel):
    name: EnvName = Field(description="Name of the environment variable.")
    value: str | None = Field(default=None, description="Its value.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="A source for the value, as in a Pod (secretKeyRef, configMapKeyRef, fieldRef, "
        "resourceFieldRef); checked by the API server when the pod is created.",
    )
