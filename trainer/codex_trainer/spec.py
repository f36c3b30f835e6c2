"""The CodexTrainingJob spec: one set of pydantic models for the trainer, the CRD and the operator.

Importable without torch. Field names are snake_case in Python and camelCase in YAML; unknown
fields are refused so a typo is an error instead of a silently ignored setting. Descriptions are
written for `kubectl explain`. Every field has one type, and every check here is also in the
generated CRD (`codex_operator.crd`: the structural schema, or a CEL rule beside it), so the API
server and `codex-train validate` accept and refuse the same manifests.
"""

from __future__ import annotations

import re
import types
import typing
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_VERSION = "codex.ml/v1alpha1"
KIND = "CodexTrainingJob"

# The job name: kept in step with codex_operator.names (asserted by tests/unit/test_crd.py); copied
# here because the trainer must not import the operator package.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH = 40

# hf://org/name[@revision]: the one pattern for validating and for parsing (codex_trainer.sources),
# and for the CRD's CEL rule (RE2): so no backslashes and no Unicode classes.
HF_PATTERN = r"^hf://(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?)(@(?P<rev>[A-Za-z0-9_./-]+))?$"
HF_SOURCE = re.compile(HF_PATTERN)
HF_FORM_MESSAGE = "must be of the form hf://org/name or hf://org/name@revision"

# The patterns here are used with fullmatch: Python's `$` also matches before a final newline, RE2's does not.

# A Kubernetes resource quantity, without a sign (negative sizes make no sense). The API server's
# isQuantity() alone is more lenient than its documented grammar ("Gi" and "." parse as 0), so the
# CEL rule applies this pattern too; written without backslashes to sit in a CEL string.
QUANTITY_PATTERN = r"^[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][-+]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
QUANTITY = re.compile(QUANTITY_PATTERN)
QUANTITY_MESSAGE = "must be a Kubernetes quantity such as 500m, 2, 4Gi or 1.5G"

# A Kubernetes label value, not empty: runPolicy.queueName and workloadPriorityClass become Kueue labels.
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)
MAX_LABEL_VALUE = 63

ALL_LINEAR = "all-linear"
ALL_LINEAR_MESSAGE = "'all-linear' must be the only item when given; otherwise list module names"

# Bounds on lists and strings: they keep the API server's CEL cost estimate within its limits.
MAX_LIST = 256
MAX_PATH = 4096
MAX_SOURCE = 1024
MAX_NAME = 253
MAX_QUANTITY = 64
MAX_RESOURCES = 32


def cel(rule: str, message: str) -> dict[str, Any]:
    """A CEL rule for the CRD (x-kubernetes-validations), written beside the Python check it mirrors."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


QUANTITY_RULE = f"isQuantity(self) && self.matches('{QUANTITY_PATTERN}')"
HF_RULE = cel(f"!self.startsWith('hf://') || self.matches('{HF_PATTERN}')", HF_FORM_MESSAGE)


def _quantity(v: str) -> str:
    if not QUANTITY.fullmatch(v):
        raise ValueError(QUANTITY_MESSAGE)
    return v


def _quantity_as_written(v: object) -> object:
    """A bare number (`cpu: 2`, which a Pod takes) is refused with the fix: the CRD types quantities as strings."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        raise ValueError(f"write the quantity in quotes, '{v}': quantities here are strings")
    return v


Quantity = Annotated[
    str,
    Field(max_length=MAX_QUANTITY, json_schema_extra=cel(QUANTITY_RULE, QUANTITY_MESSAGE)),
    BeforeValidator(_quantity_as_written),
    AfterValidator(_quantity),
]
DataPath = Annotated[str, Field(min_length=1, max_length=MAX_PATH)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


def _hf_form(v: str) -> str:
    if v.startswith("hf://") and not HF_SOURCE.fullmatch(v):
        raise ValueError(HF_FORM_MESSAGE)
    return v


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,  # YAML's .inf and .nan: a learning rate or epochs of inf would train for ever or diverge
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_quoted_scalars(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name and isinstance(v, str | int | float):
            kind = _scalar_type(cls.model_fields[info.field_name].annotation)
            if isinstance(v, str):
                _unquoted(v, kind)
            else:
                _typed(v, kind)
        return v


def _scalar_type(annotation: Any) -> type | None:
    """int, float or bool for a field of that type (or that type or None), else None."""
    if annotation in (int, float, bool):
        return typing.cast(type, annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and args[0] in (int, float, bool):
            return typing.cast(type, args[0])
    return None


@cache
def _adapter(kind: type) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _unquoted(v: str, kind: type | None) -> None:
    """A string pydantic would read as a number or boolean ('20', '2e-4', 'yes') is refused with the fix: the
    CRD types these fields integer, number and boolean, so the API server refuses a string there. (An unquoted
    1e-4 is a number: manifest.py reads YAML's numbers as kubectl does.)"""
    if kind is None:
        return
    try:
        value = _adapter(kind).validate_python(v)
    except ValidationError:
        return  # not a number (or boolean) at all: pydantic's own message says so
    if kind is bool:
        raise ValueError(f"write {str(value).lower()} without quotes: this field is true or false, not a string")
    what = "an integer" if kind is int else "a number"
    raise ValueError(f"write the number without quotes, {value}: this field is {what}, not a string")


def _typed(v: int | float, kind: type | None) -> None:
    """true for a number or 1 for a boolean is refused as the API server refuses it (pydantic would take true as
    1: `maxSteps: on`, which YAML reads as true, would train one step)."""
    if kind is bool and not isinstance(v, bool):
        raise ValueError(f"write true or false, not {v}: this field is true or false, not a number")
    if kind in (int, float) and isinstance(v, bool):
        what = "an integer" if kind is int else "a number"
        raise ValueError(
            f"write a number, not {str(v).lower()}: this field is {what} (YAML reads on, yes and true as true)"
        )


class ModelSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.source != 'scratch' || has(self.config)",
                    "message": "source 'scratch' needs model.config with a 'model_type' "
                    "(e.g. {model_type: llama, hidden_size: 64, ...})",
                },
                {
                    "rule": "self.source == 'scratch' || !has(self.config)",
                    "message": "model.config is only used with source 'scratch'; remove it or set source: scratch",
                },
            ]
        }
    )

    source: str = Field(
        min_length=1,
        max_length=MAX_SOURCE,
        json_schema_extra=HF_RULE,
        description="Where the base model comes from: 'hf://org/name[@revision]' (Hugging Face Hub), "
        "a local directory holding a saved model, or 'scratch' to build a new randomly "
        "initialised model from model.config. Immutable.",
    )
    config: dict[str, Any] | None = Field(
        default=None,
        description="A transformers model config (as in config.json, with 'model_type'), used "
        "only when source is 'scratch'.",
        # free-form, but the API server checks model_type as the trainer does
        json_schema_extra={
            "properties": {"model_type": {"type": "string", "description": "The transformers model type, e.g. llama."}},
            "required": ["model_type"],
        },
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow model code from the Hub repository to run (off by default)."
    )

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        return _hf_form(v)

    @model_validator(mode="after")
    def _scratch_needs_config(self) -> ModelSpec:
        if self.source == "scratch":
            if not self.config or not isinstance(self.config.get("model_type"), str):
                raise ValueError(
                    "source 'scratch' needs model.config with a 'model_type' "
                    "(e.g. {model_type: llama, hidden_size: 64, ...})"
                )
        elif self.config is not None:
            raise ValueError("model.config is only used with source 'scratch'; remove it or set source: scratch")
        return self


VALIDATION_IS_TRAINING = (
    "is also a training file: its rows would be scored as validation after the model trained on them; give a "
    "file of its own, or leave validation empty to hold out validationFraction of the training rows"
)


class DataSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.validation) || self.validation.all(v, !(v in self.train))",
                    "message": f"a validation file {VALIDATION_IS_TRAINING}",
                    "fieldPath": ".validation",
                }
            ]
        }
    )

    train: list[DataPath] = Field(
        min_length=1,
        max_length=MAX_LIST,
        description="Training data files, at least one (.jsonl, .json, .txt, .parquet). In .txt files "
        "each non-empty line is one example. On a cluster the paths are read inside the trainer pod: "
        "with data.existingClaim they start with /data/.",
    )
    validation: list[DataPath] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Validation data files. When empty, validationFraction of the training "
        "examples is held out (a fixed split for a given seed).",
    )
    existing_claim: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME,
        description="Cluster only: an existing PersistentVolumeClaim holding the data, mounted read-only "
        "at /data in every trainer pod; data paths then start with /data/ (e.g. /data/train.jsonl).",
    )
    text_field: str = Field(
        default="text", min_length=1, description="The field holding the text in .jsonl/.json/.parquet rows."
    )
    validation_fraction: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Share of training examples held out for evaluation, in [0, 1)."
    )
    max_seq_length: int = Field(
        default=512,
        ge=2,  # a token and the one it predicts: one token alone gives nothing to learn
        le=1_048_576,
        description="Tokens per training sequence, at least 2.",
    )
    packing: bool = Field(
        default=True,
        description="Concatenate examples (separated by EOS) into full sequences of maxSeqLength, "
        "so no compute is spent on padding; each example still attends only to itself (position ids "
        "restart at each one). When false, each example is truncated and padded.",
    )

    @field_validator("validation")
    @classmethod
    def _not_a_training_file(cls, v: list[str], info: ValidationInfo) -> list[str]:
        train = set(info.data.get("train") or ())  # as written, as the CRD's rule compares them
        for path in v:
            if path in train:
                raise ValueError(f"'{path}' {VALIDATION_IS_TRAINING}")
        return v

    @property
    def train_files(self) -> list[str]:
        return list(self.train)

    @property
    def validation_files(self) -> list[str]:
        return list(self.validation)


class PeftSpec(_Model):
    method: Literal["lora", "none"] = Field(
        default="lora", description="'lora' trains low-rank adapters; 'none' trains every weight."
    )
    r: int = Field(default=8, gt=0, le=4096, description="LoRA rank.")
    alpha: float = Field(default=16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input, in [0, 1).")
    target_modules: list[Name] = Field(
        default_factory=lambda: [ALL_LINEAR],
        min_length=1,
        max_length=MAX_LIST,
        json_schema_extra=cel(f"self.size() == 1 || !('{ALL_LINEAR}' in self)", ALL_LINEAR_MESSAGE),
        description="Names of the modules to adapt (e.g. [q_proj, v_proj]), or [all-linear] for every "
        "linear layer except the output head. 'all-linear' must be the only item when given.",
    )
    modules_to_save: list[Name] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Modules trained in full beside the adapters and saved with them "
        "(e.g. [embed_tokens, lm_head] for a new vocabulary or a model trained from scratch).",
    )
    merge: bool = Field(default=False, description="Also write a merged full model to final/merged.")

    @field_validator("target_modules")
    @classmethod
    def _all_linear_alone(cls, v: list[str]) -> list[str]:
        if ALL_LINEAR in v and len(v) > 1:
            raise ValueError(ALL_LINEAR_MESSAGE)
        return v

    @property
    def peft_target_modules(self) -> str | list[str]:
        """target_modules as PEFT takes it: the string 'all-linear', or the list of names."""
        return ALL_LINEAR if self.target_modules == [ALL_LINEAR] else list(self.target_modules)


class TrainingSpec(_Model):
    max_steps: int | None = Field(
        default=None, gt=0, description="Optimizer steps to run. Overrides epochs when both are set."
    )
    epochs: float | None = Field(default=None, gt=0, description="Passes over the training data (default 1).")
    batch_size: int = Field(default=8, gt=0, description="Sequences per process per micro-step. Immutable.")
    gradient_accumulation: int = Field(default=1, gt=0, description="Micro-steps per optimizer step. Immutable.")
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0, description="Gradient clipping norm; 0 turns clipping off.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        default="cosine", description="Learning-rate decay after warmup."
    )
    warmup_steps: int = Field(default=0, ge=0, description="Steps of linear warmup from 0 to learningRate.")
    seed: int = Field(
        default=42, ge=0, description="Seed for initialisation, data split, order and dropout. Immutable."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="'auto' uses bf16 (or fp16) mixed precision on a GPU that has it, fp32 on CPU."
    )
    compile: bool = Field(
        default=False,
        description="Compile the model's decoder with torch.compile (inductor). The first steps take longer "
        "(tens of seconds of compiling); needs a C/C++ compiler where the trainer runs.",
    )


class EvalSpec(_Model):
    every_steps: int | None = Field(default=None, gt=0, description="Evaluate every N steps (and always at the end).")
    batch_size: int | None = Field(default=None, gt=0, description="Eval batch size (default training.batchSize).")
    max_batches: int | None = Field(default=None, gt=0, description="Cap on eval batches per evaluation.")


class CheckpointSpec(_Model):
    every_steps: int = Field(default=100, gt=0, description="Save a checkpoint every N steps (and at the end).")
    keep_last: int = Field(default=2, ge=1, description="Complete checkpoints kept; older ones are deleted.")


# user:password@ or token@ in a URI, or a query parameter named like a credential (?token=, &api_key=,
# ?password=...): it would land in the job's ConfigMap, run.json and logs. RE2 (the CRD's CEL) and Python alike
# bounded repeats: redact_credentials searches whole messages, where an unbounded one backtracks over a long
# value (a 500,000-character name took minutes)
_SCHEME = "[A-Za-z][A-Za-z0-9+.-]{0,31}://"
# a parameter named by one of these words, alone or after a separator (access_token, api-key, X.Auth):
# design=, author= and monkey= are not credentials
_SECRET_PARAM = (
    "[?&;]([A-Za-z0-9_.-]{0,63}[_.-])?"
    "(?i:token|secret|passwd|password|pwd|pass|key|apikey|auth|authorization|sig|signature|credential|credentials)="
)
CREDENTIALS_PATTERN = f"^{_SCHEME}([^/?#]*@|[^#]*{_SECRET_PARAM})"
CREDENTIALS_MESSAGE = (
    "must not carry credentials (user:password@, token@ or a ?token= query): keep them in a Secret and pass "
    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
    "through env valueFrom.secretKeyRef"
)


HIDDEN = "(set, not shown)"


def redact_credentials(text: str) -> str:
    """`text` with a URI's user:password@ shown as ***@ and its credential-like query values as ***, for error
    messages."""
    text = re.sub(f"({_SCHEME})[^/?#@\\s]*@", r"\1***@", text)
    return re.sub(f"({_SECRET_PARAM})[^&#;\\s]*", r"\1***", text)


def _no_credentials(v: str) -> str:
    if re.match(CREDENTIALS_PATTERN, v):
        raise ValueError(CREDENTIALS_MESSAGE)
    return v


TrackingUri = Annotated[
    str,
    Field(max_length=MAX_PATH, json_schema_extra=cel(f"!self.matches('{CREDENTIALS_PATTERN}')", CREDENTIALS_MESSAGE)),
    AfterValidator(_no_credentials),
]


class MlflowSpec(_Model):
    enabled: bool = Field(default=True, description="Log params and metrics to MLflow.")
    tracking_uri: TrackingUri | None = Field(
        default=None,
        description="MLflow tracking URI. Default: a local store under the output directory (no server). "
        "Credentials go in environment variables from a Secret (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN), "
        "never in the URI.",
    )
    experiment: str = Field(default="codex", min_length=1, description="MLflow experiment name.")


class WandbSpec(_Model):
    enabled: bool = Field(default=False, description="Log metrics to Weights & Biases (rank 0).")
    mode: Literal["offline", "online"] = Field(
        default="offline",
        description="offline: a run directory under <output>/wandb/, no account, nothing sent (upload later with "
        "`wandb sync`). online: stream to W&B; the API key comes from WANDB_API_KEY in the environment (from a "
        "Secret), never from the spec.",
    )
    project: str = Field(default="codex", min_length=1, max_length=128, description="W&B project.")
    entity: str | None = Field(
        default=None, min_length=1, max_length=128, description="W&B entity (user or team). Default: the key's own."
    )
    run_name: str | None = Field(
        default=None, min_length=1, max_length=MAX_NAME, description="Display name of the run. Default: the job's name."
    )


class TrackingSpec(_Model):
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec, description="MLflow tracking.")
    wandb: WandbSpec = Field(
        default_factory=WandbSpec,
        description="Weights & Biases tracking (off by default). A resumed job continues the same W&B run.",
    )
    tensorboard: bool = Field(
        default=False,
        description="Write TensorBoard scalars (loss, learning rate, tokens/s, eval loss, perplexity) under "
        "<output>/tensorboard/; a resumed run continues the same curves.",
    )


class MetricsSpec(_Model):
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve Prometheus metrics on this port (off when unset)."
    )


# ---------------------------------------------------------------- cluster only (ignored by the local trainer)

TOLERATION_NO_KEY = "a toleration without a key must use operator Exists (it then tolerates every taint)"
TOLERATION_EXISTS_VALUE = "a toleration with operator Exists matches any value: remove value"


class ResourcesSpec(_Model):
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


class StorageSpec(_Model):
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


class RunPolicySpec(_Model):
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


class Toleration(_Model):
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


class LocalObjectReference(_Model):
    name: Name = Field(description="The name of the Secret in the job's namespace.")


class EnvVar(_Model):
    name: Name = Field(description="Name of the environment variable.")
    value: str | None = Field(default=None, description="Its value.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="A source for the value, as in a Pod (secretKeyRef, configMapKeyRef, fieldRef, "
        "resourceFieldRef); checked by the API server when the pod is created.",
    )


class JobSpec(_Model):
    """What a CodexTrainingJob asks for."""

    model: ModelSpec = Field(description="The base model. Immutable once the job is created.")
    tokenizer: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SOURCE,
        json_schema_extra=HF_RULE,
        description="Tokenizer source: 'hf://org/name[@rev]', a local path, or 'bytes' (built-in "
        "byte-level, no download). Default: the model's own; 'bytes' for a scratch model. Immutable.",
    )
    data: DataSpec = Field(description="Training and validation data. Immutable once the job is created.")
    peft: PeftSpec = Field(
        default_factory=PeftSpec, description="Parameter-efficient fine-tuning. Immutable once the job is created."
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation settings.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoint settings.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Experiment tracking.")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Prometheus metrics endpoint.")
    callbacks: list[Name] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="Installed callbacks to enable, by name (entry points in the group codex_trainer.callbacks): "
        "they receive on_step, on_eval, on_checkpoint and on_end on rank 0. An unknown name is refused when the "
        "run starts; a callback that raises is reported once and disabled, and training goes on.",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description="Trainer container image (cluster only). Default: the operator's trainer image.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="When the node pulls the image (cluster only). Default: IfNotPresent."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, description="Secrets for pulling the image from a private registry (cluster only)."
    )
    num_nodes: int = Field(default=1, ge=1, description="Pods (nodes) to train on (cluster only). Immutable.")
    processes_per_node: int = Field(
        default=1, ge=1, description="Processes per pod, e.g. GPUs per node (cluster only). Immutable."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Per-pod resources (cluster only).")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Checkpoint volume (cluster only).")
    run_policy: RunPolicySpec = Field(
        default_factory=RunPolicySpec, description="Retries, deadlines and queueing (cluster only)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the trainer pods must match (cluster only)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints the trainer pods tolerate, as in a Pod (cluster only)."
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Pod affinity rules, as in a Pod's spec.affinity (cluster only; checked by the API "
        "server when the pod is created).",
    )
    priority_class_name: str | None = Field(
        default=None, min_length=1, description="PriorityClass of the trainer pods (cluster only)."
    )
    env: list[EnvVar] = Field(
        default_factory=list, description="Extra environment variables for the trainer container (cluster only)."
    )
    env_from: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Sources of environment variables (configMapRef, secretRef), as in a Pod (cluster only).",
    )

    def shown(self) -> dict[str, Any]:
        """The spec as run.json, MLflow's params and `codex-train validate` show it: an env value (a token,
        maybe, in a job file run on a laptop) as HIDDEN; references to Secrets stay, they hold no secret."""
        d = self.model_dump(mode="json", by_alias=True)
        d["env"] = [e | {"value": HIDDEN} if e.get("value") is not None else e for e in d["env"]]
        return d

    @property
    def tokenizer_source(self) -> str:
        if self.tokenizer is not None:
            return self.tokenizer
        return "bytes" if self.model.source == "scratch" else self.model.source

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_form(cls, v: str | None) -> str | None:
        return v if v is None else _hf_form(v)


NAME_MESSAGE = (
    f"must be at most {MAX_NAME_LENGTH} characters, start with a lowercase letter, and contain only "
    "lowercase letters, digits and '-' (ending in a letter or digit): the operator names the job's pods, "
    "Service and volume after it, and those names must stay valid DNS labels"
)


class Metadata(BaseModel):
    """The fields of a Kubernetes ObjectMeta; anything else is refused, as the API server does."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(
        min_length=1,
        description=f"The job's name: a DNS-1035 label of at most {MAX_NAME_LENGTH} characters.",
    )
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generate_name: str | None = Field(default=None, alias="generateName")
    uid: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    generation: int | None = None
    creation_timestamp: Any = Field(default=None, alias="creationTimestamp")
    deletion_timestamp: Any = Field(default=None, alias="deletionTimestamp")
    deletion_grace_period_seconds: int | None = Field(default=None, alias="deletionGracePeriodSeconds")
    owner_references: list[dict[str, Any]] | None = Field(default=None, alias="ownerReferences")
    finalizers: list[str] | None = None
    managed_fields: list[dict[str, Any]] | None = Field(default=None, alias="managedFields")
    self_link: str | None = Field(default=None, alias="selfLink")

    @field_validator("name")
    @classmethod
    def _name_form(cls, v: str) -> str:
        if len(v) > MAX_NAME_LENGTH or not re.fullmatch(NAME_PATTERN, v):
            too_long = f"; this one has {len(v)}" if len(v) > MAX_NAME_LENGTH else ""
            raise ValueError(NAME_MESSAGE + too_long)
        return v


class Manifest(BaseModel):
    """A whole CodexTrainingJob manifest, as `kubectl apply` takes it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["codex.ml/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["CodexTrainingJob"]
    metadata: Metadata
    spec: JobSpec
    status: dict[str, Any] | None = Field(default=None, description="Written by the operator.")
