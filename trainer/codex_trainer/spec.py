"""The CodexTrainingJob spec: one set of pydantic models for the trainer, the CRD and the operator.

Importable without torch. Field names are snake_case in Python and camelCase in YAML; unknown
fields are refused so a typo is an error instead of a silently ignored setting. Descriptions are
written for `kubectl explain`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

API_VERSION = "codex.ml/v1alpha1"
KIND = "CodexTrainingJob"

# hf://org/name[@revision]: the one pattern for validating and for parsing (codex_trainer.sources)
HF_SOURCE = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?)(@(?P<rev>[\w.\-/]+))?$")


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class ModelSpec(_Model):
    source: str = Field(
        description="Where the base model comes from: 'hf://org/name[@revision]' (Hugging Face Hub), "
        "a local directory holding a saved model, or 'scratch' to build a new randomly "
        "initialised model from model.config.",
    )
    config: dict[str, Any] | None = Field(
        default=None,
        description="A transformers model config (as in config.json, with 'model_type'), used "
        "when source is 'scratch'.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow model code from the Hub repository to run (off by default)."
    )

    @field_validator("source")
    @classmethod
    def _source_form(cls, v: str) -> str:
        if v.startswith("hf://") and not HF_SOURCE.match(v):
            raise ValueError(f"'{v}' is not of the form hf://org/name or hf://org/name@revision")
        if not v.strip():
            raise ValueError("must not be empty: use hf://org/name, a local path, or scratch")
        return v

    @model_validator(mode="after")
    def _scratch_needs_config(self) -> ModelSpec:
        if self.source == "scratch":
            if not self.config or "model_type" not in self.config:
                raise ValueError(
                    "source 'scratch' needs model.config with a 'model_type' "
                    "(e.g. {model_type: llama, hidden_size: 64, ...})"
                )
        elif self.config is not None:
            raise ValueError("model.config is only used with source 'scratch'; remove it or set source: scratch")
        return self


class DataSpec(_Model):
    train: str | list[str] = Field(
        description="Training data: a file path or a list of them (.jsonl, .json, .txt, .parquet). "
        "In .txt files each non-empty line is one example.",
    )
    validation: str | list[str] | None = Field(
        default=None,
        description="Optional validation files. When absent, validationFraction of the training "
        "examples is held out (a fixed split for a given seed).",
    )
    text_field: str = Field(default="text", description="The field holding the text in .jsonl/.parquet rows.")
    validation_fraction: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Share of training examples held out for evaluation, in [0, 1)."
    )
    max_seq_length: int = Field(default=512, gt=0, le=1_048_576, description="Tokens per training sequence.")
    packing: bool = Field(
        default=True,
        description="Concatenate examples (separated by EOS) into full sequences of maxSeqLength, "
        "so no compute is spent on padding. When false, each example is truncated and padded.",
    )

    @property
    def train_files(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)

    @property
    def validation_files(self) -> list[str]:
        if self.validation is None:
            return []
        return [self.validation] if isinstance(self.validation, str) else list(self.validation)

    @field_validator("train")
    @classmethod
    def _train_not_empty(cls, v: str | list[str]) -> str | list[str]:
        if not v:
            raise ValueError("give at least one training file")
        return v


class PeftSpec(_Model):
    method: Literal["lora", "none"] = Field(
        default="lora", description="'lora' trains low-rank adapters; 'none' trains every weight."
    )
    r: int = Field(default=8, gt=0, le=4096, description="LoRA rank.")
    alpha: float = Field(default=16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input, in [0, 1).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear",
        description="Module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear'.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full beside the adapters and saved with them "
        "(e.g. [embed_tokens, lm_head] for a new vocabulary or a model trained from scratch).",
    )
    merge: bool = Field(default=False, description="Also write a merged full model to final/merged.")


class TrainingSpec(_Model):
    max_steps: int | None = Field(
        default=None, gt=0, description="Optimizer steps to run. Overrides epochs when both are set."
    )
    epochs: float | None = Field(default=None, gt=0, description="Passes over the training data (default 1).")
    batch_size: int = Field(default=8, gt=0, description="Sequences per process per micro-step.")
    gradient_accumulation: int = Field(default=1, gt=0, description="Micro-steps per optimizer step.")
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0, description="Gradient clipping norm; 0 turns clipping off.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        default="cosine", description="Learning-rate decay after warmup."
    )
    warmup_steps: int = Field(default=0, ge=0, description="Steps of linear warmup from 0 to learningRate.")
    seed: int = Field(default=42, ge=0, description="Seed for initialisation, data split, order and dropout.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="'auto' uses bf16 (or fp16) mixed precision on a GPU that has it, fp32 on CPU."
    )


class EvalSpec(_Model):
    every_steps: int | None = Field(default=None, gt=0, description="Evaluate every N steps (and always at the end).")
    batch_size: int | None = Field(default=None, gt=0, description="Eval batch size (default training.batchSize).")
    max_batches: int | None = Field(default=None, gt=0, description="Cap on eval batches per evaluation.")


class CheckpointSpec(_Model):
    every_steps: int = Field(default=100, gt=0, description="Save a checkpoint every N steps (and at the end).")
    keep_last: int = Field(default=2, ge=1, description="Complete checkpoints kept; older ones are deleted.")


class MlflowSpec(_Model):
    enabled: bool = Field(default=True, description="Log params and metrics to MLflow.")
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI. Default: a local store under the output directory (no server).",
    )
    experiment: str = Field(default="codex", description="MLflow experiment name.")


class TrackingSpec(_Model):
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec, description="MLflow tracking.")


class MetricsSpec(_Model):
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve Prometheus metrics on this port (off when unset)."
    )


class ResourcesSpec(_Model):
    requests: dict[str, str] = Field(default_factory=dict, description="Container resource requests per pod.")
    limits: dict[str, str] = Field(default_factory=dict, description="Container resource limits per pod.")


class StorageSpec(_Model):
    size: str = Field(default="10Gi", description="Size of the checkpoint volume.")
    storage_class_name: str | None = Field(default=None, description="StorageClass of the checkpoint volume.")
    existing_claim: str | None = Field(default=None, description="Use this PVC instead of creating one.")


class RunPolicySpec(_Model):
    backoff_limit: int = Field(default=3, ge=0, description="Retries after a crash (pod disruptions do not count).")
    active_deadline_seconds: int | None = Field(default=None, gt=0, description="Fail the job after this long.")
    suspend: bool = Field(default=False, description="Create the job suspended (for Kueue and other queues).")
    queue_name: str | None = Field(default=None, description="Kueue LocalQueue to submit to.")


class JobSpec(_Model):
    """What a CodexTrainingJob asks for."""

    model: ModelSpec = Field(description="The base model.")
    tokenizer: str | None = Field(
        default=None,
        description="Tokenizer source: 'hf://org/name[@rev]', a local path, or 'bytes' (built-in "
        "byte-level, no download). Default: the model's own; 'bytes' for a scratch model.",
    )
    data: DataSpec = Field(description="Training and validation data.")
    peft: PeftSpec = Field(default_factory=PeftSpec, description="Parameter-efficient fine-tuning.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation settings.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoint settings.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Experiment tracking.")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Prometheus metrics endpoint.")
    image: str = Field(default="codex-trainer:latest", description="Trainer container image (cluster only).")
    num_nodes: int = Field(default=1, ge=1, description="Pods (nodes) to train on (cluster only).")
    processes_per_node: int = Field(
        default=1, ge=1, description="Processes per pod, e.g. GPUs per node (cluster only)."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Per-pod resources (cluster only).")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Checkpoint volume (cluster only).")
    run_policy: RunPolicySpec = Field(
        default_factory=RunPolicySpec, description="Retries and deadlines (cluster only)."
    )

    @property
    def tokenizer_source(self) -> str:
        if self.tokenizer is not None:
            return self.tokenizer
        return "bytes" if self.model.source == "scratch" else self.model.source


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Manifest(BaseModel):
    """A whole CodexTrainingJob manifest, as `kubectl apply` takes it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    api_version: Literal["codex.ml/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["CodexTrainingJob"]
    metadata: Metadata
    spec: JobSpec
