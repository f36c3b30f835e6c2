"""Where progress goes: metrics.jsonl, Prometheus gauges, MLflow, TensorBoard, Weights & Biases
(codex_trainer.wandb_sink), the console, callbacks (codex_trainer.plugins) and system figures.

The training loop talks to one `Sink`, which passes each figure on to all of them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
from .errors import SpecError, TransientError, disk_full, is_disk_full
from .fields import mlflow_folder, redact_credentials
from .files import atomic_file, write_text_atomically
from .plugins import Callbacks
from .spec import JobSpec
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


class Mlflow:
    """One MLflow run per output directory; a resumed run logs into the same MLflow run.

    With a tracking server (`remote`), a step the server does not take costs the training seconds, not
    minutes: each call gets STEP_RETRIES, and a failure pauses MLflow logging (PAUSE_FIRST seconds, doubling
    up to PAUSE_MAX) while the steps keep coming; the steps missed are sent once the server answers again
    (the last BACKLOG of them). metrics.jsonl has every step either way."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        run_id_file: Path,
        params: dict[str, Any],
        resume: bool = True,
        remote: bool = False,
        own_db: Path | None = None,
    ):
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # it logs a database error with its traceback, then raises it: said once, by the one line that handles it
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        run_id = run_id_file.read_text().strip() if run_id_file.is_file() else None
        if run_id and not resume:  # the earlier start left no checkpoint: its run ends, a new one begins
            with contextlib.suppress(Exception):  # a run this tracking server does not have: nothing to end
                mlflow.MlflowClient().set_terminated(run_id, "KILLED")
            run_id = None
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        if run_id is None:
            run_id_file.write_text(run.info.run_id)
            mlflow.log_params(mlflow_params(params))
        self.run_id, self.resumed = run.info.run_id, run_id is not None
        # a resumed run: the last step of each metric MLflow already has. A run killed after its last checkpoint
        # logged the steps after it, which the resumed run does again (with the same figures): not logged twice
        self.logged: dict[str, int] = {}
        self.client = mlflow.MlflowClient()
        self.uri, self.remote = redact_credentials(uri), remote
        self.own_db = own_db  # the run's directory, where mlflow.db is the run's own (no trackingUri)
        self.warn: Callable[[str], None] = print  # the Sink's, once it holds this run
        self.backlog: list[tuple[dict[str, float], int, int]] = []  # (metrics, step, ms): not taken yet
        self.dropped = 0
        self.pause, self.paused_until = 0.0, 0.0

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.remote:  # the run's own database: a failure there (a full disk) is the run's
            with self._full_disk_said():
                self._send([(metrics, step, int(time.time() * 1000))])
            return
        self.backlog.append((metrics, step, int(time.time() * 1000)))
        if len(self.backlog) > BACKLOG:
            self.dropped += len(self.backlog) - BACKLOG
            del self.backlog[: len(self.backlog) - BACKLOG]
        if time.monotonic() < self.paused_until:
            return
        try:
            with _patient_for(STEP_RETRIES, force=True):  # also over a user's setting for the start
                self._send(self.backlog)
        except Exception as e:
            if not self.pause:
                self.warn(
                    f"the MLflow tracking server at {self.uri} did not take step {step} ({_said(e)}): MLflow "
                    f"logging pauses, and tries again in {PAUSE_FIRST:.0f} s and then less often; metrics.jsonl "
                    "has every step, and the steps missed are sent when the server answers"
                )
            self.pause = min(PAUSE_MAX, max(PAUSE_FIRST, self.pause * 2))
            self.paused_until = time.monotonic() + self.pause
            return
        if self.pause:
            lost = f"; the {self.dropped} before them were not kept" if self.dropped else ""
            again = f"the MLflow tracking server at {self.uri} answers again at step {step}"
            self.warn(f"{again}: the steps missed are sent{lost}")
        self.pause, self.dropped = 0.0, 0

    def _send(self, rows: list[tuple[dict[str, float], int, int]]) -> None:
        """Log `rows`, in batches of at most 1,000 figures (MLflow's limit); each batch's rows leave the list
        once the server has taken them."""
        from mlflow.entities import Metric

        while rows:
            batch, figures = 0, list[Any]()
            for metrics, step, ms in rows:
                if self.resumed:
                    metrics = {k: v for k, v in metrics.items() if step > self._last_logged(k)}
                if batch and len(figures) + len(metrics) > 1000:
                    break
                figures += [Metric(k, float(v), ms, step) for k, v in metrics.items()]
                batch += 1
            if figures:
                self.client.log_batch(self.run_id, metrics=figures)
            del rows[:batch]

    def _last_logged(self, key: str) -> int:
        if key not in self.logged:
            history = self.client.get_metric_history(self.run_id, key)
            self.logged[key] = max((m.step for m in history), default=-1)
        return self.logged[key]

    @contextlib.contextmanager
    def _full_disk_said(self) -> Iterator[None]:
        """A full disk under the run's own database is the one disk-full line naming it, not SQLAlchemy's words."""
        try:
            yield
        except Exception as e:
            if self.own_db is not None and is_disk_full(e):
                raise disk_full("the MLflow database (mlflow.db)", self.own_db, MLFLOW_DB_BYTES) from None
            raise

    def close(self, status: str = "FINISHED") -> None:
        if not self.remote:
            try:
                self.mlflow.end_run(status=status)
            except Exception as e:
                if status != "FINISHED" and is_disk_full(e):
                    return  # a run ending on an error (this same full disk, most often): that error is the one said
                with self._full_disk_said():
                    raise
            return
        try:  # the run's end must not turn a finished training into a crash: said, and the exit code kept
            with _patient_for(STEP_RETRIES, force=True):
                self._send(self.backlog)
                self.mlflow.end_run(status=status)
        except Exception as e:
            left = f"; {len(self.backlog)} steps not logged there" if self.backlog else ""
            self.warn(
                f"the MLflow tracking server at {self.uri} could not be told the run ended ({_said(e)}){left}: "
                "metrics.jsonl has every step"
            )
            with contextlib.suppress(Exception), _patient_for(STEP_RETRIES, force=True):
                self.mlflow.end_run(status=status)  # the run's own state, here, ended; one short try there


# a tracking server that does not take a step: one try of at most 5 s each time, so a server gone away costs
# the training seconds per pause, not MLflow's default 7 retries backing off for minutes at every step
STEP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
PAUSE_FIRST, PAUSE_MAX = 30.0, 600.0
BACKLOG = 10_000  # steps kept for a server that is away


def _said(e: Exception) -> str:
    """A failure's gist in a few words, credentials masked."""
    text = str(e).strip()
    return _why(text) or redact_credentials(text.splitlines()[0][:200] if text else type(e).__name__)


def start_mlflow(spec: JobSpec, name: str, out: Path, resumed: bool) -> Mlflow | None:
    """The MLflow run: the same one when resuming from a checkpoint; a new one for a run that starts at step
    0 (an earlier start that made no checkpoint left a run whose figures the new one does not continue)."""
    cfg = spec.tracking.mlflow
    if not cfg.enabled:
        return None
    # MLflow sends usage telemetry to its own server unless told not to; a training job sends nothing the
    # user did not ask for (set MLFLOW_DISABLE_TELEMETRY=false to allow it)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    db, run_id = out / "mlflow.db", out / "mlflow_run_id"
    uri = cfg.tracking_uri or f"sqlite:///{quote(str(db.resolve()))}"  # a `?` or `#` in the path is the path's
    if not cfg.tracking_uri and db.exists() and not run_id.exists() and _mlflow_runs(db) == 0:
        # no run in it: left half-made by a full disk or a kill while MLflow built its tables (MLflow would
        # fail on it at every later start): made again, losing nothing
        db.unlink()
    if cfg.tracking_uri and (folder := mlflow_folder(cfg.tracking_uri, os.environ)):
        raise SpecError("spec.tracking.mlflow.trackingUri", folder)
    try:
        with _patient_for(START_RETRIES if cfg.tracking_uri else None):
            remote = (cfg.tracking_uri or "").startswith(("http://", "https://", "databricks"))
            own = None if cfg.tracking_uri else out
            return Mlflow(uri, cfg.experiment, name, run_id, flatten(spec.shown()), resumed, remote, own)
    except Exception as e:
        if is_disk_full(e) and not cfg.tracking_uri:  # a tracking server's own full disk is not ours to free
            raise disk_full("the MLflow database (mlflow.db)", out, MLFLOW_DB_BYTES) from None
        text = str(e).strip()
        refused = re.search(r"error code (401|403) != 200", text) if cfg.tracking_uri else None
        if refused:
            raise SpecError(
                "spec.tracking.mlflow.trackingUri",
                f"the MLflow tracking server at {redact_credentials(uri)} refused the credentials (HTTP "
                f"{refused.group(1)}): check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
                "MLFLOW_TRACKING_TOKEN, in the environment (a pod's come from its env)",
            ) from None
        server = re.search(r"too many (5\d\d) error responses|error code (5\d\d) != 200", text)
        said = _why(text) or (f"it answered HTTP {server.group(1) or server.group(2)}" if server else "")
        if not cfg.tracking_uri or not said:  # not the server out of reach or failing (a bug): as it is
            raise
        raise TransientError(  # the server may be down for a while: a retry, not a traceback (nor a secret)
            f"the MLflow tracking server at {redact_credentials(uri)} cannot be used: {said}; check "
            "spec.tracking.mlflow.trackingUri and that the server answers from here (retryable)"
        ) from None


def _why(text: str) -> str:
    """Why the server could not be reached, from an HTTP client's failure (`[Errno 111] Connection refused`, a
    name that does not resolve, a timeout), credentials masked; "" when the failure is not of that kind."""
    errno = re.findall(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return redact_credentials(errno[-1].strip())
    timed_out = re.search(r"(Read|Connect)?\s*timed out[^'\")\]]*", text)
    return redact_credentials(timed_out.group(0).strip()) if timed_out else ""


# the first calls to a tracking server: MLflow's own default (7 retries, backing off to minutes) would keep a
# run that cannot reach it silent for minutes before saying so; a user's MLFLOW_HTTP_REQUEST_* wins
START_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


@contextlib.contextmanager
def _patient_for(settings: dict[str, str] | None, force: bool = False) -> Iterator[None]:
    """The environment with `settings` where the user set none of them (all of them with `force`), restored
    afterwards."""
    before = {k: os.environ.get(k) for k in settings or {} if force or k not in os.environ}
    os.environ.update({k: (settings or {})[k] for k in before})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _mlflow_runs(db: Path) -> int:
    """How many runs an MLflow SQLite database holds: 0 for one whose tables were never made (or not a
    database at all); -1 when it cannot be read now (locked, say), so that it is left alone."""
    try:
        with contextlib.closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])
    except sqlite3.DatabaseError as e:
        return 0 if "no such table" in str(e) or "not a database" in str(e) else -1


MLFLOW_DB_BYTES = 2**21  # a new MLflow database is about 1 MiB once its tables are made; room for its first run


def mlflow_params(params: dict[str, Any]) -> dict[str, Any]:
    """The params with names MLflow takes (alphanumerics, _ - . space : /, at most 250 characters): a
    model.config key such as label2id's 'C++' is written 'C__' there (run.json has the spec as it is)."""
    return {re.sub(r"[^A-Za-z0-9_\-. :/]", "_", k)[:250]: v for k, v in params.items()}


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
