"""The causal-LM loss without the logits wall.

`model(**batch).loss` materialises the logits of every position (batch × sequence × vocabulary, in fp32 for
the loss): 1.2 GB per 2,048-token sequence for a 151,936-token vocabulary, then as much again for their
gradient. `LanguageModelLoss` runs the decoder, then the output layer and the cross-entropy a chunk of
positions at a time, so no more than one chunk's logits exist at once:

- a plain `nn.Linear` head (the usual case: frozen under LoRA, or trained, PEFT's `modules_to_save` copy
  included) goes through `_LinearCrossEntropy`, which computes each chunk's gradients in the forward pass
  (nothing to recompute);
- any other head (a LoRA'd head, several adapters at once) runs each chunk under activation
  checkpointing: its logits are recomputed, a chunk at a time, in the backward pass.

The loss is the mean over the label tokens that are not -100, predicted from the position before: the same
number as transformers' own (`ForCausalLMLoss`), and the same gradients. Models whose logits are more than
the head's output (soft-capped, scaled) or whose loss adds terms (MoE router losses) keep their own forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel
from peft.utils import ModulesToSaveWrapper
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import DOCUMENTS, layouts

IGNORE = -100
# fp32 logits held at once per chunk: on a CPU 64 MiB (110 positions of a 151,936-token vocabulary, 65,536 of
# a 256-token one); on a GPU 1 GiB (1,766 positions of that vocabulary), where small matrix products waste
# the tensor cores (the GPU size is not measured yet)
CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 2**30}
# config fields that change logits after the head, or the loss beyond cross-entropy: such models keep
# their own forward (when the field is set to something that acts)
_OWN_FORWARD_FIELDS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "lm_head_multiplier",
    "output_router_logits",
)
# models whose attention is more than causal within a document (a sliding window, soft-capped scores,
# chunked attention: _windowed) keep transformers' mask from the position ids; document_attention does not
# do those


class LanguageModelLoss(nn.Module):
    """`forward(**batch)` → the mean next-token loss, computed in chunks of positions; wraps the model (a
    transformers causal LM, or a PEFT model of one) so that distributed wrappers see one forward."""

    def __init__(self, model: nn.Module, chunk_bytes: int | None = None):
        super().__init__()
        self.model = model
        self.chunk_bytes = chunk_bytes
        causal: Any = model.get_base_model() if isinstance(model, PeftModel) else model
        self._config = causal.config
        self.compiled = False
        decoder = _decoder_of(causal)
        head = causal.get_output_embeddings() if decoder is not None else None
        # a tuple, not attributes: both are already the wrapped model's own submodules
        self._parts = (decoder, head) if decoder is not None and head is not None else None
        self.chunked = self._parts is not None and not _has_own_forward(causal.config)
        # per document only where attention is causal within it and goes through transformers' interface
        self.documents = bool(getattr(causal, "_supports_attention_backend", False)) and not _windowed(causal.config)

    def compile_model(self) -> None:
        """torch.compile the decoder in place (the whole model when it keeps its own forward): the weights,
        their names and the checkpoints stay as they are; the chunked head and loss stay eager."""
        (self._parts[0] if self.chunked and self._parts is not None else self.model).compile()
        self.compiled = True  # document attention's Python loop would recompile at every new layout

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        num_items: float | None = None,
        hits: list[torch.Tensor] | None = None,
        **inputs: Any,
    ) -> torch.Tensor:
        """The summed loss over `num_items` when given (the step's label tokens: gradient accumulation and
        several processes then weigh every token alike), else the mean over this batch's label tokens.

        A packed batch's `document_segments` make attention go one document at a time (attention.py).
        `hits` (evaluation, without gradients): gets the number of label tokens the model predicts exactly
        (argmax), counted a chunk at a time too."""
        if hits is not None and torch.is_grad_enabled():
            raise ValueError("hits are counted without gradients (under torch.no_grad)")
        segments = inputs.pop("document_segments", None)
        with self._documents(segments, input_ids.device) as extra:
            inputs |= extra
            if not self.chunked:
                out = self.model(input_ids=input_ids, labels=labels, use_cache=False, **inputs)
                loss = out.loss
                if hits is not None:
                    shifted = labels[:, 1:]
                    hits.append(((out.logits[:, :-1].argmax(-1) == shifted) & (shifted != IGNORE)).sum())
                if num_items is None:
                    return loss
                # the model's mean (and any term it adds, e.g. a router loss) weighed by this batch's share of
                # the step's label tokens: the same sum over num_items for the cross-entropy
                return loss * (labels[:, 1:] != IGNORE).sum() / num_items
            assert self._parts is not None
            decoder, head = self._parts
            hidden = decoder(input_ids=input_ids, use_cache=False, **inputs)[0]
        # position i predicts label i + 1. Every position goes through (no boolean selection: that would wait
        # for the device to say how many); those whose label is -100 add nothing
        targets = labels[:, 1:].reshape(-1)
        hidden = hidden[:, :-1].reshape(len(targets), -1)
        budget = self.chunk_bytes or CHUNK_BYTES.get(hidden.device.type, CHUNK_BYTES["cpu"])
        chunk = max(1, budget // (4 * _vocab(head)))
        linear = _linear_of(head)
        if linear is not None and torch.is_grad_enabled():
            total = _LinearCrossEntropy.apply(hidden, linear.weight, linear.bias, targets, chunk)
        else:
            parts = [
                checkpoint(_cross_entropy_sum, head, hidden[s : s + chunk], targets[s : s + chunk], use_reentrant=False)
                if torch.is_grad_enabled()
                else _cross_entropy_sum(head, hidden[s : s + chunk], targets[s : s + chunk], hits)
                for s in range(0, len(targets), chunk)
            ]
            total = torch.stack(parts).sum()
        if num_items is not None:
            return total / num_items
        # nothing to predict gives 0 (transformers' mean gives nan), and still reaches every trainable weight
        return total / (targets != IGNORE).sum().clamp(min=1)

    @contextmanager
    def _documents(self, segments: tuple | None, device: torch.device) -> Iterator[dict[str, Any]]:
        """The model's attention switched to attention.DOCUMENTS for one forward of a packed batch, where
        per_document() says so; otherwise the model gets transformers' block-diagonal mask from the position
        ids. Not under torch.compile, nor for models with windowed or soft-capped attention or their own
        attention code."""
        config = self._config
        before = config._attn_implementation
        if segments is None or self.compiled or not self.documents or not per_document(before, device):
            yield {}
            return
        config._attn_implementation = DOCUMENTS
        try:
            yield {"document_layouts": layouts(segments, device)}
        finally:
            config._attn_implementation = before


def per_document(attn_implementation: str | None, device: torch.device) -> bool:
    """Whether a packed batch's attention goes one document at a time (attention.DOCUMENTS) rather than through
    transformers' block-diagonal mask. On a CPU the loop is the faster (1.3-2.3x, fp32); on a GPU sdpa's fused
    kernel with the mask is (4.8x over the loop for the standard library's files, 16x for short documents:
    one layer of Qwen2.5-0.5B, bf16, 8 rows of 1,024, H200; `benchmarks/document_attention.py`). Flash-attention
    takes no mask, and in this transformers reads documents from position ids only in a batch of one row: it
    always goes by document."""
    return device.type == "cpu" or attn_implementation not in ("sdpa", "eager")


def _cross_entropy_sum(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, hits: list[torch.Tensor] | None = None
) -> torch.Tensor:
    logits = head(hidden).float()
    if hits is not None:
        hits.append(((logits.argmax(-1) == targets) & (targets != IGNORE)).sum())
    return nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T + bias, targets), rows whose target is -100 left out,
    chunk by chunk; the gradients of hidden, weight and bias are made in the forward pass, a chunk at a time,
    and scaled in the backward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        for s in range(0, len(targets), chunk):
            h, y = hidden[s : s + chunk], targets[s : s + chunk]
            counted = (y != IGNORE).float()
            y = y.clamp(min=0)
            logits = nn.functional.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, y[:, None]).squeeze(1)) * counted).sum()
            # d(sum of losses)/d(logits) = softmax - one-hot (0 for rows left out), made in place over the logits
            probs = logits.sub_(lse[:, None]).exp_().mul_(counted[:, None])
            probs[torch.arange(len(y), device=y.device), y] -= counted
            if grad_h is not None:
                grad_h[s : s + chunk] = (probs.to(weight.dtype) @ weight).to(h.dtype)
            if grad_w is not None:
                grad_w += probs.t() @ h.float()
            if grad_b is not None:
                grad_b += probs.sum(0)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (grad_h, grad_w, grad_b)))
        ctx.has = (need_h, need_w, need_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple:
        grads = []
        for g, has, dtype in zip(ctx.saved_tensors, ctx.has, ctx.dtypes, strict=True):
            grads.append((g * grad_total).to(dtype) if has else None)
        return (*grads, None, None)


def _linear_of(head: nn.Module) -> nn.Linear | None:
    """The plain linear layer that computes the head's output now: the head itself, or the active copy PEFT
    trains in its place (peft.modulesToSave); None for anything else (a LoRA'd head, several adapters)."""
    if isinstance(head, ModulesToSaveWrapper):
        active = head.active_adapters
        if head.disable_adapters or not active:
            head = head.original_module
        elif len(active) == 1 and active[0] in head.modules_to_save:
            head = head.modules_to_save[active[0]]
        else:
            return None
    return head if type(head) is nn.Linear else None


def _decoder_of(causal: nn.Module) -> nn.Module | None:
    get = getattr(causal, "get_decoder", None)
    try:
        decoder = get() if get is not None else None
    except (AttributeError, NotImplementedError):
        return None
    return decoder if isinstance(decoder, nn.Module) and decoder is not causal else None


def _configs(config: Any) -> list[Any]:
    """The model's config and its text model's, where it has one (multimodal configs)."""
    return [c for c in (config, getattr(config, "text_config", None)) if c is not None]


def _windowed(config: Any) -> bool:
    for c in _configs(config):
        window = getattr(c, "sliding_window", None) and getattr(c, "use_sliding_window", True) is not False
        if window or getattr(c, "attn_logit_softcapping", None) or getattr(c, "attention_chunk_size", None):
            return True
        if any("sliding" in str(t) or "chunked" in str(t) for t in getattr(c, "layer_types", None) or ()):
            return True
    return False


def _has_own_forward(config: Any) -> bool:
    return any(getattr(c, f, None) for c in _configs(config) for f in _OWN_FORWARD_FIELDS)


def _vocab(head: nn.Module) -> int:
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.shape[0]
    inner = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return inner[0].out_features if inner else 1
