"""codex-train: run a CodexTrainingJob file on this machine.

    codex-train run FILE [--output-dir DIR] [--set PATH=VALUE ...] [--metrics-port N]
    codex-train launch FILE --output-dir DIR [--set PATH=VALUE ...] [--metrics-port N]   # a pod's entry point
    codex-train validate FILE [--set PATH=VALUE ...]
    codex-train eval PATH [--data FILE ...] [--output FILE] [--max-batches N] [--prompts FILE]   # see evaluate.py

Exit codes: 0 success; 2 invalid spec or data (permanent: the operator does not retry); 128+signal
after a graceful stop with a checkpoint written (143 for SIGTERM, 130 for Ctrl-C, 129 for a closed
terminal); 1 when the Hub could not be reached, and anything else is a crash: both are retried from
the last checkpoint.
With CODEX_TERMINATION_LOG naming a file, the message of a non-zero exit is written there too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .contract import (
    CHECKPOINT_MANIFEST,
    CHECKPOINTS_DIR,
    EXIT_OK,
    EXIT_RETRYABLE,
    EXIT_USER_ERROR,
    FINAL_CHECKPOINT,
    FINAL_CHECKPOINT_SAVED_AT,
    FINAL_CHECKPOINT_STEP,
    FINAL_EVAL_LOSS,
    FINAL_LOSS,
    FINAL_STEP,
    SIGNAL_EXIT_BASE,
    STEP_DIR,
    STEP_DIR_PREFIX,
    stopped_message,
)
from .errors import (
    SpecError,
    TransientError,
    is_disk_full,
    write_termination_message,
)
from .evaluate import add_arguments as add_eval_arguments
from .manifest import load_manifest
from .spec import Manifest


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if argv is None:  # the program, not a call in a test or a notebook: from here it only exits
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a stop that comes after the run ended
            if signum == signal.SIGINT or signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, _exit_at_once(code))
    return code


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "eval":
            from .evaluate import run_eval

            return run_eval(args)
        manifest = load_manifest(args.file, args.set)
        if args.command == "validate":
            from .check import check_job

            unchecked = check_job(manifest.spec, warn=lambda m: print(f"codex-train: warning: {m}", file=sys.stderr))
            for line in unchecked:  # the job is valid as far as can be told here; these are left to the pods
                print(f"codex-train: not checked here: {line}", file=sys.stderr)
            print(json.dumps(manifest.spec.shown(), indent=2))
            return EXIT_OK
        if args.command == "launch":
            from .launch import launch

            return launch(manifest, args)
        return run_in_process(manifest, args)
    except SpecError as e:
        lines = [f"invalid {path}: {msg}" if path else msg for path, msg in e.problems]
        for line in lines:
            print(f"codex-train: {line}", file=sys.stderr)
        write_termination_message("\n".join(lines))
        return EXIT_USER_ERROR
    except TransientError as e:
        print(f"codex-train: {e}", file=sys.stderr)
        write_termination_message(str(e))
        return EXIT_RETRYABLE
    except _StopNow:
        print("codex-train: stopped at once by a second Ctrl-C; the last complete checkpoint stays", file=sys.stderr)
        return SIGNAL_EXIT_BASE + signal.SIGINT
    except KeyboardInterrupt:  # before a run set its own handler (reading the job, importing torch), or not a run
        began = " before training began; nothing was written" if args.command == "run" else ""
        print(f"codex-train: stopped by Ctrl-C{began}", file=sys.stderr)
        return SIGNAL_EXIT_BASE + signal.SIGINT
    except Exception as e:
        if is_disk_full(e):  # a write no step above expected to fail: still one line, and retryable
            where = f" writing {e.filename}" if isinstance(e, OSError) and e.filename else ""
            said = (str(e).splitlines() or [type(e).__name__])[0]
            message = f"disk full{where}: {said}; free space there (retryable)"
            print(f"codex-train: {message}", file=sys.stderr)
            write_termination_message(message)
            return EXIT_RETRYABLE
        # a crash: the traceback goes to stderr as before, one line to the operator
        write_termination_message(f"crashed: {type(e).__name__}: {e}".splitlines()[0])
        raise


class _StopNow(KeyboardInterrupt):
    """A second Ctrl-C during a run: stop at once."""


def _exit_at_once(code: int) -> Callable[[int, object], None]:
    """A Ctrl-C, SIGTERM or SIGHUP while the process winds down after a run (its work saved; libraries' exit hooks
    still running): leave now, without their traceback, with the run's own exit code (a finished run's 0, not the
    signal's 128+N, which says it stopped early)."""

    def handler(_signum: int, _frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    return handler


def _hung_up() -> None:
    """SIGHUP: the terminal is gone. What went to it goes nowhere from now on (a write to a closed terminal
    fails); output to a file stays there. The run stops as for SIGTERM, with a checkpoint."""
    from .console import to_nowhere

    with contextlib.suppress(OSError):
        to_nowhere(1, 2)


def run_in_process(manifest: Manifest, args: argparse.Namespace) -> int:
    """Train in this process (`codex-train run`, and `launch` with one process in all)."""
    from .train import StopRequest, train  # torch is imported only when training

    stop = StopRequest()

    def on_signal(signum, _frame):
        if stop.signum not in (None, signal.SIGPIPE) and signum == signal.SIGINT:
            raise _StopNow  # a second stop, by Ctrl-C: stop now, the last checkpoint stays (a closed pipe was none)
        if signum == signal.SIGHUP:
            _hung_up()
        stop.signum = signum
        again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""  # a second SIGTERM waits too
        print(
            f"codex-train: {signal.Signals(signum).name} received: finishing this step and checkpointing{again}",
            file=sys.stderr,
            flush=True,
        )

    name = manifest.metadata.name
    out = Path(args.output_dir) if args.output_dir else Path("runs") / name
    # SIGHUP too (a closed terminal), unless ignored: nohup's runs go on
    stopping = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        stopping.append(signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in stopping}
    try:
        code = train(manifest.spec, name, out, stop, metrics_port=args.metrics_port)
        if code > SIGNAL_EXIT_BASE:
            write_termination_message(_stopped_message(code - SIGNAL_EXIT_BASE, out / CHECKPOINTS_DIR))
        elif code == EXIT_OK:
            write_termination_message(json.dumps(_final_numbers(out)))
        return code
    finally:  # called in-process (tests, notebooks), the caller's handlers come back
        for s, handler in previous.items():
            signal.signal(s, handler)


def _final_numbers(out: Path) -> dict:
    """The last step, loss and eval loss of a finished run (from metrics.jsonl) and its newest
    checkpoint: the operator's final progress, since the run's metrics endpoint is gone once it ends."""
    final: dict = {}
    try:
        lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in row:
            final.update({FINAL_STEP: row.get("step"), FINAL_LOSS: row["loss"]})
        if "eval_loss" in row:
            final[FINAL_EVAL_LOSS] = row["eval_loss"]
    newest = _newest_checkpoint(out / CHECKPOINTS_DIR)
    if newest is not None:
        saved = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest.stat().st_mtime))
        final[FINAL_CHECKPOINT] = {FINAL_CHECKPOINT_STEP: _step_of(newest), FINAL_CHECKPOINT_SAVED_AT: saved}
    return final


def _stopped_message(signum: int, checkpoints: Path) -> str:
    """ "stopped by SIGTERM after checkpoint at step N": the newest complete checkpoint on disk."""
    newest = _newest_checkpoint(checkpoints)
    return stopped_message(signal.Signals(signum).name, _step_of(newest) if newest else None)


def _newest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint whose manifest is there and names the step of its directory (one copied under
    another step's name is no checkpoint a rerun resumes from)."""
    complete = [d for d in checkpoints.glob(f"{STEP_DIR_PREFIX}*") if _manifest_step(d) == _step_of(d)]
    return max(complete, key=_step_of, default=None)


def _manifest_step(checkpoint: Path) -> int | None:
    try:
        return json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None


def _step_of(checkpoint: Path) -> int:
    named = STEP_DIR.match(checkpoint.name)
    return int(named.group(1)) if named else -1


class _Parser(argparse.ArgumentParser):
    """A wrong option or value in one line, as every other refusal (exit 2); --help still shows the usage."""

    def error(self, message: str) -> NoReturn:
        print(f"codex-train: {message} ({self.prog} --help lists the options)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="codex-train", description="Fine-tune a causal LM from a CodexTrainingJob file.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train (resuming from the newest complete checkpoint, if any)")
    launch = sub.add_parser(
        "launch",
        help="a pod's entry point: check the job, then train on NNODES x NPROC_PER_NODE processes "
        "(rendezvous from NNODES, NPROC_PER_NODE, NODE_RANK, MASTER_ADDR, MASTER_PORT)",
    )
    validate = sub.add_parser(
        "validate",
        help="check the job without training and print the resolved spec: the file and its fields, the data "
        "files (exist, parse, a string in textField on every row), the tokenizer and model sources (resolve; "
        "configs only, no weights), peft target modules and modules to save (exist in the model), maxSeqLength "
        "(within the model's positions); exit 2 naming each problem. What cannot be checked here (files on "
        "data.existingClaim, a Hub source the Hub cannot be reached for) is named on stderr and left to the job",
    )
    for s in (run, launch, validate):
        s.add_argument("file", help="a CodexTrainingJob manifest (YAML)")
        s.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="PATH=VALUE",
            help="override a spec field, e.g. --set training.maxSteps=20 (repeatable)",
        )
    run.add_argument(
        "--output-dir", type=_directory, help="where checkpoints, metrics and the result go (default runs/<name>)"
    )
    launch.add_argument(
        "--output-dir", type=_directory, required=True, help="where checkpoints, metrics and the result go"
    )
    for s in (run, launch):
        s.add_argument(
            "--metrics-port",
            type=_port,
            help="serve Prometheus metrics on this port (rank 0); 0: a free port, named in the start event",
        )
    add_eval_arguments(
        sub.add_parser(
            "eval",
            help="loss, perplexity and next-token accuracy of a run's final/, a checkpoint or a model on data "
            "files (default: the run's validation split), as NDJSON; --prompts adds greedy completions",
        )
    )
    return p


def _directory(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a directory, or leave the option out for runs/<name>")
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number (1 to 65535, or 0 for a free one)")
    return value


if __name__ == "__main__":
    sys.exit(main())
