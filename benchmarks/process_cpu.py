"""CPU time by program on this machine (psutil): what the benchmarks read of the API server, etcd, the
controllers, kwok and the operator. A kind node's processes run in a container on this kernel, so they
are visible here by name."""

from __future__ import annotations

import psutil


def cpu_by_process(names: tuple[str, ...], pids: dict[int, str] | None = None) -> dict[str, float]:
    """CPU seconds so far of every process named in `names` (processes of one name added up) and of each
    process in `pids` (pid -> the label to report it under), plus "machine": the whole machine's busy time."""
    pids = pids or {}
    out: dict[str, float] = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is None:
            continue
        who = pids.get(p.pid, p.info["name"])
        if p.pid in pids or who in names:
            out[who] = out.get(who, 0.0) + t.user + t.system
    m = psutil.cpu_times()
    out["machine"] = m.user + m.nice + m.system + m.irq + m.softirq + getattr(m, "steal", 0.0)
    return out


def count(name: str) -> int:
    """How many processes of this name run on the machine."""
    return sum(1 for p in psutil.process_iter(["name"]) if p.info["name"] == name)
