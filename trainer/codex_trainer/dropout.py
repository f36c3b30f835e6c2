"""LoRA's input dropout, cheaper on a CPU.

PEFT drops each adapted projection's input with `nn.Dropout`: on a CPU its mask costs one random draw of the
global generator per element (`bernoulli_`), about a fifth of a training step of the tiny example
(benchmarks/README.md). `CheapDropout` draws 32 random bits once for two elements and keeps an element when its
15 bits fall under round((1 - p) · 32768): the same Bernoulli mask, with the keep probability rounded to 1/32,768
(0.95 for p = 0.05 becomes 31,130/32,768 = 0.950012) and the kept values scaled by its exact inverse, so the
expected value is kept exactly. It uses the global generator, so a step's masks depend on the seed alone, as
before. Elsewhere than on a CPU (a GPU's dropout kernel draws its own bits, fast), and where the rounding would
move p by more than 1% of it (p under about 0.0008, or as near 1), it is `nn.functional.dropout`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

LEVELS = 1 << 15  # a 32-bit draw of torch's CPU generator has 31 random bits: two 15-bit halves and one spare


class CheapDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.keep = round((1.0 - p) * LEVELS)  # kept where the 15-bit draw is below this
        # the probability rounded to 1/LEVELS is p's own to within 1% (and 0 < keep < LEVELS)
        self.cheap = 0 < self.keep < LEVELS and abs((1.0 - self.keep / LEVELS) - p) <= 0.01 * p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or not self.cheap:
            return nn.functional.dropout(x, self.p, training=True)
        return _Masked.apply(x, keep_mask(x.shape, self.keep), LEVELS / self.keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def keep_mask(shape: torch.Size, keep: int) -> torch.Tensor:
    """A boolean mask of `shape`, each element True with probability keep / LEVELS, independently: the two
    16-bit halves of int32 draws, the upper one's top bit (always 0) masked off from both."""
    n = shape.numel()
    bits = torch.empty((n + 1) // 2, dtype=torch.int32).random_().view(torch.int16)[:n]
    return (bits.bitwise_and_(LEVELS - 1) < keep).view(shape)  # the draws are ours: masked in place


class _Masked(torch.autograd.Function):
    """x · mask · scale, keeping only the boolean mask (a byte an element) for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return (x * mask).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return (grad * mask).mul_(ctx.scale), None, None


def cheapen_lora_dropout(model: nn.Module) -> int:
    """Replace every LoRA layer's `nn.Dropout` (PEFT's `lora_dropout[adapter]`) by CheapDropout of the same p;
    the number replaced. Dropout holds no weights: the saved adapters do not change."""
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if type(drop) is nn.Dropout:
                drops[name] = CheapDropout(drop.p)
                replaced += 1
    return replaced
