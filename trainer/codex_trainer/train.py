"""The training loop: one function, read top to bottom.

set up → load data and model → resume from the newest complete checkpoint → for each step:
reseed, micro-steps with gradient accumulation, clip, optimizer and schedule step, log,
evaluate, checkpoint, stop if asked → final evaluation, checkpoint and adapter.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler
from transformers.utils import logging as hf_logging

from . import checkpoint, evalloss
from .batches import collate, label_tokens, micro_batch_rows, planned_steps, row_tokens, schedule_warnings, to_device
from .check import compiler_problem
from .console import Console
from .contract import CHECKPOINTS_DIR, EXIT_OK, SIGNAL_EXIT_BASE
from .data import (
    Split,
    check_sequences,
    counted,
    load_dataset,
    micro_batches_per_epoch,
    no_validation_reason,
    truncation_warning,
)
from .dropout import cheapen_lora_dropout
from .errors import SpecError
from .fields import HF_SOURCE
from .launch import check_data_files
from .loss import LanguageModelLoss
from .metrics import Prometheus, Sink
from .mlflow_sink import start_mlflow
from .model import (
    BASE_MODEL_DIR,
    BASE_RECORD,
    adapter_base_reference,
    check_positions,
    load_base_model,
    load_trainable_state,
    not_a_runs_base,
    trainable_state,
    wrap_peft,
)
from .modeldigest import model_digests
from .outdir import output_lock, prepare_output_dir
from .plugins import check_callbacks, load_callbacks
from .result import result_step, write_final
from .runinfo import (
    SEED_SCHEME,
    check_same_job,
    legacy_identity,
    resume_identity,
    saved_commit,
    saved_digest,
    saved_model_files,
    saved_tokens,
    training_changes,
    write_run_json,
)
from .sources import at_commit, branch_commit, hub_commit, tokenizer_at
from .spec import JobSpec
from .tokenizer import load_tokenizer, tokenizer_fingerprint
from .wandb_sink import check_credentials, start_wandb


@dataclass
class StopRequest:
    """Set by a signal handler; the loop finishes its step, checkpoints and exits with 128 + signum."""

    signum: int | None = None


def train(
    spec: JobSpec,
    name: str,
    out: Path,
    stop: StopRequest,
    metrics_port: int | None = None,
    console: Console | None = None,
) -> int:
    """Check the output directory, take its lock and the metrics port (before loading anything), then train."""
    hf_logging.disable_progress_bar()  # our own progress is enough; weight-loading bars are noise in pod logs
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    # cpu=True when there is no GPU: that is what makes accelerate set up gloo for several CPU processes
    precision = _mixed_precision(spec.training.precision)
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    is_main = accelerator.is_main_process
    console = console or Console(enabled=is_main)
    console.enabled = console.enabled and is_main
    console.on_closed = partial(_output_closed, stop)
    check_callbacks(spec.callbacks)  # on every rank: an unknown name stops them all alike (exit 2)
    check_credentials(spec.tracking.wandb)  # online W&B without a key: exit 2 before anything loads
    check_data_files(spec)  # a missing data file: exit 2, before a Hub that cannot be reached says exit 1
    if spec.training.compile:  # no compiler: exit 2 before anything loads or is written
        _check_compiler(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if is_main:
        prepare_output_dir(out)
    accelerator.wait_for_everyone()
    with output_lock(out, enabled=is_main):
        callbacks = load_callbacks(spec.callbacks, partial(_warn, console)) if is_main else None
        sink = Sink(is_main, console, _start_prometheus(metrics_port, spec, name) if is_main else None, callbacks)
        status = "FAILED"
        try:
            code = _train(spec, name, out, stop, accelerator, sink)
            status = "FINISHED" if code == EXIT_OK else "KILLED"
            return code
        finally:
            sink.close(status)


def _one_commit(source: str, rank: int) -> str | None:
    """A fresh start of several processes on a Hub branch: the commit every rank loads the model and its tokenizer
    at, rank 0's. Each node resolves the branch in its own cache (or downloads it), and a push between them
    gave the ranks other weights or tokens under one adapter."""
    own = branch_commit(source)
    agreed = broadcast_object_list([own])[0]
    if own and agreed and own != agreed:  # not rank 0's: said on this rank's own stderr
        said = f"rank {rank} finds {source} at commit {own}, rank 0 at {agreed}: every rank loads {agreed}"
        print(f"codex-train: warning: {said}", file=sys.stderr, flush=True)
    return agreed


def _output_closed(stop: StopRequest) -> None:
    """stdout's reader is gone (`| head`, a tee stopped with Ctrl-C): stop as for SIGPIPE, with a checkpoint
    (exit 141), rather than fail on the next line with the steps since the last checkpoint lost."""
    if stop.signum is None:
        stop.signum = signal.SIGPIPE
        with contextlib.suppress(OSError):
            print("codex-train: the output's reader is gone (a closed pipe): finishing this step and checkpointing",
                  file=sys.stderr, flush=True)  # fmt: skip


def _warn(console: Console, message: str) -> None:
    console.event("warning", message=message)


def _start_prometheus(cli_port: int | None, spec: JobSpec, name: str) -> Prometheus:
    port = cli_port if cli_port is not None else spec.metrics.port
    try:
        return Prometheus(port, name)
    except (OSError, OverflowError) as e:  # OverflowError: a port past 65535 (the flag takes any integer)
        field = "--metrics-port" if cli_port is not None else "spec.metrics.port"
        why = (getattr(e, "strerror", None) or str(e).replace("bind(): ", "")).rstrip(".")
        raise SpecError(field, f"cannot serve metrics on port {port}: {why}; choose another port") from None


def _train(  # noqa: C901 - the training loop, kept in one piece to read top to bottom
    spec: JobSpec, name: str, out: Path, stop: StopRequest, accelerator: Accelerator, sink: Sink
) -> int:
    t = spec.training
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    ckpt_dir = out / CHECKPOINTS_DIR

    # ---- what to resume from, checked against the spec before the data is tokenized (which can take long);
    # the data's contents are checked once they are read, below
    found = checkpoint.load_latest(ckpt_dir, log=sink.warn)
    final = out / "final"
    if found is None and final.is_dir() and any(final.iterdir()):  # a finished run always checkpoints its last step
        raise SpecError(
            "--output-dir",
            f"'{out}' holds an earlier run's result (final/) and no checkpoint to resume from: a new run would "
            f"replace it; give another --output-dir, or move {final} away to train again",
        )
    base_dir = out / BASE_MODEL_DIR
    if found is None and spec.model.source == "scratch" and not_a_runs_base(base_dir, out):
        raise SpecError(
            "--output-dir",
            f"'{out}' has a {BASE_MODEL_DIR}/ that no codex-train run made (no {BASE_RECORD} in it, no run.json "
            f"beside it): this run would replace it with its scratch model; give another --output-dir, or move "
            f"{base_dir} away",
        )
    pinned = saved_commit(found.state) if found is not None else None  # a Hub model's, as the run started on it
    if found is not None:
        _check_same_name(out, name)
        # the data and a local model as the checkpoint's, for now: their contents are read below
        state = found.state
        as_saved = resume_identity(spec, saved_digest(state), saved_model_files(state), pinned, saved_tokens(state))
        check_same_job(found.state, as_saved, legacy_identity(spec), found.path)

    if pinned is None and world > 1 and HF_SOURCE.match(spec.model.source):
        pinned = _one_commit(spec.model.source, rank)

    # ---- data and model
    tokenizer_source = tokenizer_at(spec, pinned)
    tokenizer = load_tokenizer(tokenizer_source, spec.model.trust_remote_code)
    with accelerator.main_process_first():  # rank 0 tokenizes and caches; the others read the cache
        data = load_dataset(spec.data, tokenizer, tokenizer_fingerprint(tokenizer), t.seed, out / "cache", sink.warn)
    sink.event(
        "data",
        train_sequences=data.train.rows,
        validation_sequences=data.validation.rows,
        train_tokens=int(data.train.offsets[-1]),
        cached=data.from_cache,
        **({} if spec.data.packing else {"truncated_examples": data.cut[0], "truncated_tokens": data.cut[1]}),
    )
    cut = truncation_warning(spec.data, data)
    if cut:
        sink.warn(cut)
    check_sequences(spec, data, world)  # a batch for every process; data.validation, when given, evaluates
    no_validation = no_validation_reason(spec.data, data)
    if no_validation:
        sink.warn(f"no validation sequences, so evaluation will not run: {no_validation}")
    per_epoch = micro_batches_per_epoch(data.train.rows, t.batch_size, world)
    total_steps = planned_steps(t, data.train.rows, world)
    for line in schedule_warnings(t, data.train.rows, world):
        sink.warn(line)

    # ---- known before the model is made (a fresh start makes its scratch base anew)
    with accelerator.main_process_first():  # rank 0 reads a local model's files; the others find its digests cached
        files = model_digests(spec.model.source, out / "cache")
        identity = resume_identity(spec, data.digest, files, pinned, data.tokens_sha256)
    if found is not None:
        check_same_job(found.state, identity, legacy_identity(spec), found.path)

    torch.manual_seed(t.seed)
    # with LoRA under bf16 the frozen base can be held in bf16 (half the memory); modules trained in
    # full (modulesToSave, or peft.method none) keep fp32 master weights
    frozen_base = spec.peft.method == "lora" and not spec.peft.modules_to_save
    base_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" and frozen_base else None
    # resumed on a Hub model: at the commit the run started on, wherever its branch has moved since
    model_spec = spec.model.model_copy(update={"source": at_commit(spec.model.source, pinned)})
    base = load_base_model(model_spec, tokenizer, base_dir, base_dtype, is_main, seed=t.seed, fresh=found is None)
    commit = pinned or hub_commit(spec.model.source)
    if commit:
        identity["model"]["commit"] = commit
    check_positions(base, spec.data.max_seq_length, sink.warn)
    base_ref = adapter_base_reference(at_commit(spec.model.source, commit), base_dir)
    model = wrap_peft(base, spec.peft)
    cheapen_lora_dropout(model)  # the same dropout, fewer random draws on a CPU (dropout.py)
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable, n_total = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    # transformers' "constant" takes no warmup: warmupSteps would be dropped without a word. A run whose
    # checkpoints were made that way (their schedule's function saved as None, not a partial's dict) keeps
    # going that way: a warmup begun mid-run would drop its rate back
    old_constant = found is not None and t.scheduler == "constant" and found.scheduler.get("lr_lambdas") == [None]
    kind = "constant_with_warmup" if t.scheduler == "constant" and not old_constant else t.scheduler
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=total_steps)

    # ---- resume
    step, tokens_seen, eval_loss, evaluated_at, changes = 0, 0, None, -1, {}
    train_loss = None  # the last step's loss: a resumed run's is its checkpoint's until it trains a step
    if found is not None:
        load_trainable_state(model, found.weights)
        optimizer.load_state_dict(found.optimizer)
        scheduler.load_state_dict(found.scheduler)
        changes = _apply_training_settings(spec, optimizer, scheduler, found.state.get("training"))
        if changes and found.step < total_steps:  # none applies where no step is left to train
            sink.event(
                "changed",
                step=found.step,
                message="training settings differ from the checkpoint's; "
                "applied from this step on (recorded in run.json)",
                changes=changes,
            )
        step, tokens_seen = found.step, found.state["tokens_seen"]
        eval_loss, evaluated_at = found.state.get("eval_loss"), found.state.get("evaluated_at", step)
        train_loss = found.state.get("loss")
        saved_world = found.state.get("world_size")
        if saved_world != world:
            per = t.batch_size * t.gradient_accumulation  # sequences a process trains a step
            sink.warn(
                f"resuming on {counted(world, 'process')}, saved on {saved_world}: a step now trains "
                f"{per * world} sequences instead of {per * (saved_world or 1)}, in another order than the saved "
                f"run's; resume on {counted(saved_world or 1, 'process')} to continue the same training"
            )
        sink.event("resumed", step=step, checkpoint=str(found.path))
        sink.resumed_from(step, eval_loss, train_loss)
        if step > total_steps:  # maxSteps (or epochs) lowered below what the run had done
            sink.warn(
                f"the newest checkpoint, step {step}, is past the {total_steps} steps the job now asks for "
                "(training.maxSteps, or epochs): nothing is trained; the result is the checkpoint's"
            )
    # the loss wraps the model, so that a distributed wrapper sees one forward; `model` stays the PEFT model
    loss_model = LanguageModelLoss(model)
    if t.compile:
        loss_model.compile_model()
    net, optimizer = accelerator.prepare(loss_model, optimizer)
    if found is not None and accelerator.scaler is not None and found.state.get("grad_scaler"):
        accelerator.scaler.load_state_dict(found.state["grad_scaler"])

    sink.event(
        "start",
        name=name,
        device=str(device),
        processes=world,
        step=step,
        total_steps=total_steps,
        trainable_parameters=n_trainable,
        parameters=n_total,
        output=str(out),
        **({"metrics_port": sink.prometheus.port} if sink.prometheus and sink.prometheus.port else {}),
        **({"base_commit": commit} if commit else {}),
    )
    # complete, and its result as asked (peft.merge on a finished LoRA run: written below, nothing trained;
    # a full fine-tune's final/ is the whole model, merge or not)
    merge_owed = spec.peft.merge and spec.peft.method == "lora" and not (out / "final/merged").is_dir()
    # final/ of another step (a longer run stopped as it wrote final/, then resumed at its last step; maxSteps
    # lowered below a stopped run's checkpoint) is written again, from this step's checkpoint
    complete = step >= total_steps and result_step(out / "final") == step and not merge_owed
    if world > 1:  # rank 0's answer: another rank reading final/ as rank 0 rewrites it would leave it waiting
        complete = broadcast_object_list([complete])[0]
    if complete:
        unused = (
            f" (changed since its checkpoint: {', '.join(sorted(changes))}; no step is left to train)"
            if changes
            else ""
        )
        sink.last_step = step  # the step it ended at, for the callbacks' on_end
        sink.event("done", message=f"already complete at step {step}; nothing to do{unused}", output=str(out))
        return EXIT_OK

    # ---- outputs
    sink.open(
        out / "metrics.jsonl",
        step,
        lambda: start_mlflow(spec, name, out, resumed=step > 0),
        use_gpu=device.type == "cuda",
        tensorboard=out / "tensorboard" if spec.tracking.tensorboard else None,
        wandb=lambda: start_wandb(spec.tracking.wandb, name, out, spec.shown(), resumed=step > 0),
    )
    sink.planned(step, total_steps)
    if is_main:
        write_run_json(out / "run.json", name, spec, world, str(device), step, changes, data.digest)
    evaluate = partial(
        _evaluate,
        net,
        data.validation,
        spec.eval.batch_size or t.batch_size,
        spec.eval.max_batches,
        accelerator,
        tokenizer.pad_token_id,
        stop,
    )
    trained = (model, optimizer, scheduler)  # what a checkpoint saves
    saved_with = {  # what every checkpoint records besides the step's own figures
        "total_steps": total_steps,
        "world_size": world,
        "identity": identity,
        "training": t.model_dump(mode="json", by_alias=True),
        "seed_scheme": SEED_SCHEME,
    }

    # ---- the loop
    net.train()
    ga = t.gradient_accumulation
    loop_start, loop_start_step = time.perf_counter(), step

    def eval_due(at: int) -> bool:
        if not data.validation.rows:  # nothing to evaluate (said once, above)
            return False
        return at == total_steps or bool(spec.eval.every_steps and at % spec.eval.every_steps == 0)

    # a run stopped at an evaluation step before that evaluation finished: its rerun evaluates first
    if 0 < step < total_steps and eval_due(step) and evaluated_at != step:
        eval_loss, evaluated_at = _evaluation(evaluate, step, eval_loss, evaluated_at, sink)
    while step < total_steps:
        step_start = time.perf_counter()
        torch.manual_seed(_step_seed(t.seed, step, rank))  # dropout depends on (seed, step, rank) alone
        loss_sum = torch.zeros((), device=device)
        local_tokens = 0
        # every label token of the step, on every rank and micro-batch, weighs the same: each loss is a sum
        # over this share of them (DDP averages the ranks' gradients, hence × world). Counted on the host.
        share = _step_label_tokens(data.train, t.batch_size, world, t.seed, step, ga) / world
        for micro in range(ga):
            rows = micro_batch_rows(data.train.rows, t.batch_size, world, rank, t.seed, step * ga + micro)
            batch = to_device(collate(data.train, rows, tokenizer.pad_token_id), device)
            local_tokens += row_tokens(data.train, rows)
            sync = micro == ga - 1
            with nullcontext() if sync else accelerator.no_sync(net), accelerator.autocast():
                loss = net(**batch, num_items=share)
            accelerator.backward(loss)
            loss_sum += loss.detach().float()
        grad_norm = accelerator.clip_grad_norm_(params, t.max_grad_norm) if t.max_grad_norm > 0 else None
        step_lr = optimizer.param_groups[0]["lr"]  # the rate this step trains at (get_last_lr after the step: the next)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        epoch = step * ga / per_epoch

        # all ranks agree on the mean loss, the tokens done, and whether any rank was asked to stop; the one
        # read of the device this step (the loss, the norm and the flag come back together)
        summary, stop_flag = _step_summary(loss_sum, local_tokens, grad_norm, stop, world, device)
        train_loss, step_tokens, norm = summary[0] / world, int(summary[1]), summary[2]
        stop_signal = int(stop_flag)
        tokens_seen += step_tokens
        elapsed = time.perf_counter() - step_start
        rate = (step - loop_start_step) / (time.perf_counter() - loop_start)
        row = {
            "step": step,
            "epoch": round(epoch, 4),
            "loss": train_loss,
            "learning_rate": step_lr,
            "tokens_per_second": step_tokens / elapsed,
            "tokens_seen": tokens_seen,
            "step_seconds": elapsed,
            "eta_seconds": round((total_steps - step) / rate, 1),
        }
        if grad_norm is not None:
            row["grad_norm"] = norm
        sink.step(row, total_steps)

        # evaluate, checkpoint, stop: decided here for every step, the last included
        last = step == total_steps
        if eval_due(step) and not stop_signal:
            eval_loss, evaluated_at = _evaluation(evaluate, step, eval_loss, evaluated_at, sink)
            stop_signal = stop_signal or _agreed_stop(stop, world, device)
        if last or stop_signal or step % spec.checkpoint.every_steps == 0:
            state = saved_with | {"tokens_seen": tokens_seen, "epoch": epoch}
            state |= {"eval_loss": eval_loss, "evaluated_at": evaluated_at, "loss": train_loss}
            _save_checkpoint(ckpt_dir, spec.checkpoint.keep_last, step, trained, accelerator, state, sink)
        if stop_signal:
            sink.event("stopped", step=step, signal=signal.Signals(stop_signal).name, checkpoint_step=step)
            return SIGNAL_EXIT_BASE + stop_signal

    # ---- the result. A run that a signal stopped at its last step checkpointed without evaluating: its
    # rerun (which starts here, at the last step) evaluates now.
    if evaluated_at != step and data.validation.rows:
        eval_loss, evaluated_at = _evaluation(evaluate, step, eval_loss, evaluated_at, sink)
    if is_main:
        lora = spec.peft.method == "lora"
        write_final(model, tokenizer, lora, spec.peft.merge, out / "final", base_ref, step)
    accelerator.wait_for_everyone()
    sink.event(
        "done", step=step, loss=train_loss, eval_loss=eval_loss, tokens_seen=tokens_seen, final=str(out / "final")
    )
    return EXIT_OK


def _save_checkpoint(
    root: Path, keep_last: int, step: int, trained: tuple, accelerator: Accelerator, state: dict, sink: Sink
) -> None:
    """Rank 0 writes checkpoint `step` (the trainable weights, optimizer, schedule, `state` and the grad
    scaler's) and prunes all but the newest `keep_last`; every rank waits for it. `trained` holds the model
    itself (not a distributed wrapper)."""
    model, optimizer, scheduler = trained
    if accelerator.is_main_process:
        scaler = accelerator.scaler.state_dict() if accelerator.scaler else None
        weights = trainable_state(model)
        state = state | {"grad_scaler": scaler}
        path = checkpoint.save(root, step, weights, optimizer.state_dict(), scheduler.state_dict(), state)
        checkpoint.prune(root, keep_last)
        sink.checkpointed(step, path)
    accelerator.wait_for_everyone()


def _evaluation(
    evaluate: Callable[[], tuple[float | None, bool]],
    step: int,
    previous: float | None,
    previous_at: int,
    sink: Sink,
) -> tuple[float | None, int]:
    """Run `evaluate` and record its loss: (eval loss, the step it is of). One a signal cut short is not
    recorded and leaves both as they were, so the checkpoint says this step's evaluation is still owed."""
    sink.event("evaluating", step=step)  # a long evaluation is visible from its start
    loss, complete = evaluate()
    if not complete:
        sink.warn(f"evaluation at step {step} stopped early by a signal; not recorded")
        return previous, previous_at
    if loss is not None:
        sink.evaluated(step, loss, evalloss.perplexity(loss))
    return loss, step


def _evaluate(
    model: torch.nn.Module,  # LanguageModelLoss as accelerator.prepare returned it (DDP for several processes)
    split: Split,
    batch_size: int,
    max_batches: int | None,
    accelerator: Accelerator,
    pad_id: int,
    stop: StopRequest,
) -> tuple[float | None, bool]:
    """(token-weighted loss over the validation split (evalloss.eval_loss), shared out across ranks; whether it
    ran to the end).

    A signal stops it at the next batch, so SIGTERM does not wait for a long evaluation."""
    if split.rows == 0:
        return None, True
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    sums = evalloss.eval_loss(
        model,
        split,
        np.arange(rank, split.rows, world),
        batch_size,
        pad_id,
        device,
        max_batches=max_batches,
        autocast=accelerator.autocast,
        stop=lambda: stop.signum is not None,
    )
    totals = torch.tensor([sums.loss_sum, sums.tokens, sums.stopped], dtype=torch.float64, device=device)
    if world > 1:
        torch.distributed.all_reduce(totals)
    if totals[2] > 0:
        return None, False
    return (float(totals[0] / totals[1]) if totals[1] > 0 else None), True


def _step_label_tokens(split: Split, batch_size: int, world: int, seed: int, step: int, ga: int) -> int:
    """The label tokens of optimizer step `step` over all ranks and micro-batches (at least 1): the batch
    order is a pure function, so every rank counts the same number without asking the others."""
    n = sum(
        label_tokens(split, micro_batch_rows(split.rows, batch_size, world, r, seed, step * ga + m))
        for r in range(world)
        for m in range(ga)
    )
    return max(n, 1)


def _step_summary(
    loss: torch.Tensor,
    tokens: int,
    grad_norm: torch.Tensor | float | None,
    stop: StopRequest,
    world: int,
    device: torch.device,
) -> tuple[list[float], int]:
    """([loss summed over ranks, tokens summed over ranks, this rank's grad norm], the stop signal any rank
    got): reduced across ranks, then read from the device in one transfer."""
    # host numbers become device tensors by fill, not by copy: a copy from the host would wait for the device
    f64 = torch.float64
    if grad_norm is None:
        norm = torch.zeros((), device=device, dtype=f64)
    elif isinstance(grad_norm, torch.Tensor):
        norm = grad_norm.to(device=device, dtype=f64)
    else:
        norm = torch.full((), float(grad_norm), device=device, dtype=f64)
    summary = torch.stack([loss.to(f64), torch.full((), float(tokens), device=device, dtype=f64), norm])
    flag = torch.full((1,), float(stop.signum or 0), device=device, dtype=f64)
    if world > 1:
        torch.distributed.all_reduce(summary)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        summary[2] = norm  # every rank clipped by the same global norm: not a sum
    values = torch.cat([summary, flag]).tolist()
    return values[:3], int(values[3])


def _agreed_stop(stop: StopRequest, world: int, device: torch.device) -> int:
    """The signal any rank was asked to stop by (0 for none), the same on every rank."""
    flag = torch.tensor([stop.signum or 0], device=device)
    if world > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())


def _apply_training_settings(
    spec: JobSpec, optimizer: torch.optim.Optimizer, scheduler: LambdaLR, saved: dict | None
) -> dict:
    """After loading a checkpoint's optimizer and scheduler, make the current training.* settings rule.

    The optimizer state holds the old learning rate and weight decay, and the schedule its old base; set
    them from the spec (for an unchanged spec this recomputes the very same values). Returns what changed.
    The schedule's shape (scheduler, warmupSteps, maxSteps/epochs) and maxGradNorm and precision follow
    the spec by construction; batchSize and gradientAccumulation are part of the resume identity instead."""
    t = spec.training
    scheduler.base_lrs = [t.learning_rate] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = t.learning_rate
        group["weight_decay"] = t.weight_decay
        group["lr"] = t.learning_rate * factor(scheduler.last_epoch)
    return training_changes(saved, spec)


def _check_compiler(device: torch.device) -> None:
    """torch.compile builds its kernels with a C++ compiler on CPU (and Triton's launchers with a C compiler on
    a GPU): say so at the start, naming the field, instead of failing inside the first step."""
    if (problem := compiler_problem(device.type)) is not None:
        raise SpecError("spec.training.compile", problem)


def _check_same_name(out: Path, name: str) -> None:
    """Checkpoints are resumed by the job that made them: another job on the same volume (existingClaim) or
    output directory would take that run over as its own, and a finished one would report its results."""
    try:
        made_by = json.loads((out / "run.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return  # no run.json (a run from before it was written, or it was removed): nothing to compare
    if isinstance(made_by, str) and made_by and made_by != name:
        raise SpecError(
            "metadata.name",
            f"'{out}' holds the run of job '{made_by}' (its checkpoints, and its result when finished); job '{name}' "
            f"would take it over as its own: give this job a volume (storage.existingClaim) or --output-dir of its "
            f"own, or name it '{made_by}' to continue that run",
        )


def _mixed_precision(precision: str) -> str:
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if precision == "fp16" and not cuda:
        raise SpecError("spec.training.precision", "fp16 needs a GPU; use fp32 or bf16 on a CPU")
    return {"fp32": "no"}.get(precision, precision)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
