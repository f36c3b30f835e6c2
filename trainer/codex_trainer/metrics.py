"""Where progress goes: metrics.jsonl, Prometheus gauges, MLflow, and system figures."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Gauge, start_http_server


class MetricsFile:
    """metrics.jsonl: one JSON object per line, flushed at once so a crash loses nothing written."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        if resume_step >= 0 and path.exists():
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
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class Prometheus:
    """Gauges a scraper (or the operator) reads: step, loss, throughput, last checkpoint."""

    def __init__(self, port: int | None, job: str):
        self.registry = CollectorRegistry()
        labels = {"job_name": job}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, list(labels), registry=self.registry).labels(**labels)

        self.step = gauge("codex_trainer_step", "Optimizer steps completed")
        self.total_steps = gauge("codex_trainer_total_steps", "Optimizer steps planned")
        self.loss = gauge("codex_trainer_loss", "Training loss of the last step")
        self.eval_loss = gauge("codex_trainer_eval_loss", "Loss on the validation split at the last evaluation")
        self.tokens_per_second = gauge("codex_trainer_tokens_per_second", "Non-padding tokens per second, all ranks")
        self.checkpoint_step = gauge("codex_trainer_last_checkpoint_step", "Step of the newest complete checkpoint")
        self.checkpoint_time = gauge(
            "codex_trainer_last_checkpoint_timestamp_seconds", "When the newest complete checkpoint was written"
        )
        self.rss = gauge("codex_trainer_process_memory_bytes", "Resident memory of the trainer process")
        self.gpu_memory = gauge("codex_trainer_gpu_memory_used_bytes", "GPU memory in use (NVML)")
        self.server = None
        if port is not None:
            self.server, _ = start_http_server(port, registry=self.registry)

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


class Mlflow:
    """One MLflow run per output directory; a resumed run logs into the same MLflow run."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_id_file: Path, params: dict[str, Any]):
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        run_id = run_id_file.read_text().strip() if run_id_file.is_file() else None
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        if run_id is None:
            run_id_file.write_text(run.info.run_id)
            mlflow.log_params(params)
        self.run_id = run.info.run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars become strings for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, int | float | str | bool) else json.dumps(v)
    return out
