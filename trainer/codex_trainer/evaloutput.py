"""Where `codex-train eval` writes its lines: to --output, unless that would replace one of its inputs or a
file of the run it evaluates (refused before anything loads), else to stdout."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from .contract import CHECKPOINTS_DIR
from .errors import SpecError

RUN_FILES = ("run.json", "metrics.jsonl", "mlflow.db", "mlflow_run_id", "wandb_run_id", ".codex-train.lock")
RUN_DIRS = (CHECKPOINTS_DIR, "final", "base-model", "cache", "tensorboard", "wandb")


def refuse_overwriting(output: Path, inputs: list[tuple[str, str]], model: Path | None, run: Path | None) -> None:
    """SpecError when `output` is one of `inputs` ((what it is, its path): the data, the prompts), under the model
    directory evaluated, or a file of its run (a new file beside the run's, RUN/eval.jsonl, is fine)."""
    mine = _overwritten(output, inputs, model, run)
    if mine:
        raise SpecError("--output", f"'{output}' is {mine}; writing there would replace it: name another file")


def _overwritten(output: Path, inputs: list[tuple[str, str]], model: Path | None, run: Path | None) -> str | None:
    out = output.resolve()
    for what, name in inputs:
        if Path(name).resolve() == out or _same_file(Path(name), out):  # a hard link is the same file too
            return what
    if model is not None and model.is_dir() and out.is_relative_to(model.resolve()):
        return "inside the model evaluated"
    if run is not None:
        run = run.resolve()
        if out.parent == run and out.name in RUN_FILES:
            return f"the run's own {out.name}"
        if any(out.is_relative_to(run / d) for d in RUN_DIRS):
            return f"inside the run's {out.relative_to(run).parts[0]}/"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # one of them is not there: not the same
        return False


def write_lines(text: str, output: str | None) -> int:
    """The lines to `output` (a file) or stdout; the exit code (141 when stdout's reader has gone)."""
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise SpecError("--output", f"cannot write '{output}': {e.strerror or e}") from None
        return 0
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head -1`: the reader took what it wanted; end quietly, as other tools do
        from .console import to_nowhere

        to_nowhere(sys.stdout.fileno())  # what is left in the buffer goes nowhere at exit
        return 128 + signal.SIGPIPE
    return 0
