"""The Codex trainer: fine-tunes a causal LM from a CodexTrainingJob spec, on one machine or in a pod."""

import contextlib
import os
import signal
import sys

__version__ = "0.1.0"


def _stopped_while_starting(signum: int, _frame: object) -> None:
    """Exit at once, 128 + signum (contract.SIGNAL_EXIT_BASE): nothing is trained or written while the program
    starts. Not by SystemExit: raised while `import torch` runs, it leaves torch half made, and the interpreter's
    shutdown can crash on that (SIGSEGV, exit -11, once in the fresh-clone suite); os._exit skips the shutdown."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or gone stream: nothing more to say there
            stream.flush()
    os._exit(128 + signum)


# A container's first process (the trainer pod's `codex-train launch`) gets no signal it has no handler for: the
# kernel drops it. A stop that came while Python imports the trainer (a second or more) was lost, and the pod
# trained on until its grace period ran out. So the program, as PID 1, takes SIGTERM and SIGINT from its first
# import; `launch` then installs its own handlers, and training its own.
if os.getpid() == 1 and os.path.basename(sys.argv[0]) == "codex-train":
    for _signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_signum, _stopped_while_starting)
