"""Where a process's CPU goes, from py-spy's raw stacks (`py-spy record --format raw`): by package and
by function, the samples of waiting threads left out. Used by operator_latency.py --profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROFILE_RATE = 100  # py-spy samples per second: each sample of a busy thread is 10 ms of its CPU


# leaf frames that wait rather than compute (py-spy counts a thread blocked in a C call as busy): the
# event loop's epoll, an idle worker thread's queue get, a lock or an event
WAITING = ("EpollSelector.select (", "_PollLikeSelector.select (", "_worker (concurrent/futures/thread.py",
           "Condition.wait (", "Event.wait (", "Thread._wait_for_tstate_lock (")  # fmt: skip


def profile(path: Path) -> dict[str, Any]:
    """py-spy's raw stacks (`frame;frame;...;leaf count`) less the samples that wait (WAITING), so that a
    sample is CPU time, summed by the package of the leaf frame (where the time is spent), by package
    anywhere on the stack (what it costs, callees included) and by leaf function."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = waiting = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = stack.split(";")
        if frames[-1].startswith(WAITING):
            waiting += k
            continue
        total += k
        packages = [_package(f) for f in frames]
        own[packages[-1]] = own.get(packages[-1], 0) + k
        for pkg in set(packages):
            inclusive[pkg] = inclusive.get(pkg, 0) + k
        leaf = frames[-1].rsplit(":", 1)[0] + ")" if ":" in frames[-1] else frames[-1]  # the function, any line
        leaves[leaf] = leaves.get(leaf, 0) + k
    return {"total": total, "waiting": waiting, "own": own, "inclusive": inclusive, "leaves": leaves}


def _package(frame: str) -> str:
    """`JSONDecoder.raw_decode (json/decoder.py:353)` → `json`."""
    where = frame.rpartition(" (")[2].rstrip(")")
    path = where.rsplit(":", 1)[0]
    head = path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")
    return head or "?"


def profile_report(prof: dict[str, Any], n: int) -> str:
    ms = lambda k: f"{k / PROFILE_RATE * 1000 / n:.1f}"  # noqa: E731  # samples → ms of CPU per job
    top = lambda d, m: sorted(d.items(), key=lambda kv: -kv[1])[:m]  # noqa: E731
    lines = [
        f"Profile (py-spy, {PROFILE_RATE} Hz, from the first create to the children collected): "
        f"{prof['total'] / PROFILE_RATE:.1f} s of CPU sampled, {ms(prof['total'])} ms per job (and "
        f"{prof['waiting'] / PROFILE_RATE:.1f} s of threads waiting in epoll, a lock or a queue, left out).",
        "",
        "| package | ms per job, in its own code | ms per job, with what it calls |",
        "| --- | ---: | ---: |",
    ]
    for pkg, k in top(prof["own"], 12):
        lines.append(f"| {pkg} | {ms(k)} | {ms(prof['inclusive'].get(pkg, 0))} |")
    lines += ["", "| function (own time) | ms per job |", "| --- | ---: |"]
    lines += [f"| `{fn}` | {ms(k)} |" for fn, k in top(prof["leaves"], 12)]
    return "\n".join(lines)
