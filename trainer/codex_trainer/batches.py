"""Which rows each step trains on, and the model's inputs made of them: the run's length in steps from the
data, the seeded order of rows per epoch (a pure function of the step, so a resume sees the batches an
uninterrupted run would), collation of packed and padded rows, and the batch put on the device."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import Split, micro_batches_per_epoch
from .spec import TrainingSpec

if TYPE_CHECKING:
    import torch


def planned_steps(t: TrainingSpec, rows: int, world: int) -> int:
    """Optimizer steps of the run: maxSteps, else enough for `epochs` (1) passes over the rows, one at least."""
    per_epoch = micro_batches_per_epoch(rows, t.batch_size, world)
    return t.max_steps or max(1, math.ceil((t.epochs or 1.0) * per_epoch / t.gradient_accumulation))


def schedule_warnings(t: TrainingSpec, rows: int, world: int) -> list[str]:
    """What of the training settings the run cannot do as written (valid, but not what was asked), one line
    each: one step bigger than the epochs asked for, a warmup that never ends."""
    out = []
    steps = planned_steps(t, rows, world)
    per_step = t.batch_size * world * t.gradient_accumulation
    epochs = steps * per_step / rows if rows else 0.0
    if t.max_steps is None and epochs > 1.5 * (t.epochs or 1.0):
        out.append(
            f"one optimizer step takes batchSize × gradientAccumulation × processes = {per_step} sequences and the "
            f"training data makes {rows}: the run's {steps} optimizer step(s) cover {epochs:.2g} epochs, not "
            f"training.epochs {t.epochs or 1.0:g}; lower training.gradientAccumulation or "
            "batchSize, or add data"
        )
    if t.warmup_steps >= steps:
        peak = t.learning_rate * (steps - 1) / t.warmup_steps
        out.append(
            f"training.warmupSteps {t.warmup_steps} is not less than the run's {steps} steps: the rate never reaches "
            f"learningRate {t.learning_rate:g} (its last step trains at {peak:.3g}); lower warmupSteps"
        )
    return out


def micro_batch_rows(rows: int, per_rank: int, world: int, rank: int, seed: int, index: int) -> np.ndarray:
    """Rows for global micro-step `index` on `rank`: a fresh seeded shuffle every epoch.

    A pure function of its arguments, so a resumed run continues with exactly the batches an
    uninterrupted run would have seen, without replaying the data.
    """
    per_epoch = micro_batches_per_epoch(rows, per_rank, world)
    epoch, k = divmod(index, per_epoch)
    perm = _epoch_order(rows, seed, epoch)
    start = (k * world + rank) * per_rank
    return perm[start : start + per_rank]


def row_tokens(split: Split, rows: np.ndarray) -> int:
    """The tokens (not padding) in these rows: what a batch of them trains on, counted without the device."""
    return int((split.offsets[rows + 1] - split.offsets[rows]).sum())


def label_tokens(split: Split, rows: np.ndarray) -> int:
    """The tokens these rows' loss is over (what collate's labels leave in after the shift): each row's
    tokens but its first, and in packed rows, not a document's first token either."""
    begins, ends = split.offsets[rows], split.offsets[rows + 1]
    n = int(np.maximum(ends - begins - 1, 0).sum())
    if split.starts is not None:
        inside = np.searchsorted(split.starts, ends, side="left") - np.searchsorted(split.starts, begins, side="right")
        n -= int(inside.sum())
    return n


@functools.lru_cache(maxsize=2)
def _epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's shuffle, drawn once (a step asks for it once per rank and micro-batch); read-only."""
    perm = np.random.default_rng([seed, epoch]).permutation(rows)
    perm.flags.writeable = False
    return perm


def collate(split: Split, rows: np.ndarray, pad_id: int) -> dict[str, Any]:
    """The model's inputs for these rows.

    Packed rows (all one length): input_ids, position_ids that restart at 0 where a document starts, and
    labels with that first token masked (-100), so no token attends to or predicts across a document
    boundary; no attention_mask, so that transformers builds the block-diagonal causal mask from the
    position ids (sdpa, eager; flash-attention's varlen path on GPUs); and `document_segments`, each row's
    documents as (start, end) pairs of plain ints, for attention.document_attention (to_device keeps them
    on the host; a model called directly must be given the batch without them).
    Documents (truncated, varied lengths): input_ids / attention_mask / labels, right-padded to the longest."""
    import torch

    if split.starts is not None:
        return _collate_packed(split, rows)
    seqs = [split.row(int(i)) for i in rows]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = s
        mask[j, : len(s)] = 1
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    labels = ids_t.masked_fill(mask_t == 0, -100)
    return {"input_ids": ids_t, "attention_mask": mask_t, "labels": labels}


def document_positions(starts: np.ndarray, begin: int, end: int) -> np.ndarray:
    """Position ids of tokens[begin:end] of a packed split: the distance to the start of each one's document,
    counted from `begin` for a document that began in an earlier block."""
    idx = np.arange(begin, end, dtype=np.int64)
    doc_start = starts[np.searchsorted(starts, idx, side="right") - 1] if len(starts) else np.zeros_like(idx)
    return idx - np.maximum(doc_start, begin)


def _collate_packed(split: Split, rows: np.ndarray) -> dict[str, Any]:
    import torch

    assert split.starts is not None
    begins, ends = split.offsets[rows], split.offsets[rows + 1]
    ids = np.stack([split.tokens[b:e] for b, e in zip(begins, ends, strict=True)]).astype(np.int64)
    positions = np.stack([document_positions(split.starts, b, e) for b, e in zip(begins, ends, strict=True)])
    labels = np.where(positions == 0, -100, ids)
    width = ids.shape[1]
    segments = []
    for row in positions:
        starts = np.flatnonzero(row == 0).tolist()
        segments.append(tuple(zip(starts, [*starts[1:], width], strict=True)))
    return {
        "input_ids": torch.from_numpy(ids),
        "position_ids": torch.from_numpy(positions),
        "labels": torch.from_numpy(labels),
        "document_segments": tuple(segments),
    }


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on `device`; anything else (document_segments) stays as it is, on the host. To a
    GPU through pinned memory, without waiting for the copy."""
    import torch

    if device.type != "cuda":
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return {
        k: v.pin_memory().to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }
