"""The Codex trainer: fine-tunes a causal LM from a CodexTrainingJob spec, on one machine or in a pod."""

import os
import signal
import sys

__version__ = "0.1.0"


def _stopped_while_starting(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # contract.SIGNAL_EXIT_BASE: stopped before anything was trained


# A container's first process (the trainer pod's `codex-train launch`) gets no signal it has no handler for: the
# kernel drops it. A stop that came while Python imports the trainer (a second or more) was lost, and the pod
# trained on until its grace period ran out. So the program, as PID 1, takes SIGTERM and SIGINT from its first
# import; `launch` then installs its own handlers, and training its own.
if os.getpid() == 1 and os.path.basename(sys.argv[0]) == "codex-train":
    for _signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_signum, _stopped_while_starting)
