"""Attention over packed documents: one document at a time against the mask transformers builds, one layer's
forward and backward, side by side in one process.

A packed row holds several documents that must not attend to one another. Compared on the same inputs:

  mask      scaled_dot_product_attention with the block-diagonal causal mask that transformers builds from
            position ids (HF Trainer or TRL packing without flash-attention): every score of the row
  loop      codex's attention.DOCUMENTS: one causal sdpa call per document (rows with the same bounds
            together); what codex uses on a CPU (and with flash-attention)
  varlen    torch's variable-length flash attention (torch.nn.attention.varlen), every document a sequence
            of its own, in one call; GPU and half precision only; not used by codex (slower than the mask)
  causal    plain causal sdpa over whole rows, documents ignored: wrong (documents see each other), shown as
            the floor a dense kernel sets

Layouts: `stdlib` packs the standard library's .py files (bytes as tokens, as `--model-config 0.5b` trains
them) into rows of --seq; `short` packs documents of 30-600 tokens (chat or function-sized examples), the
loop's worst case. Shapes: Qwen2.5-0.5B's attention (14 query heads, 2 key/value heads, head_dim 64).

    python benchmarks/document_attention.py                # CPU: fp32, batch 2, loop/mask/causal
    python benchmarks/document_attention.py --batch 8      # GPU: bf16, all four

Prints, per layout, milliseconds per forward+backward (median of --repeat, after warm-up), the ratio to
`mask`, and each path's largest difference from an fp32 `loop` reference (output and gradients).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codex_trainer.attention import document_attention, layouts  # noqa: E402

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None
from trainer_throughput import stdlib_sources  # noqa: E402

HEADS, KV_HEADS, DIM = 14, 2, 64


def stdlib_lengths() -> list[int]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [n for n in (len(p.read_bytes()) for p in stdlib_sources(root)) if n]


def short_lengths(count: int, seed: int = 0) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(30, 600, count)]


def rows_of(lengths: list[int], seq: int, batch: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """The first `batch` rows of `seq` tokens of the documents laid end to end, as collate's
    document_segments: each row's documents (or pieces of them) as (start, end)."""
    rows: list[tuple[tuple[int, int], ...]] = []
    row: list[tuple[int, int]] = []
    used = 0
    for n in lengths:
        while n:
            take = min(n, seq - used)
            row.append((used, used + take))
            used, n = used + take, n - take
            if used == seq:
                rows.append(tuple(row))
                row, used = [], 0
                if len(rows) == batch:
                    return tuple(rows)
    raise ValueError("too few documents for the rows asked for")


def block_mask(segments: tuple[tuple[tuple[int, int], ...], ...], seq: int, device: torch.device) -> torch.Tensor:
    """(batch, 1, seq, seq) boolean: True where a position may attend (same document, not ahead)."""
    doc = torch.zeros(len(segments), seq, dtype=torch.long)
    for r, row in enumerate(segments):
        for i, (s, e) in enumerate(row):
            doc[r, s:e] = i
    same = doc[:, :, None] == doc[:, None, :]
    return (same & torch.ones(seq, seq, dtype=torch.bool).tril()).unsqueeze(1).to(device)


Segments = tuple[tuple[tuple[int, int], ...], ...]


def loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lay: Any) -> torch.Tensor:
    """attention.DOCUMENTS as a model's layer calls it, with the layouts a forward works out once."""
    return document_attention(torch.nn.Module(), q, k, v, None, document_layouts=lay)[0]


def varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Every document of the batch one sequence of varlen_attn's: (batch, heads, seq, dim) flattened to
    (batch × seq, heads, dim), causal within each; key/value heads repeated for a torch whose varlen_attn
    takes no enable_gqa."""
    batch, heads, seq, dim = q.shape
    bounds = [0] + [r * seq + e for r, row in enumerate(segments) for _, e in row]
    cumulative = torch.tensor(bounds, dtype=torch.int32).pin_memory().to(q.device, non_blocking=True)
    longest = max(e - s for row in segments for s, e in row)
    extra = {}
    if "enable_gqa" in inspect.signature(varlen_attn).parameters:
        extra["enable_gqa"] = True
    else:
        k, v = (x.repeat_interleave(heads // x.shape[1], dim=1) for x in (k, v))

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(batch * seq, t.shape[1], dim)

    out = varlen_attn(flat(q), flat(k), flat(v), cumulative, cumulative, longest, longest, window_size=(-1, 0), **extra)
    return out.reshape(batch, seq, heads, dim)


def paths(segments: Segments, mask: torch.Tensor, device: torch.device, dtype: torch.dtype) -> dict:
    lay = layouts(segments, device)
    out = {
        "mask": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
        "loop": lambda q, k, v: loop(q, k, v, lay),
        "causal": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
    }
    if varlen_attn is not None and device.type == "cuda" and dtype != torch.float32:
        out["varlen"] = lambda q, k, v: varlen(q, k, v, segments)
    return out


def as_rows(out: torch.Tensor, name: str) -> torch.Tensor:
    """Every path's output as (batch, seq, heads, dim)."""
    return out if name in ("loop", "varlen") else out.transpose(1, 2)


def timed(name: str, fn, inputs: list[tuple[torch.Tensor, ...]], repeat: int, device: torch.device) -> float:
    """Median ms of forward + backward, rotating among input sets (so a GPU's cache holds none of them)."""
    times = []
    for i in range(repeat + 3):
        q, k, v, g = inputs[i % len(inputs)]
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            as_rows(fn(q, k, v), name).backward(g)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            as_rows(fn(q, k, v), name).backward(g)
            ms = (time.perf_counter() - t0) * 1e3
        if i >= 3:
            times.append(ms)
    return statistics.median(times)


def inputs_for(batch: int, seq: int, dtype: torch.dtype, device: torch.device, seed: int):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_()

    q, k, v = t(batch, HEADS, seq, DIM), t(batch, KV_HEADS, seq, DIM), t(batch, KV_HEADS, seq, DIM)
    g = torch.randn(batch, seq, HEADS, DIM, generator=gen).to(device, dtype)
    return q, k, v, g


def check(name: str, fn, q, k, v, g, ref_out, ref_grads) -> float:
    """Largest |difference| / largest |reference| over the output and the three gradients."""
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = as_rows(fn(q2, k2, v2), name)
    out.backward(g)
    worst = 0.0
    for got, want in zip((out, q2.grad, k2.grad, v2.grad), (ref_out, *ref_grads), strict=True):
        err = (got.float() - want).abs().max() / want.abs().max()
        if not torch.isfinite(err):
            return float("nan")
        worst = max(worst, float(err.detach()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=None, help="rows (default 8 on a GPU, 2 on a CPU)")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 50 on a GPU, 5 on a CPU)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    batch = args.batch or (8 if cuda else 2)
    repeat = args.repeat or (50 if cuda else 5)
    print(
        f"device={torch.cuda.get_device_name() if cuda else 'cpu'} torch={torch.__version__} dtype={dtype} "
        f"batch={batch} seq={args.seq} heads={HEADS}/{KV_HEADS} dim={DIM}"
    )
    order = ("mask", "loop", "varlen", "causal")
    print(f"{'layout':<8} {'documents':>9} " + " ".join(f"{n + ' ms':>10} {'vs mask':>7} {'error':>8}" for n in order))
    stdlib = stdlib_lengths()
    for layout, lengths in (("stdlib", stdlib), ("short", short_lengths(batch * args.seq))):
        segments = rows_of(lengths, args.seq, batch)
        mask = block_mask(segments, args.seq, device)
        fns = paths(segments, mask, device, dtype)
        # the reference: the loop in fp32 on the same values
        q, k, v, g = inputs_for(batch, args.seq, dtype, device, 0)
        rq, rk, rv = (x.detach().float().clone().requires_grad_() for x in (q, k, v))
        ref_out = loop(rq, rk, rv, layouts(segments, device))
        ref_out.backward(g.float())
        ref = (ref_out.detach(), (rq.grad, rk.grad, rv.grad))
        sets = [inputs_for(batch, args.seq, dtype, device, s) for s in range(1, 5)]
        line = f"{layout:<8} {sum(len(r) for r in segments):>9} "
        base = None
        for name in order:
            if name not in fns:
                line += f"{'-':>10} {'-':>7} {'-':>8} "
                continue
            ms = timed(name, fns[name], sets, repeat, device)
            base = base or ms
            err = check(name, fns[name], q, k, v, g, *ref)
            line += f"{ms:>10.3f} {base / ms:>7.2f} {err:>8.1e} "
        print(line, flush=True)


if __name__ == "__main__":
    main()
