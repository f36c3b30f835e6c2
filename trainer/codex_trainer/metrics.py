"""Where progress goes: metrics.jsonl, Prometheus gauges, MLflow (codex_trainer.mlflow_sink), TensorBoard,
Weights & Biases (codex_trainer.wandb_sink), the console, callbacks (codex_trainer.plugins) and system figures.

The training loop talks to one `Sink`, which passes each figure on to all of them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from .console import Console
from .contract import (
    METRIC_CHECKPOINT_STEP,
    METRIC_CHECKPOINT_TIME,
    METRIC_EVAL_LOSS,
    METRIC_LOSS,
    METRIC_STEP,
    METRIC_TOKENS_PER_SECOND,
    METRIC_TOTAL_STEPS,
)
from .errors import SpecError
from .files import atomic_file, write_text_atomically
from .mlflow_sink import Mlflow
from .plugins import Callbacks
from .wandb_sink import Wandb


class Sink:
    """metrics.jsonl, Prometheus, MLflow, TensorBoard, W&B, the console and callbacks, as one. Rank 0 writes
    (`enabled`); on the other ranks every method does nothing. Prometheus serves from the start (its port is
    checked before anything loads); the files open with `open`, once the run knows its step; `close` ends
    all of them (and tells the callbacks, `on_end`)."""

    def __init__(
        self, enabled: bool, console: Console, prometheus: Prometheus | None, callbacks: list[Callbacks] | None = None
    ):
        self.enabled = enabled
        self.console = console
        self.prometheus = prometheus
        self.callbacks = callbacks or []
        self.metrics: MetricsFile | None = None
        self.mlflow: Mlflow | None = None
        self.tensorboard: TensorBoard | None = None
        self.wandb: Wandb | None = None
        self.stats: SystemStats | None = None
        self.last_step: int | None = None

    def open(
        self,
        metrics_file: Path,
        resume_step: int,
        mlflow: Callable[[], Mlflow | None],
        use_gpu: bool,
        tensorboard: Path | None = None,
        wandb: Callable[[], Wandb | None] | None = None,
    ) -> None:
        """Start writing metrics.jsonl (after `resume_step`), MLflow (`mlflow()` opens the run), TensorBoard
        event files in `tensorboard` (when given), W&B (`wandb()` opens the run) and system figures."""
        if not self.enabled:
            return
        self.last_step = resume_step
        self.metrics = MetricsFile(metrics_file, resume_step)
        self.mlflow = mlflow()
        if self.mlflow:
            self.mlflow.warn = self.warn
        if tensorboard is not None:
            self.tensorboard = TensorBoard(tensorboard, resume_step)
        if wandb is not None:
            self.wandb = wandb()
            if self.wandb:  # what W&B lost to a kill, up to the checkpoint, from metrics.jsonl
                self.wandb.catch_up(metrics_file, resume_step)
        self.stats = SystemStats(use_gpu)

    def event(self, event: str, **fields: Any) -> None:
        self.console.event(event, **fields)

    def warn(self, message: str) -> None:
        self.console.event("warning", message=message)

    def planned(self, step: int, total_steps: int) -> None:
        if self.prometheus:
            self.prometheus.total_steps.set(total_steps)
            self.prometheus.step.set(step)

    def step(self, row: dict[str, Any], total_steps: int) -> None:
        """One optimizer step's figures (`row`, with step, loss and tokens_per_second), plus the system's."""
        if not self.enabled:
            return
        row = {**row, **self.stats.read()} if self.stats else row
        if self.prometheus:
            p = self.prometheus
            p.step.set(row["step"])
            p.loss.set(row["loss"])
            p.tokens_per_second.set(row["tokens_per_second"])
            p.rss.set(row["process_memory_mb"] * 2**20)
            if "gpu_memory_mb" in row:
                p.gpu_memory.set(row["gpu_memory_mb"] * 2**20)
        self._log(row)
        if self.tensorboard:
            self.tensorboard.scalars(row["step"], {k: row[k] for k in TensorBoard.TRAIN if k in row}, "train")
        if self.wandb:
            self.wandb.step(row)
        self.last_step = row["step"]
        self._callbacks("on_step", {**row, "total_steps": total_steps})
        self.console.progress(row["step"], total_steps, loss=row["loss"], tok_s=round(row["tokens_per_second"]))

    def evaluated(self, step: int, loss: float, perplexity: float) -> None:
        if not self.enabled:
            return
        self._log({"step": step, "eval_loss": loss, "perplexity": perplexity})
        if self.prometheus:
            self.prometheus.eval_loss.set(loss)
        if self.tensorboard:
            self.tensorboard.scalars(step, {"loss": loss, "perplexity": perplexity}, "eval")
        if self.wandb:
            self.wandb.evaluated(step, loss, perplexity)
        self._callbacks("on_eval", {"step": step, "eval_loss": loss, "perplexity": perplexity})
        self.console.event("eval", step=step, eval_loss=round(loss, 4), perplexity=round(perplexity, 2))

    def resumed_from(self, step: int, eval_loss: float | None, loss: float | None = None) -> None:
        """Serve what the endpoint served before the restart, from the checkpoint: its step, its step's loss and
        the last evaluation's loss (the operator would otherwise read none until the next step or evaluation: a
        blank LOSS or EVAL column in `kubectl get ctj`)."""
        if self.enabled and self.prometheus:
            self.prometheus.step.set(step)
            self.prometheus.checkpoint_step.set(step)
            if eval_loss is not None:
                self.prometheus.eval_loss.set(eval_loss)
            if loss is not None:
                self.prometheus.loss.set(loss)

    def checkpointed(self, step: int, path: Path) -> None:
        if not self.enabled:
            return
        if self.prometheus:
            self.prometheus.checkpoint_step.set(step)
            self.prometheus.checkpoint_time.set(time.time())
        self._log({"step": step, "checkpoint": str(path)})
        if self.tensorboard:  # what a checkpoint covers is on disk: a kill after it loses no point of the curves
            self.tensorboard.flush()
        if self.wandb:
            self.wandb.checkpointed(step, path)
        self._callbacks("on_checkpoint", {"step": step, "path": str(path)})
        self.console.event("checkpoint", step=step, path=str(path))

    def close(self, status: str = "FINISHED") -> None:
        """End everything opened (safe to call twice); `status` is the MLflow run's (FINISHED, KILLED or
        FAILED), the W&B run's exit code follows it, and the callbacks' on_end gets it."""
        if self.enabled and self.callbacks:
            self._callbacks("on_end", {"status": status, "step": self.last_step})
            self.callbacks = []
        if self.metrics:
            self.metrics.close()
            self.metrics = None
        if self.tensorboard:
            self.tensorboard.close()
            self.tensorboard = None
        if self.prometheus:
            self.prometheus.close()
        if self.mlflow:
            self.mlflow.close(status)
            self.mlflow = None
        if self.wandb:
            wandb, self.wandb = self.wandb, None
            wandb.close(status)
        self.console.close()

    def _callbacks(self, hook: str, payload: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.call(hook, payload)

    def _log(self, row: dict[str, Any]) -> None:
        if self.metrics:
            self.metrics.write(row)
        if self.mlflow:
            self.mlflow.log({k: v for k, v in row.items() if k != "step" and isinstance(v, int | float)}, row["step"])


class MetricsFile:
    """metrics.jsonl: one JSON object per line, flushed at once so a crash loses nothing written."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        if path.exists():
            self._drop_after(resume_step)
        self._f = path.open("a", encoding="utf-8")

    def _drop_after(self, step: int) -> None:
        """On resume, forget lines from steps the resumed run will do again, so the file tells one story."""
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if row.get("step", 0) <= step:
                kept.append(line)
        write_text_atomically(self.path, "".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorBoard:
    """Scalars in TensorBoard event files under one directory (torch.utils.tensorboard's SummaryWriter).

    A resumed run continues the same curves: before writing, every event file there loses its events from
    steps after `resume_step` (those the resumed run does again; a kill can leave some), and the new file
    starts with TensorBoard's purge marker at `resume_step + 1`, so a TensorBoard already showing the lost
    steps drops them too. No step appears twice."""

    TRAIN = ("loss", "learning_rate", "tokens_per_second")

    def __init__(self, directory: Path, resume_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise SpecError(
                "spec.tracking.tensorboard", f"needs the tensorboard package ({e}); pip install tensorboard"
            ) from None
        directory.mkdir(parents=True, exist_ok=True)
        for f in sorted(directory.glob("events.out.tfevents.*")):
            drop_events_after(f, resume_step)
        self.writer = SummaryWriter(str(directory), purge_step=resume_step + 1)

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def drop_events_after(path: Path, step: int) -> None:
    """Rewrite an event file (atomically) without its events from steps after `step`, and without a record
    torn by a kill; a file with nothing to drop is left as it is."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    records = list(RawEventFileLoader(str(path)).Load())
    kept = [r for r in records if Event.FromString(r).step <= step]
    if len(kept) == len(records) and sum(len(r) + 16 for r in records) == path.stat().st_size:
        return
    with atomic_file(path) as tmp, tmp.open("wb") as f:
        writer = RecordWriter(f)
        for r in kept:
            writer.write(r)
        writer.flush()


class Series:
    """One labelled gauge's series, served from its first value on: before an evaluation or a checkpoint there
    is no eval loss or checkpoint step, and a 0 would read as a perfect loss or a checkpoint at step 0."""

    def __init__(self, gauge: Gauge, labels: dict[str, str]):
        self.gauge, self._labels = gauge, labels
        self._child: Any = None

    def set(self, value: float) -> None:
        if self._child is None:
            self._child = self.gauge.labels(**self._labels)
        self._child.set(value)


class Prometheus:
    """Gauges a scraper (or the operator) reads: step, loss, throughput, last checkpoint."""

    def __init__(self, port: int | None, job: str):
        self.registry = CollectorRegistry()
        labels = {"job_name": job}

        def gauge(name: str, doc: str) -> Series:
            return Series(Gauge(name, doc, list(labels), registry=self.registry), labels)

        # the operator reads these (contract.METRIC_*); the two below are for a scraper only
        self.step = gauge(METRIC_STEP, "Optimizer steps completed")
        self.total_steps = gauge(METRIC_TOTAL_STEPS, "Optimizer steps planned")
        self.loss = gauge(METRIC_LOSS, "Training loss of the last step")
        self.eval_loss = gauge(METRIC_EVAL_LOSS, "Loss on the validation split at the last evaluation")
        self.tokens_per_second = gauge(METRIC_TOKENS_PER_SECOND, "Non-padding tokens per second, all ranks")
        self.checkpoint_step = gauge(METRIC_CHECKPOINT_STEP, "Step of the newest complete checkpoint")
        self.checkpoint_time = gauge(METRIC_CHECKPOINT_TIME, "When the newest complete checkpoint was written")
        self.rss = gauge("codex_trainer_process_memory_bytes", "Resident memory of the trainer process")
        self.gpu_memory = gauge("codex_trainer_gpu_memory_used_bytes", "GPU memory in use (NVML)")
        self.server = None
        self.port = None  # the port served, also when `port` was 0 (any free one)
        if port is not None:
            self.server, _ = start_http_server(port, registry=self.registry)
            self.port = self.server.server_port

    def close(self) -> None:
        """Stop serving and free the port (safe to call twice)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class SystemStats:
    """Process memory and CPU, plus GPU memory and utilisation through NVML when a GPU is present."""

    def __init__(self, use_gpu: bool):
        self.proc = psutil.Process()
        self.proc.cpu_percent()  # first call primes the counter
        self.nvml = None
        if use_gpu:
            try:
                import pynvml

                pynvml.nvmlInit()
                index = int(os.environ.get("LOCAL_RANK", "0"))
                self.nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(index))
            except Exception:  # no driver library: report what we can
                self.nvml = None

    def read(self) -> dict[str, float]:
        out = {
            "process_memory_mb": round(self.proc.memory_info().rss / 2**20, 1),
            "cpu_percent": self.proc.cpu_percent(),
        }
        if self.nvml is not None:
            nvml, handle = self.nvml
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            out["gpu_memory_mb"] = round(mem.used / 2**20, 1)
            out["gpu_utilization_percent"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        return out
