"""MLflow against a tracking server: one that cannot be reached, refuses the credentials or answers 5xx at the
start, is a folder, goes away mid-run and comes back (or not), and param names MLflow refuses.

What the user sees: the exit code, one line on stderr naming the field, and training that goes on when the
server goes away. Runs are a few steps of the tiny example."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import time

import pytest

from codex_trainer import metrics as metrics_module
from codex_trainer import mlflow_sink
from codex_trainer.cli import main
from support import TINY, one_line

pytestmark = pytest.mark.slow


def test_an_mlflow_server_that_cannot_be_reached_is_one_retryable_line_soon(tmp_path, capsys, monkeypatch):
    """Nothing listens at the tracking URI: the run says so in one line naming the field (its own exit code
    for a retry: the server may come back), within seconds, not after MLflow's minutes of retries."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    args = ["run", str(TINY), "--output-dir", str(tmp_path / "out"), "--set", "training.maxSteps=2"]
    args += ["--set", f"tracking.mlflow.trackingUri=http://127.0.0.1:{port}"]
    started = time.monotonic()
    assert main(args) == 1
    assert time.monotonic() - started < 60
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"codex-train: the MLflow tracking server at http://127.0.0.1:{port} cannot be used: "), line
    assert "spec.tracking.mlflow.trackingUri" in line and "retryable" in line, line
    assert not (tmp_path / "out" / "checkpoints").exists()


def _mlflow_server(db: pathlib.Path, port: int) -> subprocess.Popen:
    import urllib.request

    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise AssertionError("the MLflow server did not start")


@pytest.mark.parametrize("back", [True, False], ids=["back-at-step-6", "gone-to-the-end"])
def test_an_mlflow_server_gone_mid_run_pauses_its_logging_and_gets_the_steps_missed_when_back(
    tmp_path, capsys, monkeypatch, back
):
    """A tracking server that stops answering mid-run must not stall the training (MLflow's own retries back off
    for minutes at every step) nor end it: the run says so once, trains on, and sends the steps the server
    missed when it answers again; gone to the end, the run ends on time with a warning, its exit code 0."""
    import signal
    import socket

    import mlflow

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "server.db"
    servers = [_mlflow_server(db, port)]
    monkeypatch.setattr(mlflow_sink, "PAUSE_FIRST", 0.01)  # try again at the next step, not after 30 s
    step = metrics_module.Sink.step

    def around(sink, row, total):
        if row["step"] == 3:  # the server goes away
            os.killpg(servers[-1].pid, signal.SIGKILL)
            servers[-1].wait()
        if row["step"] == 6 and back:  # and comes back
            servers.append(_mlflow_server(db, port))
        step(sink, row, total)

    monkeypatch.setattr(metrics_module.Sink, "step", around)
    try:
        out = tmp_path / "out"
        args = ["run", str(TINY), "--output-dir", str(out), "--set", "training.maxSteps=8"]
        args += ["--set", f"tracking.mlflow.trackingUri=http://127.0.0.1:{port}", "--set", "eval.everySteps=100"]
        started = time.monotonic()
        assert main(args) == 0
        assert time.monotonic() - started < 240  # not minutes of retries per step
        said = capsys.readouterr().out
        assert f"the MLflow tracking server at http://127.0.0.1:{port} did not take step 3" in said, said[-3000:]
        if not back:
            assert "could not be told the run ended" in said and "metrics.jsonl has every step" in said
            assert time.monotonic() - started < 120  # MLflow's own retries at the end would take minutes
            return
        assert "answers again at step 6: the steps missed are sent" in said, said[-3000:]
        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        run_id = (out / "mlflow_run_id").read_text().strip()
        assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(1, 9))
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.parametrize("answer", ["folder", 401, 503])
def test_an_mlflow_folder_or_a_refusing_server_is_one_line_naming_the_field(tmp_path, capsys, monkeypatch, answer):
    """A folder (MLflow's file store, which MLflow 3 refuses) or a server refusing the credentials: exit 2, one
    line with the fix; a server answering 503: exit 1 (retryable), one line. Never MLflow's traceback."""
    import http.server
    import threading

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = str(tmp_path / "mlruns")
    if answer != "folder":

        class Refusing(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the standard library's name
                self.send_response(answer)
                self.end_headers()

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{server.server_address[1]}"
    args = ["run", str(TINY), "--output-dir", str(tmp_path / "out"), "--set", "training.maxSteps=2"]
    assert main([*args, "--set", f"tracking.mlflow.trackingUri={uri}"]) == (1 if answer == 503 else 2)
    line = one_line(capsys.readouterr().err)
    assert "spec.tracking.mlflow.trackingUri" in line, line
    if answer == "folder":
        assert "is a folder, which MLflow no longer writes runs to" in line and "sqlite:///" in line, line
        assert main(["validate", str(TINY), "--set", f"tracking.mlflow.trackingUri={uri}"]) == 2  # said there too
        assert "is a folder, which MLflow no longer writes runs to" in capsys.readouterr().err
    elif answer == 401:
        assert "refused the credentials (HTTP 401): check MLFLOW_TRACKING_USERNAME" in line, line
    else:
        assert "cannot be used: it answered HTTP 503" in line and "retryable" in line, line


def test_a_config_key_mlflow_would_refuse_as_a_param_name_still_trains_and_is_logged(tmp_path):
    """model.config takes any key (a label2id label 'C++', 'a: b # c'); MLflow's param names take fewer
    characters: the run trains (it crashed at MLflow's start, every attempt), the param under a name MLflow takes."""
    import sqlite3

    out = tmp_path / "out"
    labels = 'model.config.label2id={"a: b # c": 0, "C++": 1}'
    args = ["run", str(TINY), "--output-dir", str(out), "--set", "training.maxSteps=1", "--set", labels]
    assert main(args) == 0
    with contextlib.closing(sqlite3.connect(out / "mlflow.db")) as db:
        names = {row[0] for row in db.execute("SELECT key FROM params")}
    assert {"model.config.label2id.a: b _ c", "model.config.label2id.C__"} <= names, sorted(names)[:20]
