"""`codex-train launch`: the entry point of a trainer pod.

    codex-train launch FILE --output-dir DIR [--metrics-port N] [--set PATH=VALUE ...]

The rendezvous comes from the environment (the operator sets it from the indexed Job and its headless
Service): NNODES, NPROC_PER_NODE, NODE_RANK, MASTER_ADDR, MASTER_PORT (defaults 1, 1, 0, localhost,
29500). The job file and its data files are checked first, so a bad job exits 2 with its message
before any worker starts. One process in all: the training runs here, exactly as `codex-train run`.
Several: node ranks above 0 wait until MASTER_ADDR resolves (pods of an indexed Job get DNS names only
once running), then torch.distributed.run starts this node's workers (static rendezvous), each running
`codex-train run`, and their outcome is mapped onto the exit-code contract, which torchrun alone
loses (it exits 1 whatever the workers returned):

    any worker exited 2              -> 2 (the worker's message is passed on)
    SIGTERM/SIGINT to the launcher   -> forwarded; 128+signal once the workers have checkpointed and stopped
    every worker stopped by a signal -> 128+signal
    any other failure                -> 1 (retried from the last checkpoint)
    all workers succeeded            -> 0

CODEX_SHUTDOWN_TIMEOUT (seconds, default 60) bounds how long stopping workers may take before they
are killed; CODEX_DNS_TIMEOUT (default 300) bounds the wait for MASTER_ADDR.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .contract import (
    DEFAULT_MASTER_PORT,
    ENV_DNS_TIMEOUT,
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_NNODES,
    ENV_NODE_RANK,
    ENV_NPROC_PER_NODE,
    ENV_SHUTDOWN_TIMEOUT,
    ENV_WORKER_MESSAGES,
    EXIT_OK,
    EXIT_RETRYABLE,
    EXIT_USER_ERROR,
    SIGNAL_EXIT_BASE,
)
from .errors import (
    SpecError,
    TransientError,
    not_found,
    read_worker_messages,
    write_termination_message,
)
from .plugins import check_callbacks
from .spec import JobSpec, Manifest


@dataclass(frozen=True)
class Rendezvous:
    nnodes: int = 1
    nproc_per_node: int = 1
    node_rank: int = 0
    master_addr: str = "localhost"
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Rendezvous:
        def number(name: str, default: int, low: int, high: int | None = None) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SpecError(f"env {name}", f"must be an integer (got {raw!r})") from None
            if value < low:
                raise SpecError(f"env {name}", f"must be at least {low} (got {value})")
            if high is not None and value > high:
                raise SpecError(f"env {name}", f"must be at most {high} (got {value})")
            return value

        r = cls(
            nnodes=number(ENV_NNODES, 1, 1),
            nproc_per_node=number(ENV_NPROC_PER_NODE, 1, 1),
            node_rank=number(ENV_NODE_RANK, 0, 0),
            master_addr=env.get(ENV_MASTER_ADDR, "").strip() or "localhost",
            master_port=number(ENV_MASTER_PORT, DEFAULT_MASTER_PORT, 1, 65535),  # a TCP port
        )
        if r.node_rank >= r.nnodes:
            raise SpecError(f"env {ENV_NODE_RANK}", f"must be below {ENV_NNODES}={r.nnodes} (got {r.node_rank})")
        return r


def check_data_files(spec: JobSpec) -> None:
    """Every data file exists and is a readable file: SpecError naming each one that is not."""
    problems = []
    files = [("spec.data.train", name) for name in spec.data.train_files]
    files += [("spec.data.validation", name) for name in spec.data.validation_files]
    for field, name in files:
        path = Path(name)
        if not path.exists():
            problems.append((field, not_found(name, spec.data.existing_claim)))
        elif path.is_dir():
            problems.append((field, f"'{name}' is a directory; name the data files in it"))  # as the reader says
        elif not path.is_file():  # as the reader says (data.check_data_path)
            what = "is not a regular file (a pipe or a device); save its contents to a file"
            problems.append((field, f"'{name}' {what}"))
        elif not os.access(path, os.R_OK):
            problems.append((field, f"'{name}' is not readable by uid {os.getuid()}"))
    if problems:
        raise SpecError(problems)


def outcome(exit_codes: dict[int, int], signum: int | None = None) -> int:
    """The launcher's exit code from its workers' (rank -> exit code; negative: killed by that signal)."""
    if signum:
        return SIGNAL_EXIT_BASE + signum
    codes = list(exit_codes.values())
    if any(c == EXIT_USER_ERROR for c in codes):
        return EXIT_USER_ERROR
    failed = [c for c in codes if c != EXIT_OK]
    if not failed:
        return EXIT_OK
    if all(c > SIGNAL_EXIT_BASE for c in failed):  # every failed worker stopped gracefully on a signal
        return max(failed)
    return EXIT_RETRYABLE


def launch(manifest: Manifest, args: argparse.Namespace) -> int:
    """Run the validated job on this node's share of the world; returns the exit code."""
    from .cli import run_in_process

    # Until training (or torch's agent) installs its own handlers a signal ends the launch at once: there
    # is nothing to save yet. As a container's PID 1 a signal without a handler would be ignored.
    def early_stop(signum, _frame):
        write_termination_message(f"stopped by {signal.Signals(signum).name} before training started")
        raise SystemExit(SIGNAL_EXIT_BASE + signum)

    previous = {s: signal.signal(s, early_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        check_data_files(manifest.spec)
        check_callbacks(manifest.spec.callbacks)
        rdzv = Rendezvous.from_env()
        if rdzv.world_size == 1:
            return run_in_process(manifest, args)
        if rdzv.node_rank > 0:
            wait_for_dns(rdzv.master_addr, float(os.environ.get(ENV_DNS_TIMEOUT, "300")))
        return _launch_workers(rdzv, args)
    finally:  # called in-process (tests), the caller's handlers come back
        for s, handler in previous.items():
            signal.signal(s, handler)


def wait_for_dns(host: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except socket.gaierror:
            if time.monotonic() > deadline:
                raise TransientError(f"{ENV_MASTER_ADDR} {host} did not resolve within {timeout:.0f} s") from None
            time.sleep(1)


def _launch_workers(rdzv: Rendezvous, args: argparse.Namespace) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    worker_args = ["run", str(args.file), "--output-dir", str(args.output_dir)]
    if args.metrics_port is not None:
        worker_args += ["--metrics-port", str(args.metrics_port)]
    for item in args.set:
        worker_args += ["--set", item]
    torchrun_args = parse_args(
        [
            f"--nnodes={rdzv.nnodes}",
            f"--node-rank={rdzv.node_rank}",
            f"--nproc-per-node={rdzv.nproc_per_node}",
            f"--master-addr={rdzv.master_addr}",
            f"--master-port={rdzv.master_port}",
            "--rdzv-backend=static",
            "--max-restarts=0",  # the operator restarts the whole group from the last checkpoint
            "--module",
            "codex_trainer.cli",
            *worker_args,
        ]
    )
    config, cmd, cmd_args = config_from_args(torchrun_args)
    config.shutdown_timeout = int(os.environ.get(ENV_SHUTDOWN_TIMEOUT, "60"))

    with tempfile.TemporaryDirectory(prefix="codex-launch-") as messages:
        os.environ[ENV_WORKER_MESSAGES] = messages  # each worker writes its message there, not to the pod's log
        codes: dict[int, int] = {}
        signum = None
        try:
            results = elastic_launch(config, cmd)(*cmd_args)
            codes = {rank: 0 for rank in results}
        except ChildFailedError as e:
            codes = {rank: failure.exitcode for rank, failure in e.failures.items()}
        except SignalException as e:
            signum = int(e.sigval)
        finally:
            os.environ.pop(ENV_WORKER_MESSAGES, None)
        code = outcome(codes, signum)
        worker_messages = read_worker_messages(Path(messages))
    report(code, codes, worker_messages, signum)
    return code


def report(code: int, codes: dict[int, int], worker_messages: dict[int, str], signum: int | None) -> None:
    """One line on stderr for the launch as a whole; the pod's termination message."""
    if code == EXIT_OK:
        if worker_messages.get(0):
            write_termination_message(worker_messages[0])  # rank 0's summary of the finished run
        return
    if code == EXIT_USER_ERROR:
        ranks = [r for r, c in sorted(codes.items()) if c == EXIT_USER_ERROR]
        lines = _unique(worker_messages.get(r, "") for r in ranks) or [f"worker rank {ranks[0]} exited 2"]
        summary = f"worker rank {ranks[0]} found an invalid spec or data (exit 2)"
    elif code > SIGNAL_EXIT_BASE:
        name = signal.Signals(code - SIGNAL_EXIT_BASE).name
        lines = [worker_messages.get(0) or worker_messages.get(min(worker_messages, default=0)) or f"stopped by {name}"]
        summary = f"stopped by {name}" + (" (forwarded to the workers)" if signum else "")
    else:
        lines = []
        for r, c in sorted(codes.items()):
            if c != EXIT_OK:
                why = f"killed by {signal.Signals(-c).name}" if c < 0 else f"exited {c}"
                lines.append(f"worker rank {r} {why}" + (f": {worker_messages[r]}" if worker_messages.get(r) else ""))
        summary = "; ".join(lines) or "the workers failed"
    print(f"codex-train launch: {summary}", file=sys.stderr, flush=True)
    write_termination_message("\n".join(lines))


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        for line in item.splitlines():
            if line and line not in seen:
                seen.append(line)
    return seen
