"""Attention over packed documents, one document at a time.

A packed row holds several documents that must not attend to one another. Given only position ids,
transformers builds a block-diagonal mask over the whole row and `sdpa` computes every score of the row,
masked ones included: twice the work of a causal row, and no fast causal kernel. Here each document is its
own causal attention (`scaled_dot_product_attention(is_causal=True)` on its slice of the row), with the
documents' bounds computed on the host from the data (`document_segments`, made by batches.collate), so the
device is never asked where they are. Rows with the same bounds go through together.

On a CPU that is faster than the mask; on a GPU it is slower (many small launches against one fused kernel),
and loss.per_document() keeps the mask there, except for flash-attention, which takes none
(`benchmarks/document_attention.py` has the figures).

Registered with transformers' attention interface as DOCUMENTS; loss.LanguageModelLoss switches a model to
it for a forward that has `document_segments`, and back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from transformers import AttentionInterface, AttentionMaskInterface

DOCUMENTS = "codex_documents"

Segments = tuple[tuple[int, int], ...]  # (start, end) of each document in a row, covering it
# rows with the same documents' bounds: the bounds, the rows as a slice or an index on the device, and as ints
Layouts = tuple[tuple[Segments, slice | torch.Tensor, tuple[int, ...]], ...]


def layouts(document_segments: tuple[Segments, ...], device: torch.device) -> Layouts:
    """Rows grouped by their documents' bounds, once per forward (not once per layer): an index tensor is put
    on the device from pinned memory without waiting for it."""
    groups: dict[Segments, list[int]] = {}
    for row, segments in enumerate(document_segments):
        groups.setdefault(segments, []).append(row)
    out: list[tuple[Segments, slice | torch.Tensor, tuple[int, ...]]] = []
    for segments, rows in groups.items():
        if rows == list(range(rows[0], rows[-1] + 1)):
            out.append((segments, slice(rows[0], rows[-1] + 1), tuple(rows)))
            continue
        index = torch.tensor(rows)
        if device.type == "cuda":
            index = index.pin_memory().to(device, non_blocking=True)
        out.append((segments, index, tuple(rows)))
    return tuple(out)


def document_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    document_layouts: Layouts | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (batch, heads, seq, dim), key and value (batch, kv heads, seq, dim) → (batch, seq, heads, dim)."""
    if document_layouts is None:
        raise ValueError(f"the {DOCUMENTS} attention needs document_layouts (layouts() of collate's segments)")
    for name in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise ValueError(f"the {DOCUMENTS} attention does not do {name}; the model must keep its own mask")
    gqa = query.shape[1] != key.shape[1]
    rows_out: list[torch.Tensor | None] = [None] * query.shape[0]
    for segments, pick, rows in document_layouts:
        q, k, v = query[pick], key[pick], value[pick]
        parts = [
            F.scaled_dot_product_attention(
                q[:, :, s:e],
                k[:, :, s:e],
                v[:, :, s:e],
                is_causal=True,
                scale=scaling,
                dropout_p=dropout,
                enable_gqa=gqa,
            )
            for s, e in segments
        ]
        out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        for i, row in enumerate(rows):
            rows_out[row] = out[i : i + 1]
    return torch.cat(rows_out, dim=0).transpose(1, 2).contiguous(), None  # type: ignore[arg-type]


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The documents' bounds are the mask: transformers need not build one."""
    return None


AttentionInterface.register(DOCUMENTS, document_attention)
AttentionMaskInterface.register(DOCUMENTS, _no_mask)
