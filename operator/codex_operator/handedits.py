"""An attempt Job edited by hand (`kubectl patch job`): what the operator says of it, and whether the edit split a
multi-node attempt. The operator owns its attempt Jobs and sets them back (status._live), except a split attempt,
which cannot go on and is replaced (status._split). Pure functions of the Attempt."""

from __future__ import annotations

from .attempts import Attempt

PAUSE = "to pause the job, set spec.runPolicy.suspend: true on the CodexTrainingJob"


def suspended(latest: Attempt) -> str:
    """The attempt Job was suspended by an edit of the Job itself (not by runPolicy.suspend, nor a queue)."""
    return (
        f"Job {latest.name} was suspended by an edit of the Job, which stops its pods: resumed, since "
        f"runPolicy.suspend is false; its pods start again from the newest checkpoint ({PAUSE})"
    )


def resumed(latest: Attempt) -> str:
    """The attempt Job of a job suspended by runPolicy.suspend was resumed by an edit of the Job itself."""
    return (
        f"Job {latest.name} was resumed by an edit of the Job while runPolicy.suspend is true: suspended again "
        "(to resume the job, set spec.runPolicy.suspend: false on the CodexTrainingJob)"
    )


def scaled(latest: Attempt) -> str:
    """The attempt Job's parallelism was edited (to 0 for all its ranks, or above their number)."""
    stopped = (latest.parallelism or 0) < (latest.completions or 0)
    then = "; the pods it stopped start again from the newest checkpoint" if stopped else ""
    return (
        f"Job {latest.name}'s parallelism was set to {latest.parallelism} by an edit of the Job: set back to "
        f"{latest.completions}, one pod a node (numNodes){then} ({PAUSE})"
    )


def split(latest: Attempt, may_change: bool, written: int) -> bool:
    """A multi-node attempt's Job scaled to some of its ranks by an edit of the Job (outside a queue): the ranks
    left cannot train without the others, and a rank started again cannot join them."""
    return (
        may_change
        and latest.outcome is None
        and (latest.completions or 0) > 1
        and 0 < (latest.parallelism or 0) < (latest.completions or 0)
        and latest.job_generation > max(written, 1)
    )
