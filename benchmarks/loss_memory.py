"""Peak memory of one training step with a big vocabulary: transformers' own loss against codex-train's.

A Qwen2-shaped model built from config (no download) with Qwen2.5's 151,936-token vocabulary and a small
hidden size, LoRA on the attention and MLP projections, one sequence of --seq tokens (1,024). Each way runs
in a fresh process (so one's freed memory does not hide the other's peak) and reports the process's peak
resident memory during one forward + backward, above what it held just before (model, optimizer, batch):

  transformers   model(**batch).loss: the whole sequence's logits in fp32, then their gradient
                 (what the Hugging Face Trainer and TRL's SFTTrainer compute)
  codex          codex_trainer.loss.LanguageModelLoss: the head and the cross-entropy a chunk at a time

    python benchmarks/loss_memory.py [--seq 1024] [--hidden 128] [--head frozen|trained]

`--head trained` also trains the output layer (peft.modulesToSave: [lm_head]): codex then recomputes each
chunk's logits in the backward pass instead of making its gradients in the forward.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time

VOCAB = 151936


def step(way: str, seq: int, hidden: int, head: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from codex_trainer.loss import LanguageModelLoss

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max(seq, 1024),
        tie_word_embeddings=head == "frozen",
    )
    base = Qwen2ForCausalLM(config)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        modules_to_save=["lm_head"] if head == "trained" else None,
    )
    model = get_peft_model(base, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, VOCAB, (1, seq))
    batch = {"input_ids": ids, "labels": ids.clone()}
    net = LanguageModelLoss(model) if way == "codex" else None

    def one() -> float:
        loss = net(**batch) if net is not None else model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    one()  # the optimizer's state exists before the measured step
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the first step freed goes back: the baseline is what is held
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # Linux: the peak (VmHWM) starts again from now
        f.write("5")
    start = time.perf_counter()
    loss = one()
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    return {
        "way": way,
        "loss": loss,
        "held_before_mib": before,
        "step_peak_mib": peak,
        "step_extra_mib": peak - before,
        "seconds": seconds,
    }


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--head", choices=["frozen", "trained"], default="frozen")
    ap.add_argument("--one", choices=["transformers", "codex"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(step(args.one, args.seq, args.hidden, args.head)))
        return

    print(f"vocab={VOCAB} seq={args.seq} hidden={args.hidden} head={args.head} batch=1 (one process per way)")
    results = {}
    for way in ("transformers", "codex"):
        cmd = [sys.executable, __file__, "--one", way, "--seq", str(args.seq), "--hidden", str(args.hidden)]
        out = subprocess.run([*cmd, "--head", args.head], capture_output=True, text=True, check=True)
        results[way] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'way':<14} {'loss':>8} {'held before':>12} {'step peak':>10} {'step extra':>11} {'seconds':>8}")
    for way, r in results.items():
        print(
            f"{way:<14} {r['loss']:>8.4f} {r['held_before_mib']:>9.0f} MiB {r['step_peak_mib']:>6.0f} MiB "
            f"{r['step_extra_mib']:>7.0f} MiB {r['seconds']:>8.2f}"
        )
    a, b = results["transformers"], results["codex"]
    print(
        f"step extra: {a['step_extra_mib'] / b['step_extra_mib']:.1f}x lower; "
        f"process peak: {a['step_peak_mib'] / b['step_peak_mib']:.1f}x lower"
    )


if __name__ == "__main__":
    main()
