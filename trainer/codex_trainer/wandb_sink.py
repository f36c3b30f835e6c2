"""Weights & Biases, fed by the metrics `Sink` (codex_trainer.metrics) on rank 0: offline by default.

Offline, a run directory under `<output>/wandb/` and nothing sent anywhere; online, the key comes from the
environment (WANDB_API_KEY), never from the spec. One W&B run per output directory: its id is kept in
`<output>/wandb_run_id` and every start that resumes from a checkpoint resumes it. A start with no checkpoint
(one killed before its first) is a fresh one: a new run, and a new id in the file; the killed start's run
stays under `<output>/wandb/` as the kill left it (offline W&B has no way to mark a run after the fact).

W&B's history only grows: a step lower than one it already holds is refused. A resumed job redoes the
steps after its checkpoint, and the run before it may have logged some of them before it was killed; so a
start logs only the steps after the last one W&B holds for the run (read from the run's own transaction
logs beside it, and from the server when online). The steps left out are ones already there, with the
same losses (a resume repeats its steps exactly). The other way round, steps up to the checkpoint that
W&B lost to a kill (or never saw: W&B enabled on a job already under way) are logged from metrics.jsonl
when the job resumes, so the run has every step once."""

from __future__ import annotations

import importlib
import json
import netrc
import os
import secrets
import string
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import SpecError, TransientError
from .files import write_text_atomically
from .spec import WandbSpec

RUN_ID_FILE = "wandb_run_id"
FIELD = "spec.tracking.wandb"
NO_KEY = (
    "mode online needs a W&B API key: set WANDB_API_KEY in the trainer's environment (on a cluster, "
    "env valueFrom.secretKeyRef or envFrom secretRef naming a Secret), or use mode: offline"
)
STATUS_EXIT = {"FINISHED": 0, "KILLED": 143, "FAILED": 1}  # Sink.close's status -> the W&B run's exit code
FINISH_TIMEOUT = 60.0  # online, what is not uploaded by then stays in the local run directory (`wandb sync`)

# a step row's training figures go under train/; the rest (process memory, CPU, GPU) under resources/
TRAIN = frozenset(
    ("loss", "learning_rate", "tokens_per_second", "grad_norm", "epoch", "tokens_seen", "step_seconds", "eta_seconds")
)


def check_credentials(cfg: WandbSpec) -> None:
    """Before anything loads: online with no key anywhere W&B looks is a spec error (exit 2)."""
    if not (cfg.enabled and cfg.mode == "online"):
        return
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or _netrc_has_key():
        return
    raise SpecError(f"{FIELD}.mode", NO_KEY)


def _netrc_has_key() -> bool:
    """`wandb login` keeps the key in ~/.netrc, under the server's host name."""
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return bool(host and netrc.netrc(os.environ.get("NETRC")).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


class Wandb:
    """One W&B run per output directory; a resumed job continues it without logging a step twice, a job that
    starts again at step 0 begins a new one (`resumed` False)."""

    def __init__(self, cfg: WandbSpec, name: str, out: Path, config: dict[str, Any], resumed: bool = True):
        os.environ["WANDB_SILENT"] = "true"
        os.environ["WANDB_MODE"] = cfg.mode  # the spec's mode, whatever the environment said
        if cfg.mode == "offline":  # no error reports (Sentry) from the library or its service process
            os.environ["WANDB_ERROR_REPORTING"] = "false"
        import wandb

        id_file = out / RUN_ID_FILE
        # a start with no checkpoint to resume is a fresh one: a new run (the earlier start's stays as it was)
        run_id = id_file.read_text().strip() if resumed and id_file.is_file() else ""
        if not run_id:
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            write_text_atomically(id_file, run_id + "\n")
        settings = wandb.Settings(
            silent=True,
            console="off",  # the trainer's own output stays as it is: no capture, no redirection
            disable_code=True,
            save_code=False,
            disable_git=True,
            x_save_requirements=False,
            x_disable_stats=True,  # the process's figures come in the step rows, as everywhere else
            x_disable_meta=True,
            allow_val_change=True,  # a resumed job may change what resuming allows (maxSteps, say)
            finish_timeout=FINISH_TIMEOUT,
        )
        try:
            self.run = wandb.init(
                dir=str(out),
                mode=cfg.mode,
                project=cfg.project,
                entity=cfg.entity,
                name=cfg.run_name or name,
                id=run_id,
                resume="allow",
                config=config,
                settings=settings,
            )
        except wandb.errors.AuthenticationError as e:
            raise SpecError(FIELD, f"W&B refused the credentials: {_redacted(e)}") from None
        except wandb.errors.UsageError as e:
            raise SpecError(FIELD, f"W&B could not start: {_redacted(e)}") from None
        except wandb.errors.CommError as e:
            raise TransientError(f"W&B could not start ({FIELD}): {_redacted(e)}") from None
        self.wandb = wandb
        self.id = run_id
        # the last step W&B holds for this run: earlier starts' logs here, and the server's word when online
        self.logged_through = max(last_logged_step(out / "wandb", run_id), self.run.step - 1)

    def step(self, row: dict[str, Any]) -> None:
        """A step row from the Sink: training figures under train/, the process's under resources/."""
        numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, int | float)}
        self._log(row["step"], {f"{'train' if k in TRAIN else 'resources'}/{k}": v for k, v in numbers.items()})

    def evaluated(self, step: int, loss: float, perplexity: float) -> None:
        self._log(step, {"eval/loss": loss, "eval/perplexity": perplexity})

    def catch_up(self, metrics_file: Path, through: int) -> None:
        """Log from metrics.jsonl the steps up to `through` (the checkpoint a job resumes from) that W&B lacks:
        its service writes its log every 15 s, and a kill (SIGKILL, OOM) loses what it had not written."""
        if through <= self.logged_through or not metrics_file.is_file():
            return
        with metrics_file.open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill
                if not self.logged_through < row.get("step", 0) <= through:
                    continue
                if "loss" in row:
                    self.step({k: v for k, v in row.items() if k != "time"})
                elif "eval_loss" in row:
                    self.evaluated(row["step"], row["eval_loss"], row["perplexity"])
        self.logged_through = through

    def checkpointed(self, step: int, path: Path) -> None:
        if step > self.logged_through:
            self.run.summary.update({"checkpoint/step": step, "checkpoint/path": str(path)})

    def _log(self, step: int, values: dict[str, float]) -> None:
        if step > self.logged_through:  # W&B already has the others (see the module's docstring)
            self.run.log(values, step=step)

    def close(self, status: str = "FINISHED") -> None:
        """Finish the run with an exit code for `status` (0 when FINISHED) and stop W&B's service process."""
        code = STATUS_EXIT.get(status, 1)
        try:
            self.run.finish(exit_code=code)
        finally:
            self.wandb.teardown(exit_code=code)


def _redacted(e: Exception) -> str:
    text = str(e)
    key = os.environ.get("WANDB_API_KEY")
    return text.replace(key, "***") if key else text


# ---- W&B's transaction log (run-<id>.wandb): LevelDB's log format behind a 7-byte header, each record a
# protobuf wandb.proto.wandb_internal_pb2.Record. wandb (0.30, 0.31) ships no Python reader of its own.

HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1 (little-endian), version 0
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> Iterator[bytes]:
    """The records of one transaction log, in order; stops at the first torn or damaged one (a kill)."""
    data = path.read_bytes()
    if not data.startswith(HEADER):
        return
    pos, pending = len(HEADER), b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zeros: the rest of the block is padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            return
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_history(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(step, {key: value}) for each history row in a transaction log, as W&B recorded it."""
    # a star import of the protobuf major version's module, opaque to a type checker
    pb: Any = importlib.import_module("wandb.proto.wandb_internal_pb2")
    for raw in read_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
            yield record.history.step.num, row


def last_logged_step(wandb_dir: Path, run_id: str) -> int:
    """The highest step in this run's transaction logs under `wandb_dir` (every start's), 0 if none."""
    last = 0
    # each start's directory is offline-run-<time>-<id>, or ...-<id>-1 when two starts share a second
    for path in wandb_dir.glob(f"*/run-{run_id}.wandb"):
        for step, _ in read_history(path):
            last = max(last, step)
    return last


def start_wandb(cfg: WandbSpec, name: str, out: Path, config: dict[str, Any], resumed: bool) -> Wandb | None:
    """The W&B run: the output directory's own when resuming from a checkpoint; a new one for a start at step 0."""
    return Wandb(cfg, name, out, config, resumed) if cfg.enabled else None
