"""The contract between the operator and the trainer pod, in one torch-free place both sides import.

What the operator sets in a trainer pod and what the trainer reads, what the trainer's exit code means
and what the operator does about it, the metric names the operator reads from rank 0, where checkpoints
lie on the volume, what rank 0 writes as its termination message, and the API group and kind. Neither
side spells any of these as a string literal of its own.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- the resource

GROUP = "codex.ml"
VERSION = "v1alpha1"
KIND = "CodexTrainingJob"
PLURAL = "codextrainingjobs"

# ---------------------------------------------------------------- exit codes

EXIT_OK = 0
EXIT_RETRYABLE = 1  # e.g. the Hub could not be reached: a retry may succeed
EXIT_USER_ERROR = 2  # permanent: the spec or the data must change; the operator does not retry
SIGNAL_EXIT_BASE = 128  # 128 + signal: stopped gracefully after a checkpoint (143 for SIGTERM, 130 for Ctrl-C)
EXIT_SIGKILL = SIGNAL_EXIT_BASE + 9  # 137: killed (the OOM killer, or the grace period ran out)
EXIT_SIGTERM = SIGNAL_EXIT_BASE + 15  # 143

# ---------------------------------------------------------------- the pod's environment

ENV_TERMINATION_LOG = "CODEX_TERMINATION_LOG"  # a file (the pod's terminationMessagePath) for the exit message
ENV_WORKER_MESSAGES = "CODEX_WORKER_MESSAGES"  # set by `codex-train launch` for its workers: a directory
ENV_LOCK_WAIT = "CODEX_LOCK_WAIT"  # seconds to wait for the output directory's lock (a previous attempt's pod)
ENV_SHUTDOWN_TIMEOUT = "CODEX_SHUTDOWN_TIMEOUT"
ENV_DNS_TIMEOUT = "CODEX_DNS_TIMEOUT"
# the rendezvous (torch.distributed.run's names)
ENV_NNODES = "NNODES"
ENV_NPROC_PER_NODE = "NPROC_PER_NODE"
ENV_NODE_RANK = "NODE_RANK"
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_MASTER_PORT = "MASTER_PORT"
DEFAULT_MASTER_PORT = 29500  # what the operator sets, and what the trainer assumes when MASTER_PORT is unset
DATA_DIR = "/data"  # where the operator mounts data.existingClaim (read-only) in every trainer pod

# ---------------------------------------------------------------- rank 0's metrics

METRIC_STEP = "codex_trainer_step"
METRIC_TOTAL_STEPS = "codex_trainer_total_steps"
METRIC_LOSS = "codex_trainer_loss"
METRIC_EVAL_LOSS = "codex_trainer_eval_loss"
METRIC_TOKENS_PER_SECOND = "codex_trainer_tokens_per_second"
METRIC_CHECKPOINT_STEP = "codex_trainer_last_checkpoint_step"
METRIC_CHECKPOINT_TIME = "codex_trainer_last_checkpoint_timestamp_seconds"

# ---------------------------------------------------------------- the output directory

CHECKPOINTS_DIR = "checkpoints"  # under the output directory
STEP_DIR_PREFIX = "step-"
STEP_DIR = re.compile(rf"^{STEP_DIR_PREFIX}(\d+)$")
CHECKPOINT_MANIFEST = "MANIFEST.json"  # in each step-N: its files' sizes and sha256, written last


def checkpoint_dir(step: int) -> str:
    """A complete checkpoint's path under the output directory: checkpoints/step-N."""
    return f"{CHECKPOINTS_DIR}/{STEP_DIR_PREFIX}{step}"


# ---------------------------------------------------------------- the termination message

# On exit 0, rank 0 writes one JSON object: {"step", "loss", "evalLoss", "checkpoint": {"step", "savedAt"}}.
# On any other exit, one line of text (the last line is what the job's status shows).
FINAL_STEP = "step"
FINAL_LOSS = "loss"
FINAL_EVAL_LOSS = "evalLoss"
FINAL_CHECKPOINT = "checkpoint"  # {FINAL_CHECKPOINT_STEP, FINAL_CHECKPOINT_SAVED_AT}: the newest complete checkpoint
FINAL_CHECKPOINT_STEP = "step"
FINAL_CHECKPOINT_SAVED_AT = "savedAt"  # RFC 3339, UTC
FINAL_KEYS = (FINAL_STEP, FINAL_LOSS, FINAL_EVAL_LOSS, FINAL_CHECKPOINT)
TERMINATION_MESSAGE_LIMIT = 4096  # what the kubelet keeps of a termination message, in bytes


def stopped_message(signal_name: str, checkpoint_step: int | None) -> str:
    """The line of a trainer stopped by a signal: "stopped by SIGTERM after checkpoint at step N" (the newest
    complete checkpoint on the volume when it stopped), or "stopped by SIGTERM" when there is none."""
    after = f" after checkpoint at step {checkpoint_step}" if checkpoint_step is not None else ""
    return f"stopped by {signal_name}{after}"


def stopped_checkpoint_step(message: str) -> int | None:
    """The checkpoint step a `stopped_message` names (its last line), None if it names none."""
    last = (message.strip().splitlines() or [""])[-1].strip()
    found = re.fullmatch(r"stopped by SIG[A-Z0-9]+ after checkpoint at step (\d+)", last)
    return int(found.group(1)) if found else None
