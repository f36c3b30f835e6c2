"""Where a GPU training step's time goes: the device busy, or the host launching kernels.

Builds the Qwen2-shaped ~0.5B model of trainer_throughput's `--model-config 0.5b` from config (bf16, LoRA on
the seven projections as the tiny-cpu example sets it, nothing trained in full), and trains it with our loss
(`LanguageModelLoss`: the decoder, then the chunked head and cross-entropy) and fused AdamW on random tokens
in rows of `--seq` (one causal block a row; or padded, or packed with several documents a row: --rows). For
each batch size: the step's wall time (mean of `--steps` after warm-up, the device synchronised once at the
end), then a profile of 3 steps giving the time the GPU spent in kernels and how many it ran a step. busy =
kernel time / wall time: far under 100% means the host, not the GPU, sets the pace.

    python benchmarks/gpu_step_profile.py                  # batch 8 and 32, eager, three ways to hold the adapters
    python benchmarks/gpu_step_profile.py --modes autocast --batches 8 --rows full,padded,packed
    python benchmarks/gpu_step_profile.py --compile --batches 8   # the decoder under torch.compile
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codex_trainer.loss import LanguageModelLoss  # noqa: E402
from codex_trainer.manifest import load_manifest  # noqa: E402
from codex_trainer.model import wrap_peft  # noqa: E402
from kernel_profile import print_summary, summary  # noqa: E402
from trainer_throughput import CONFIG_0_5B, TINY_CPU, lora_flops_per_token, matmul_params, peak_bf16_flops  # noqa: E402


def build(compile: bool, mode: str) -> tuple[LanguageModelLoss, torch.optim.Optimizer, float]:
    spec = load_manifest(TINY_CPU, ["peft.modulesToSave=[]"]).spec
    config = Qwen2Config(**{k: v for k, v in CONFIG_0_5B.items() if k != "model_type"})
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda()
    model = wrap_peft(base, spec.peft, base_name="")
    frozen, trained = matmul_params(model)
    if mode == "bf16":  # the adapters themselves in bf16 (PEFT keeps them in fp32)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    loss_model = LanguageModelLoss(model)
    if compile:
        loss_model.compile_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    return loss_model, opt, lora_flops_per_token(frozen, trained)


def step(loss_model: LanguageModelLoss, opt: torch.optim.Optimizer, batch: dict, autocast: bool) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_model(**batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def packed_positions(rows: int, seq: int) -> torch.Tensor:
    """Position ids of rows filled with documents of 30 to 1,499 tokens (a fixed draw), the last one cut at
    the row's end."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(rows):
        row: list[torch.Tensor] = []
        while sum(len(r) for r in row) < seq:
            row.append(torch.arange(int(torch.randint(30, 1500, (1,), generator=gen))))
        out.append(torch.cat(row)[:seq])
    return torch.stack(out)


def padding_mask(rows: int, seq: int) -> torch.Tensor:
    """An attention mask as padded rows have: every other row ends in a tenth of padding."""
    mask = torch.ones(rows, seq, dtype=torch.long)
    mask[1::2, seq - seq // 10 :] = 0
    return mask


def measure(batch_size: int, seq: int, steps: int, compile: bool, mode: str, rows: str) -> dict:
    loss_model, opt, flops = build(compile, mode)
    autocast = mode == "autocast"
    ids = torch.randint(0, CONFIG_0_5B["vocab_size"], (batch_size, seq), device="cuda")
    batch = {"input_ids": ids, "labels": ids.clone()}
    if rows == "packed":  # as our loop's packed rows reach a GPU model: position ids restarting at each document
        batch["position_ids"] = packed_positions(batch_size, seq).cuda()
    elif rows == "padded":  # as our loop's unpacked rows: a padding mask, its padding labelled -100
        mask = padding_mask(batch_size, seq).cuda()
        batch["attention_mask"] = mask
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    for _ in range(3 if not compile else 5):
        step(loss_model, opt, batch, autocast)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(loss_model, opt, batch, autocast)
    loss.item()
    wall = (time.perf_counter() - start) / steps
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step(loss_model, opt, batch, autocast)
        torch.cuda.synchronize()
    prof_summary = summary(prof, 3)
    peak = peak_bf16_flops(torch.cuda.get_device_name())
    tokens = batch_size * seq
    result = {
        "batch": batch_size,
        "wall_ms": wall * 1e3,
        "tokens_per_s": tokens / wall,
        "mfu": flops * tokens / wall / peak if peak else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    } | prof_summary
    del loss_model, opt
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument(
        "--modes",
        default=None,
        help="comma-separated (default autocast,fp32,bf16; with --compile autocast): autocast: fp32 adapters under "
        "bf16 autocast (our loop's, through Accelerate); fp32: fp32 adapters, no autocast (PEFT's default dtype); "
        "bf16: the adapters cast to bf16, no autocast",
    )
    ap.add_argument(
        "--rows",
        default="full",
        help="comma-separated: full (one causal block a row, no mask), padded (a padding mask, as our unpacked "
        "rows), packed (position ids restarting at each document, as our packed rows: transformers' mask)",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="the decoder under torch.compile (its first steps, which compile, left out; a minute or more cold)",
    )
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a GPU")
    modes = (args.modes or ("autocast" if args.compile else "autocast,fp32,bf16")).split(",")
    print(f"device={torch.cuda.get_device_name()} torch={torch.__version__} seq={args.seq}", flush=True)
    for rows, mode, b in ((r, m, int(x)) for r in args.rows.split(",") for m in modes for x in args.batches.split(",")):
        r = measure(b, args.seq, args.steps, args.compile, mode, rows)
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(
            f"{'compiled' if args.compile else 'eager'} {mode} {rows} rows, batch {b}: step {r['wall_ms']:.1f} ms, "
            f"kernels {r['kernel_ms']:.1f} ms (busy {r['kernel_ms'] / r['wall_ms']:.0%}), {r['kernels']:.0f} kernels "
            f"(and copies), {r['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, peak {r['peak_mem_gib']:.1f} GiB",
            flush=True,
        )
        print_summary(r)


if __name__ == "__main__":
    main()
