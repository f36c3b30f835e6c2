"""MLflow for a run: its own SQLite database in the output directory (mlflow.db), or a tracking server
(spec.tracking.mlflow.trackingUri); one MLflow run per output directory, resumed with it. A server that stops
answering pauses the logging, never the training; a full disk under the run's own database is the run's."""

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

from .errors import SpecError, TransientError, disk_full, is_disk_full
from .fields import mlflow_folder, redact_credentials
from .spec import JobSpec


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
