"""Throughput: codex-train against the Hugging Face Trainer + PEFT, side by side in one process.

Same model (built from the tiny-cpu example's config, same seed), same data, same LoRA settings,
same per-device batch and step count. Reports non-padding tokens per second over the training
loop (first step start to last step end; no evaluation or checkpoint inside the window) for:

  hf-trainer         transformers.Trainer, examples truncated and padded per batch (its usual setup)
  codex (no packing) our loop, same truncation and padding: the loop against the loop
  codex (packing)    our loop as configured by default: sequences filled, no padding

    python benchmarks/trainer_throughput.py [--steps 100] [--example configs/examples/tiny-cpu.yaml]
    python benchmarks/trainer_throughput.py --model-config 0.5b --steps 20 --seq 1024   # on a GPU

Ratios above 1.0 mean codex-train is faster.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from codex_trainer.data import read_texts
from codex_trainer.manifest import load_manifest
from codex_trainer.model import wrap_peft
from codex_trainer.train import StopRequest, train

# A ~0.5B-parameter Qwen2-shaped model, built from config (no download), for GPU runs.
CONFIG_0_5B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}


def run_codex(manifest, packing: bool, steps: int, seq: int, out: Path) -> dict:
    spec = manifest.spec.model_copy(
        update={
            "data": manifest.spec.data.model_copy(update={"packing": packing, "max_seq_length": seq}),
            "training": manifest.spec.training.model_copy(update={"max_steps": steps, "epochs": None}),
            "eval": manifest.spec.eval.model_copy(update={"every_steps": None, "max_batches": 1}),
            "checkpoint": manifest.spec.checkpoint.model_copy(update={"every_steps": 10**9}),
            "tracking": manifest.spec.tracking.model_copy(
                update={"mlflow": manifest.spec.tracking.mlflow.model_copy(update={"enabled": False})}
            ),
        }
    )
    from codex_trainer.console import Console

    train(spec, manifest.metadata.name, out, StopRequest(), console=Console(enabled=False))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    window = rows[-1]["time"] - (rows[0]["time"] - rows[0]["step_seconds"])
    tokens = sum(r["tokens_per_second"] * r["step_seconds"] for r in rows)
    return {"tokens": tokens, "seconds": window}


def run_hf_trainer(manifest, steps: int, seq: int, out: Path) -> dict:
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    spec = manifest.spec
    from codex_trainer.tokenizer import load_tokenizer

    tok = load_tokenizer(spec.tokenizer_source)
    texts = read_texts(spec.data.train_files, spec.data.text_field, "spec.data.train")
    ids = tok(texts, add_special_tokens=False, truncation=True, max_length=seq - 1)["input_ids"]
    dataset = [{"input_ids": x + [tok.eos_token_id]} for x in ids]

    torch.manual_seed(spec.training.seed)
    base = AutoModelForCausalLM.from_pretrained(out.parent / "codex-packing" / "base-model")
    model = wrap_peft(base, spec.peft, base_name="")  # the same LoraConfig -> get_peft_model as ours
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    counted = {"tokens": 0}

    def collate(rows):
        batch = collator(rows)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    class Clock(TrainerCallback):
        start = end = None

        def on_step_begin(self, args, state, control, **kw):
            if self.start is None:
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.end = time.perf_counter()

    clock = Clock()
    t = spec.training
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        save_strategy="no",
        eval_strategy="no",
        logging_steps=steps,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[clock])
    trainer.train()
    return {"tokens": counted["tokens"], "seconds": clock.end - clock.start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", default="configs/examples/tiny-cpu.yaml")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seq", type=int, default=None, help="maxSeqLength (default: the example's)")
    ap.add_argument("--batch", type=int, default=None, help="batchSize (default: the example's)")
    ap.add_argument("--model-config", choices=["example", "0.5b"], default="example")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    overrides = []
    if args.batch:
        overrides.append(f"training.batchSize={args.batch}")
    if args.model_config == "0.5b":
        overrides += [f"model.config={json.dumps(CONFIG_0_5B)}", "peft.modulesToSave=[]", "tokenizer=bytes"]
    manifest = load_manifest(args.example, overrides)
    seq = args.seq or manifest.spec.data.max_seq_length
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"device={device} threads={torch.get_num_threads()} steps={args.steps} seq={seq} "
        f"batch={manifest.spec.training.batch_size} example={args.example} model={args.model_config}"
    )

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # codex (packing) goes first: it writes the base model the other two start from
        results["codex (packing)"] = run_codex(manifest, True, args.steps, seq, tmp / "codex-packing")
        results["hf-trainer"] = run_hf_trainer(manifest, args.steps, seq, tmp / "hf")
        no_pack = manifest.model_copy(deep=True)
        results["codex (no packing)"] = run_codex(no_pack, False, args.steps, seq, tmp / "codex-nopack")
        if args.model_config == "0.5b":
            n_params = sum(math.prod(v) for v in _param_shapes(tmp / "codex-packing" / "base-model").values())
        else:
            n_params = None

    hf_rate = results["hf-trainer"]["tokens"] / results["hf-trainer"]["seconds"]
    print(f"{'run':<20} {'tokens':>10} {'seconds':>8} {'tokens/s':>10} {'vs hf':>6}")
    for name in ("hf-trainer", "codex (no packing)", "codex (packing)"):
        r = results[name]
        rate = r["tokens"] / r["seconds"]
        r["tokens_per_second"] = rate
        r["ratio_vs_hf"] = rate / hf_rate
        line = f"{name:<20} {r['tokens']:>10.0f} {r['seconds']:>8.2f} {rate:>10.0f} {rate / hf_rate:>6.2f}"
        if n_params and device == "cuda":
            # MFU: 6·N·tokens/s against the H100/H200 dense bf16 peak (989 TFLOP/s)
            r["mfu"] = 6 * n_params * rate / 989e12
            line += f"  MFU {r['mfu']:.1%}"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _param_shapes(model_dir: Path) -> dict:
    from safetensors import safe_open

    shapes = {}
    for f in model_dir.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for k in st.keys():  # noqa: SIM118
                shapes[k] = st.get_slice(k).get_shape()
    return shapes


if __name__ == "__main__":
    main()
