"""The CodexTrainingJob spec: one set of pydantic models for the trainer, the CRD and the operator.

Importable without torch. Field names are snake_case in Python and camelCase in YAML; unknown
fields are refused so a typo is an error instead of a silently ignored setting. Descriptions are
written for `kubectl explain`. Every field has one type, and every check here is also in the
generated CRD (`codex_operator.crd`: the structural schema, or a CEL rule beside it), so the API
server and `codex-train validate` accept and refuse the same manifests. The field types and the
strictness every model shares are in fields.py; the fields only a cluster uses in cluster_spec.py.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .cluster_spec import EnvVar, LocalObjectReference, ResourcesSpec, RunPolicySpec, StorageSpec, Toleration
from .contract import DEFAULT_MASTER_PORT
from .errors import FieldValueError
from .fields import (
    ALL_LINEAR,
    ALL_LINEAR_MESSAGE,
    ALLOW_FILE_STORE,
    DNS_LABEL,
    HF_RULE,
    HIDDEN,
    LABEL_VALUE,
    MAX_LABEL_VALUE,
    MAX_LIST,
    MAX_NAME,
    MAX_NAME_LENGTH,
    MAX_SOURCE,
    MLFLOW_FOLDER_MESSAGE,
    MLFLOW_NOT_A_FOLDER,
    NAME_PATTERN,
    DataPath,
    Name,
    SpecModel,
    TrackingUri,
    admitted_before,
    cel,
    hf_form,
    mlflow_folder,
    qualified_name_problem,
)

API_VERSION = "codex.ml/v1alpha1"
KIND = "CodexTrainingJob"


class ModelSpec(SpecModel):
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
        return hf_form(v)

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


LISTED_TWICE = (
    "is listed twice: its rows are trained on twice, and those held out of it for validation are trained on too; "
    "list each file once"
)


class DataSpec(SpecModel):
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


SAVED_AND_TARGETED = (
    "every module in targetModules is also in modulesToSave, which trains it in full: LoRA would adapt nothing; "
    "name a module to adapt, or leave it out of modulesToSave"
)


class PeftSpec(SpecModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {  # a partial overlap is PEFT's: the shared module is trained in full, the others adapted
                    "rule": "!has(self.modulesToSave) || !has(self.targetModules) || "
                    "(has(self.method) && self.method == 'none') || "
                    "!self.targetModules.all(t, t in self.modulesToSave)",
                    "message": SAVED_AND_TARGETED,
                    "fieldPath": ".modulesToSave",
                }
            ]
        }
    )

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

    @field_validator("modules_to_save")
    @classmethod
    def _something_to_adapt(cls, v: list[str], info: ValidationInfo) -> list[str]:
        targeted = info.data.get("target_modules") or ()
        if targeted and set(targeted) <= set(v) and info.data.get("method") != "none":
            raise ValueError(SAVED_AND_TARGETED)
        return v

    @property
    def peft_target_modules(self) -> str | list[str]:
        """target_modules as PEFT takes it: the string 'all-linear', or the list of names."""
        return ALL_LINEAR if self.target_modules == [ALL_LINEAR] else list(self.target_modules)


class TrainingSpec(SpecModel):
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


class EvalSpec(SpecModel):
    every_steps: int | None = Field(default=None, gt=0, description="Evaluate every N steps (and always at the end).")
    batch_size: int | None = Field(default=None, gt=0, description="Eval batch size (default training.batchSize).")
    max_batches: int | None = Field(default=None, gt=0, description="Cap on eval batches per evaluation.")


class CheckpointSpec(SpecModel):
    every_steps: int = Field(default=100, gt=0, description="Save a checkpoint every N steps (and at the end).")
    keep_last: int = Field(default=2, ge=1, description="Complete checkpoints kept; older ones are deleted.")


class MlflowSpec(SpecModel):
    enabled: bool = Field(default=True, description="Log params and metrics to MLflow.")
    tracking_uri: TrackingUri | None = Field(
        default=None,
        description="MLflow tracking URI. Default: a local store under the output directory (no server). "
        "Credentials go in environment variables from a Secret (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN), "
        "never in the URI. A folder (file:... or a path), MLflow's file store, needs MLFLOW_ALLOW_FILE_STORE=true "
        "in env.",
    )
    experiment: str = Field(default="codex", min_length=1, description="MLflow experiment name.")


class WandbSpec(SpecModel):
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


class TrackingSpec(SpecModel):
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


RENDEZVOUS_PORT_TAKEN = (
    f"port {DEFAULT_MASTER_PORT} is the rendezvous port (MASTER_PORT) of a job's processes when there are several, "
    "where rank 0 could not serve metrics on it; choose another (9400 when unset)"
)


class MetricsSpec(SpecModel):
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve Prometheus metrics on this port (off when unset)."
    )


class JobSpec(SpecModel):
    """What a CodexTrainingJob asks for."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # several processes meet on MASTER_PORT; one process alone binds no port
                    "rule": f"!has(self.metrics) || !has(self.metrics.port) || self.metrics.port != "
                    f"{DEFAULT_MASTER_PORT} || self.numNodes * self.processesPerNode == 1",
                    "message": RENDEZVOUS_PORT_TAKEN,
                    "fieldPath": ".metrics.port",
                },
                {
                    # MLflow's file store, refused by the trainer unless the pod's env allows it (JobSpec below)
                    "rule": "!has(self.tracking) || !has(self.tracking.mlflow) || "
                    "!has(self.tracking.mlflow.trackingUri) || "
                    "(has(self.tracking.mlflow.enabled) && !self.tracking.mlflow.enabled) || "
                    + MLFLOW_NOT_A_FOLDER.format(uri="self.tracking.mlflow.trackingUri")
                    + " || (has(self.envFrom) && size(self.envFrom) > 0) || (has(self.env) && self.env.exists(e, "
                    f"e.name == '{ALLOW_FILE_STORE}' && (has(e.valueFrom) || "
                    "(has(e.value) && e.value in ['true', 'True', 'TRUE', '1']))))",
                    "message": f"the tracking URI (file:... or a path) {MLFLOW_FOLDER_MESSAGE}",
                    "fieldPath": ".tracking.mlflow.trackingUri",
                },
            ]
        }
    )

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
        default_factory=list,
        json_schema_extra={"maxItems": MAX_LIST},  # the CEL rule on each name needs a bound; checked below
        description="Extra environment variables for the trainer container (cluster only).",
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

    @field_validator("env")
    @classmethod
    def _env_bounded(cls, v: list[EnvVar], info: ValidationInfo) -> list[EnvVar]:
        if len(v) > MAX_LIST and not admitted_before(info):  # a job stored with more keeps them (fields.STORED)
            raise ValueError(f"at most {MAX_LIST} variables; put more in a ConfigMap or Secret and use envFrom")
        return v

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_form(cls, v: str | None) -> str | None:
        return v if v is None else hf_form(v)

    @model_validator(mode="after")
    def _metrics_port_free(self) -> JobSpec:
        if self.metrics.port == DEFAULT_MASTER_PORT and self.num_nodes * self.processes_per_node > 1:
            raise FieldValueError("metrics.port", RENDEZVOUS_PORT_TAKEN)
        return self

    @model_validator(mode="after")
    def _mlflow_not_a_folder(self, info: ValidationInfo) -> JobSpec:
        """A folder as the tracking URI is refused here rather than at the run's start (in a pod, after its image
        was pulled), unless an env allows it: the job's (a pod's), or this process's (a run on this machine);
        one from envFrom or a valueFrom cannot be read here, and the trainer checks its own env again."""
        mlflow = self.tracking.mlflow
        if not (mlflow.enabled and mlflow.tracking_uri) or self.env_from or admitted_before(info):
            return self
        env = dict(os.environ)
        for e in self.env:
            if e.name == ALLOW_FILE_STORE and e.value_from is not None:
                return self
            if e.name == ALLOW_FILE_STORE and env.get(e.name, "").lower() not in ("true", "1"):
                env[e.name] = e.value or ""
        if folder := mlflow_folder(mlflow.tracking_uri, env):
            raise FieldValueError("tracking.mlflow.trackingUri", folder)
        return self


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

    @field_validator("namespace")
    @classmethod
    def _namespace_form(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > MAX_LABEL_VALUE or not DNS_LABEL.fullmatch(v)):
            raise ValueError(
                f"a namespace is at most {MAX_LABEL_VALUE} lowercase letters, digits and '-', "
                "beginning and ending with a letter or digit"
            )
        return v

    @field_validator("labels")
    @classmethod
    def _labels_form(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        problems = []
        for key, value in (v or {}).items():
            if (problem := qualified_name_problem(key)) is not None:
                problems.append(f"label key {key!r} {problem}")
            if value and (len(value) > MAX_LABEL_VALUE or not LABEL_VALUE.fullmatch(value)):
                problems.append(
                    f"label {key}: value {value!r} must be empty or at most {MAX_LABEL_VALUE} letters, digits, '-', "
                    "'_' and '.', beginning and ending with a letter or digit"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("annotations")
    @classmethod
    def _annotations_form(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        # the API server checks an annotation key in lower case (labels as written)
        found = ((k, qualified_name_problem(k.lower())) for k in v or {})
        problems = [f"annotation key {k!r} {p}" for k, p in found if p is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return v


class Manifest(BaseModel):
    """A whole CodexTrainingJob manifest, as `kubectl apply` takes it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["codex.ml/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["CodexTrainingJob"]
    metadata: Metadata
    spec: JobSpec
    status: dict[str, Any] | None = Field(default=None, description="Written by the operator.")
