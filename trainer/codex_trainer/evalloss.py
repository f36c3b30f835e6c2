"""The evaluation loss: the token-weighted mean next-token loss over a split, and its perplexity.

One function for the training loop's evaluations (train._evaluate: each rank its share of the rows, summed
across ranks there) and for `codex-train eval` (every row, in order), so the two give the same number for
the same model and rows. The model is a loss.LanguageModelLoss (the training loop's loss: packed documents
apart, a chunk of logits at a time); each batch's loss, the mean over its label tokens, is weighted by their
number (batches.label_tokens), so the result is the mean over every label token of the split, however the rows
fall into batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .batches import collate, label_tokens, to_device
from .data import Split

LossFn = Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]
PERPLEXITY_CAP = 50.0  # exp(50) ≈ 5e21: the perplexity of a loss beyond it is shown as that, not as inf


def _loss(net: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return net(**batch)  # LanguageModelLoss returns the loss itself


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
    loss_fn: LossFn = _loss,
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
                sums.sequences += len(picked)
                n = label_tokens(split, picked)  # counted from the data, on the host
                if n == 0:
                    continue
                batch = collate(split, picked, pad_id)
                with autocast():
                    loss = loss_fn(model, to_device(batch, device))
                loss_sum += loss.detach().double() * n
                sums.tokens += n
    finally:
        model.train(was_training)
    sums.loss_sum = float(loss_sum)
    return sums
