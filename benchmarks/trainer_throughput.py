"""Throughput: codex-train against the Hugging Face Trainer and TRL's SFTTrainer, side by side in one process.

Same model (built from the tiny-cpu example's config, same initial weights), same data, same LoRA model
(codex_trainer.model.wrap_peft for all), seed, per-device batch, sequence length, step count and optimizer
settings (AdamW, learning rate, schedule, warmup, clipping). Reports non-padding tokens per second over the
training loop (second step start to last step end: each run trains one step more, and its first step, which
loads kernels and sets the device up, is left out; no evaluation or checkpoint inside the window) for:

  hf-trainer         transformers.Trainer, examples truncated and padded per batch (its usual setup)
  trl-sft            trl.SFTTrainer, packing=True (best-fit decreasing) with padding_free=True (position ids)
  codex (no packing) our loop, same truncation and padding: the loop against the loop
  codex (packing)    our loop as configured by default: sequences filled, no padding

With no arguments the setting is realistic: sequence 1,024 and documents of varied length, the standard
library's own .py files (a fixed, sorted selection). --example runs a job file's own data and settings
(the small setting: configs/examples/tiny-cpu.yaml, sequence 128).

    python benchmarks/trainer_throughput.py                                   # ~5 min on 2 CPU cores
    python benchmarks/trainer_throughput.py --example configs/examples/tiny-cpu.yaml --steps 100
    python benchmarks/trainer_throughput.py --model-config 0.5b --steps 30 --batch 8   # on a GPU

Ratios above 1.0 mean faster than hf-trainer. On a GPU whose dense bf16 peak is known it also prints MFU.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from codex_trainer.console import Console
from codex_trainer.data import read_texts
from codex_trainer.manifest import load_manifest
from codex_trainer.model import wrap_peft
from codex_trainer.spec import JobSpec, Manifest
from codex_trainer.tokenizer import load_tokenizer
from codex_trainer.train import StopRequest, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_profile import print_summary, summary  # noqa: E402

TINY_CPU = "configs/examples/tiny-cpu.yaml"
REALISTIC = {"seq": 1024, "steps": 10, "batch": 8}  # 3-5 minutes for the four runs on 2 CPU cores

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

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' datasheets; the longest matching name
# wins (so "H100 PCIe" before "H100", "L40S" before "L40" and "L4").
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,  # SXM
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 125e12,
    "A10": 125e12,
}

RUNS = ("hf-trainer", "trl-sft", "codex (no packing)", "codex (packing)", "codex (compile)")
# codex (compile): packing with training.compile; only on request (--runs), as compiling takes a minute here.
DEFAULT_RUNS = RUNS[:4]
# Every run's window leaves out its first WARMUP steps (at least 1: the Trainers' clock starts at its end): a
# first step loads kernels and sets libraries up (0.2 to 0.5 s a run on the H200, benchmarks/README.md); with
# torch.compile the first COMPILE_WARMUP steps, which compile (reported apart).
WARMUP = 1
COMPILE_WARMUP = 2
# --profile: optimizer steps profiled a run (our loop's runs only)
PROFILE_STEPS = 3


# ---------------------------------------------------------------- the corpus


def stdlib_sources(root: Path) -> list[Path]:
    """The standard library's own .py files under `root`, sorted by relative path: the same list on every
    machine with the same Python version. Tests, idlelib's GUI and third-party site-packages are left out."""
    skip = {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "__pycache__"}
    found = [p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def write_stdlib_corpus(dest: Path) -> tuple[Path, int, int]:
    """dest/stdlib.jsonl, one {"text": ...} per file; (the file, documents, bytes)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_sources(root)]
    texts = [t for t in texts if t.strip()]
    out = dest / "stdlib.jsonl"
    out.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return out, len(texts), sum(len(t.encode()) for t in texts)


# ---------------------------------------------------------------- FLOPs and the peak


def lora_flops_per_token(frozen: int, trained: int, layers: int = 0, width: int = 0, context: float = 0) -> float:
    """Training FLOPs per token of a model whose matmul weights are `frozen` (no weight gradients) or `trained`.

    A frozen weight costs 2 FLOPs a parameter forward and 2 backward (the activations' gradient only): 4·N.
    A trained one (LoRA's A and B, a modulesToSave linear) also gets its weight gradient: 6·N. Embedding
    lookups are not matmuls and count nothing; a tied output head is a matmul and is counted once, in `frozen`
    or `trained`. Attention's own matmuls (QKᵀ and AV, no weights) are added when `layers` is given: 4·width·
    context forward per layer, twice that backward, where width is heads × head_dim and context is the mean
    number of positions a token attends to ((seq + 1) / 2 for one causal block of seq)."""
    return 4.0 * frozen + 6.0 * trained + 12.0 * layers * width * context


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """(frozen, trained) weights of the linear layers a forward pass multiplies by. The original module that a
    PEFT modulesToSave wrapper keeps beside its trained copy is not used in the forward and is left out."""
    frozen = trained = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or ".original_module" in f".{name}":
            continue
        if module.weight.requires_grad:
            trained += module.weight.numel()
        else:
            frozen += module.weight.numel()
    return frozen, trained


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its torch.cuda.get_device_name(); None for one not in PEAK_BF16."""
    matches = [k for k in PEAK_BF16 if k.lower() in device_name.lower()]
    return PEAK_BF16[max(matches, key=len)] if matches else None


# ---------------------------------------------------------------- the runs


def bench_spec(manifest: Manifest, packing: bool, steps: int, seq: int, compile: bool = False) -> JobSpec:
    """The job as benchmarked: fixed steps, no evaluation, no checkpoint before the end, no MLflow."""
    s = manifest.spec
    return s.model_copy(
        update={
            "data": s.data.model_copy(update={"packing": packing, "max_seq_length": seq}),
            "training": s.training.model_copy(update={"max_steps": steps, "epochs": None, "compile": compile}),
            "eval": s.eval.model_copy(update={"every_steps": None, "max_batches": 1}),
            "checkpoint": s.checkpoint.model_copy(update={"every_steps": 10**9}),
            "tracking": s.tracking.model_copy(
                update={"mlflow": s.tracking.mlflow.model_copy(update={"enabled": False})}
            ),
        }
    )


def run_codex(
    manifest: Manifest, packing: bool, steps: int, seq: int, out: Path, compile: bool = False, profile: bool = False
) -> dict:
    warm = COMPILE_WARMUP if compile else WARMUP
    spec = bench_spec(manifest, packing, steps + warm, seq, compile)
    with _profiled(profile, warm, steps) as prof:
        train(spec, manifest.metadata.name, out, StopRequest(), console=Console(enabled=False))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    warmup, rows = rows[:warm], rows[warm:]
    window = rows[-1]["time"] - (rows[0]["time"] - rows[0]["step_seconds"])
    tokens = sum(r["tokens_per_second"] * r["step_seconds"] for r in rows)  # each step's non-padding tokens
    result = {"tokens": round(tokens), "seconds": window, "steps": len(rows), "loss": rows[-1]["loss"]}
    if compile:
        result["compile_warmup_seconds"] = sum(r["step_seconds"] for r in warmup)
    if prof is not None:
        active = min(PROFILE_STEPS, steps - 1)
        # the profiled steps: the ones after the warm-up and one more (the profiler's own warm-up)
        profiled = rows[1 : 1 + active]
        result["profile"] = summary(prof, active) | {"step_ms": 1e3 * sum(r["step_seconds"] for r in profiled) / active}
    return result


@contextmanager
def _profiled(on: bool, skip: int, steps: int) -> Iterator[Any]:
    """torch.profiler over PROFILE_STEPS optimizer steps of a run (after its first `skip` and one more), stepped
    by a hook on every optimizer's step; None when off."""
    if not on:
        yield None
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile, schedule

    active = min(PROFILE_STEPS, steps - 1)
    if active < 1:
        raise SystemExit("--profile needs --steps 2 or more")
    with profile(
        activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * torch.cuda.is_available(),
        schedule=schedule(wait=skip, warmup=1, active=active, repeat=1),
    ) as prof:
        hook = register_optimizer_step_post_hook(lambda *_: prof.step())
        try:
            yield prof
        finally:
            hook.remove()


def base_dtype(spec: JobSpec) -> torch.dtype | None:
    """The base model's dtype as our loop loads it: bf16 for a frozen LoRA base under bf16, else as saved."""
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and spec.training.precision in ("auto", "bf16")
    return torch.bfloat16 if bf16 and spec.peft.method == "lora" and not spec.peft.modules_to_save else None


def peft_model(spec: JobSpec, base_dir: Path) -> PreTrainedModel | PeftModel:
    """The same base weights and the same LoraConfig -> get_peft_model as our loop's, for the other trainers."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.training.seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=base_dtype(spec))
    return wrap_peft(base, spec.peft, base_name="")


def count_tokens(model: torch.nn.Module) -> dict:
    """A counter of the non-padding tokens every forward pass of `model` is given: the attention mask's ones,
    or, without a mask (padding-free batches), every input id."""
    counted = {"tokens": 0}

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        counted["tokens"] += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return counted


def _clock(counted: dict) -> Any:
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """From the end of step WARMUP to the end of the last, as our loop's window; the tokens counted from
        there on."""

        start: float | None = None
        end: float | None = None

        def on_step_end(self, args, state, control, **kw):
            self.end = time.perf_counter()
            if state.global_step == WARMUP:
                self.start = self.end
                counted["tokens"] = 0

    return Clock()


def _common_args(spec: JobSpec, steps: int, out: Path) -> dict[str, Any]:
    """TrainingArguments shared by the Trainer and SFTTrainer: our optimizer (torch.optim.AdamW), schedule,
    clipping, seed and precision; no saving, evaluation, reporting or progress bars."""
    t = spec.training
    cuda = torch.cuda.is_available()
    return {
        "output_dir": str(out),
        "max_steps": steps,
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
        "optim": "adamw_torch",
        "lr_scheduler_type": t.scheduler,
        "warmup_steps": t.warmup_steps,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "bf16": cuda and torch.cuda.is_bf16_supported() and t.precision in ("auto", "bf16"),
        "fp16": False,
        "gradient_checkpointing": False,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": steps,
        "report_to": [],
        "dataloader_num_workers": 0,
        "use_cpu": not cuda,
        "disable_tqdm": True,
    }


def run_hf_trainer(manifest: Manifest, steps: int, seq: int, out: Path, base_dir: Path) -> dict:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    spec = manifest.spec
    tok = load_tokenizer(spec.tokenizer_source)
    texts = read_texts(spec.data.train_files, spec.data.text_field, "spec.data.train")
    ids = tok(texts, add_special_tokens=False, truncation=True, max_length=seq - 1)["input_ids"]
    dataset = [{"input_ids": x + [tok.eos_token_id]} for x in ids]

    model = peft_model(spec, base_dir)
    counted = count_tokens(model)
    clock = _clock(counted)
    args = TrainingArguments(**_common_args(spec, steps + WARMUP, out))
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[clock])
    return _train_hf(trainer, clock, counted)


def run_trl_sft(manifest: Manifest, steps: int, seq: int, out: Path, base_dir: Path) -> dict:
    """TRL's SFTTrainer as its docs recommend for throughput: packing (best-fit decreasing, which truncates a
    document longer than a sequence) with padding-free batches (the batch's sequences flattened into one row,
    position ids restarting per document, no attention mask)."""
    import datasets  # type: ignore[import-untyped]
    from trl import SFTConfig, SFTTrainer

    spec = manifest.spec
    tok = load_tokenizer(spec.tokenizer_source)
    texts = read_texts(spec.data.train_files, spec.data.text_field, "spec.data.train")
    dataset = datasets.Dataset.from_dict({"text": texts})

    model = peft_model(spec, base_dir)
    counted = count_tokens(model)
    clock = _clock(counted)
    args = SFTConfig(
        **_common_args(spec, steps + WARMUP, out),
        max_length=seq,
        packing=True,
        padding_free=True,
        pad_to_multiple_of=None,
        dataset_text_field="text",
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, callbacks=[clock])
    return _train_hf(trainer, clock, counted)


def _train_hf(trainer: Any, clock: Any, counted: dict) -> dict:
    """Train with a Trainer (or a subclass) without its printed log lines; the run's figures."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    seconds = clock.end - clock.start
    return {
        "tokens": counted["tokens"],
        "seconds": seconds,
        "steps": trainer.state.global_step - WARMUP,
        "loss": result.training_loss,
    }


def _quiet() -> None:
    """No progress bars or advice from transformers, datasets and TRL between the table's lines."""
    from transformers.utils import logging as hf_logging

    try:  # TRL's; a machine without it runs the other trainers
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in ("trl", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", help="a job file whose own data and settings to run (default: the realistic setting)")
    ap.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {REALISTIC['steps']}, 100)")
    ap.add_argument("--seq", type=int, default=None, help="maxSeqLength (default 1024, or the example's)")
    ap.add_argument("--batch", type=int, default=None, help="batchSize (default 8, or the example's)")
    ap.add_argument("--model-config", choices=["example", "0.5b"], default="example")
    ap.add_argument(
        "--runs",
        default=",".join(DEFAULT_RUNS),
        help=f"which of {', '.join(RUNS)}, comma-separated (hf-trainer always; default all but compile)",
    )
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument(
        "--profile",
        action="store_true",
        help=f"profile {PROFILE_STEPS} steps of each of our loop's runs (torch.profiler, GPU kernels and host "
        "operators) and print where their time went",
    )
    args = ap.parse_args()
    _quiet()

    realistic = args.example is None
    steps = args.steps or (REALISTIC["steps"] if realistic else 100)
    batch = args.batch or (REALISTIC["batch"] if realistic else None)
    wanted = {r.strip() for r in args.runs.split(",")} | {"hf-trainer"}
    unknown = wanted - set(RUNS)
    if unknown:
        ap.error(f"unknown runs {sorted(unknown)}; choose from {', '.join(RUNS)}")

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # validationFraction 0: every trainer sees the same texts
        overrides = ["data.validationFraction=0"]
        if realistic:
            corpus, docs, size = write_stdlib_corpus(tmp)
            seq = args.seq or REALISTIC["seq"]
            overrides += [f"data.train=[{corpus}]", f"data.maxSeqLength={seq}"]
            if args.model_config == "example":
                overrides.append(f"model.config.max_position_embeddings={max(seq, 1024)}")
            data_note = f"stdlib .py files: {docs} documents, {size / 1e6:.1f} MB"
        if batch:
            overrides.append(f"training.batchSize={batch}")
        if args.model_config == "0.5b":
            overrides += [f"model.config={json.dumps(CONFIG_0_5B)}", "peft.modulesToSave=[]", "tokenizer=bytes"]
        manifest = load_manifest(args.example or TINY_CPU, overrides)
        if not realistic:
            seq = args.seq or manifest.spec.data.max_seq_length
            data_note = ", ".join(manifest.spec.data.train_files)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        print(
            f"device={device_name} threads={torch.get_num_threads()} steps={steps} seq={seq} "
            f"batch={manifest.spec.training.batch_size} model={args.model_config} data={data_note}",
            flush=True,
        )

        base_dir = tmp / "codex-packing" / "base-model"
        # codex (packing) goes first: it writes the base model the others start from
        runs = {
            "codex (packing)": lambda: run_codex(
                manifest, True, steps, seq, tmp / "codex-packing", profile=args.profile
            ),
            "hf-trainer": lambda: run_hf_trainer(manifest, steps, seq, tmp / "hf", base_dir),
            "trl-sft": lambda: run_trl_sft(manifest, steps, seq, tmp / "trl", base_dir),
            "codex (no packing)": lambda: run_codex(
                manifest, False, steps, seq, tmp / "codex-nopack", profile=args.profile
            ),
            "codex (compile)": lambda: run_codex(manifest, True, steps, seq, tmp / "codex-compile", compile=True),
        }
        for name, run in runs.items():
            if name in wanted or name == "codex (packing)":
                results[name] = run()
                r = results[name]
                # each run's line as it ends, so that a run cut short still leaves the ones before it
                print(f"  {name}: {r['tokens']} tokens in {r['seconds']:.2f} s", file=sys.stderr, flush=True)
        if "codex (packing)" not in wanted:
            del results["codex (packing)"]
        frozen, trained = matmul_params(peft_model(manifest.spec, base_dir))

    flops = lora_flops_per_token(frozen, trained)
    peak = peak_bf16_flops(device_name) if device == "cuda" else None
    print(
        f"model FLOPs per token {flops / 1e6:.2f} M = 4 x {frozen:,} frozen + 6 x {trained:,} trained matmul weights "
        "(attention's QK and AV left out)"
    )
    print_table(results, flops, peak, device, device_name)
    for name, r in results.items():
        if "profile" in r:
            p = r["profile"]
            print(
                f"{name}, profiled: step {p['step_ms']:.1f} ms (under the profiler), kernels {p['kernel_ms']:.1f} ms, "
                f"{p['kernels']:.0f} kernels (and copies) a step"
            )
            print_summary(p)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "seq": seq, "runs": results}, indent=2))


def print_table(results: dict[str, dict], flops: float, peak: float | None, device: str, device_name: str) -> None:
    """One line a run, against hf-trainer; each result gains its tokens/s, ratio and MFU."""
    hf_rate = results["hf-trainer"]["tokens"] / results["hf-trainer"]["seconds"]
    print(
        f"{'run':<20} {'steps':>5} {'tokens':>10} {'seconds':>8} {'tokens/s':>10} {'vs hf':>6}" + ("  MFU" * bool(peak))
    )
    for name in (r for r in RUNS if r in results):
        r = results[name]
        rate = r["tokens"] / r["seconds"]
        r |= {"tokens_per_second": rate, "ratio_vs_hf": rate / hf_rate, "flops_per_token": flops}
        line = f"{name:<20} {r['steps']:>5} {r['tokens']:>10} {r['seconds']:>8.2f} {rate:>10.0f} {rate / hf_rate:>6.2f}"
        if peak:
            r["mfu"] = flops * rate / peak
            line += f"  {r['mfu']:.1%}"
        if "compile_warmup_seconds" in r:
            line += f"  (after {COMPILE_WARMUP} steps taking {r['compile_warmup_seconds']:.1f} s to compile)"
        print(line)
    if device == "cuda" and not peak:
        print(f"no MFU: the dense bf16 peak of '{device_name}' is not in PEAK_BF16")


if __name__ == "__main__":
    main()
