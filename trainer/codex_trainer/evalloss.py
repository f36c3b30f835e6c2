"""The evaluation loss: the token-weighted mean next-token loss over a split, and its perplexity.

One function for the training loop's evaluations (train._evaluate: each rank its share of the rows, summed
across ranks there) and for `codex-train eval` (every row, in order), so the two give the same number for
the same model and rows. Each batch's loss comes from `loss_fn(model, batch)`, the mean over the batch's
label tokens that are not -100 (each predicted from the position before); it is weighted by that count, so
the result is the mean over every such token of the split, however the rows fall into batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import Split, collate, to_device

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
IGNORE_INDEX = -100  # a label that is not predicted (padding)
PERPLEXITY_CAP = 50.0  # exp(50) ≈ 5e21: the perplexity of a loss beyond it is shown as that, not as inf
# No key-value cache: besides costing memory for nothing, with one transformers builds its attention mask
# without reading document boundaries from position_ids, so packed documents would attend to each other
FORWARD_OPTIONS = {"use_cache": False}


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What a transformers model takes of a collated batch: all but document_segments (LanguageModelLoss's)."""
    return {k: v for k, v in batch.items() if k != "document_segments"}


def model_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The model's own loss: transformers' mean next-token cross-entropy over the labels that are not -100."""
    return model(**model_inputs(batch), **FORWARD_OPTIONS).loss


@dataclass
class EvalSums:
    """What eval_loss adds up; sums (not means), so several ranks or files combine by adding."""

    loss_sum: float = 0.0  # Σ over batches of (mean loss × label tokens)
    tokens: int = 0  # label tokens predicted
    sequences: int = 0
    batches: int = 0
    stopped: bool = False  # `stop` said so before the last batch: the sums are partial

    @property
    def loss(self) -> float | None:
        return self.loss_sum / self.tokens if self.tokens else None


def perplexity(loss: float) -> float:
    return math.exp(min(loss, PERPLEXITY_CAP))


def eval_loss(
    model: torch.nn.Module,
    split: Split,
    rows: np.ndarray,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    *,
    max_batches: int | None = None,
    loss_fn: LossFn = model_loss,
    autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
    stop: Callable[[], bool] = lambda: False,
) -> EvalSums:
    """The loss over `rows` of `split` (in that order, `batch_size` at a time, at most `max_batches`
    batches), with dropout off and no gradients; the model's train/eval mode is put back afterwards.
    `stop()` is asked before each batch: when true the evaluation ends there, marked `stopped`."""
    n_batches = math.ceil(len(rows) / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    sums = EvalSums(batches=n_batches)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # on the device: read once, at the end
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(n_batches):
                if stop():
                    sums.stopped = True
                    break
                picked = rows[b * batch_size : (b + 1) * batch_size]
                batch = collate(split, picked, pad_id)
                sums.sequences += len(picked)
                n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # counted on the host
                if n == 0:
                    continue
                with autocast():
                    loss = loss_fn(model, to_device(batch, device))
                loss_sum += loss.detach().double() * n
                sums.tokens += n
    finally:
        model.train(was_training)
    sums.loss_sum = float(loss_sum)
    return sums
