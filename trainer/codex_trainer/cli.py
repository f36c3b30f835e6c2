"""codex-train: run a CodexTrainingJob file on this machine.

    codex-train run FILE [--output-dir DIR] [--set PATH=VALUE ...] [--metrics-port N]
    codex-train validate FILE [--set PATH=VALUE ...]

Exit codes: 0 success; 2 invalid spec or data (permanent: the operator does not retry); 128+signal
after a graceful stop with a checkpoint written (143 for SIGTERM, 130 for Ctrl-C); 1 when the Hub
could not be reached, and anything else is a crash: both are retried from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .errors import EXIT_RETRYABLE, EXIT_USER_ERROR, SpecError, TransientError
from .manifest import load_manifest


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        manifest = load_manifest(args.file, args.set)
        if args.command == "validate":
            print(json.dumps(manifest.spec.model_dump(mode="json", by_alias=True), indent=2))
            return 0
        return _run(manifest, args)
    except SpecError as e:
        for path, msg in e.problems:
            print(f"codex-train: invalid {path}: {msg}" if path else f"codex-train: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TransientError as e:
        print(f"codex-train: {e}", file=sys.stderr)
        return EXIT_RETRYABLE


def _run(manifest, args) -> int:
    from .train import StopRequest, train  # torch is imported only when training

    stop = StopRequest()

    def on_signal(signum, _frame):
        if stop.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, the last checkpoint stays
        stop.signum = signum
        print(
            f"codex-train: {signal.Signals(signum).name} received: finishing this step and checkpointing "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    name = manifest.metadata.name
    out = Path(args.output_dir) if args.output_dir else Path("runs") / name
    return train(manifest.spec, name, out, stop, metrics_port=args.metrics_port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codex-train", description="Fine-tune a causal LM from a CodexTrainingJob file.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train (resuming from the newest complete checkpoint, if any)")
    validate = sub.add_parser("validate", help="check the file and print the resolved spec")
    for s in (run, validate):
        s.add_argument("file", help="a CodexTrainingJob manifest (YAML)")
        s.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="PATH=VALUE",
            help="override a spec field, e.g. --set training.maxSteps=20 (repeatable)",
        )
    run.add_argument("--output-dir", help="where checkpoints, metrics and the result go (default runs/<name>)")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    return p


if __name__ == "__main__":
    sys.exit(main())
