"""The report of benchmarks/operator_latency.py: its results (a dict) as the Markdown block that
benchmarks/README.md holds between its markers, and the README's update."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent / "README.md"


def _pct(xs: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of xs; NaN when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def report(res: dict[str, Any], command: str, where: str) -> str:
    """The block for benchmarks/README.md; `where` names the machine and the cluster it ran on."""
    n = res["jobs"]
    mb = lambda b: f"{b / 2**20:.0f} MB"  # noqa: E731
    lines = [f"`{command}` — {where}", ""]
    lines += ["| interval | n | p50 | p95 | max |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, xs in res["latency"].items():
        fmt = lambda x: f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"  # noqa: E731
        if xs:
            lines.append(f"| {label} | {len(xs)} | {fmt(_pct(xs, 50))} | {fmt(_pct(xs, 95))} | {fmt(max(xs))} |")
        else:
            lines.append(f"| {label} | 0 | – | – | – |")
    # the operator posts its Events through the same client: they are counted once, as Events (below)
    w = {k: v for k, v in res["writes_total"].items() if k[1] != "Event"}
    writes = sum(w.values())
    after_delete = sum(v for k, v in res["writes_delete"].items() if k[1] != "Event")
    by = {}
    for (verb, kind, outcome), v in sorted(w.items()):
        key = f"{verb} {kind}" + ("" if outcome == "ok" else f" ({outcome})")
        by[key] = by.get(key, 0) + v
    breakdown = ", ".join(f"{k} {v / n:.2f}" for k, v in by.items())
    ev, fin = res["events_ours"], res["finalizer_writes"]
    reasons = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(res["events_ours_by_reason"].items()))
    lines += [
        "",
        f"- {n} jobs created in {res['created_in_s']:.1f} s; all Running {res['all_running_in_s']:.1f} s after the "
        f"first create ({res['reached']['running']}/{n} reached Running"
        + (f"; other phases: {sorted(set(res['other_phases'].values()))}" if res["other_phases"] else "")
        + f"); deleted and the children collected in {res['delete_in_s']:.1f} s",
        f"- operator RSS: idle {mb(res['rss']['idle'])}, peak {mb(res['rss']['peak'])}, with {n} running "
        f"{mb(res['rss']['running'])}, end (jobs deleted) {mb(res['rss']['end'])}"
        + (
            f", {res['rss']['settled_after_s']} s later {mb(res['rss']['settled'])} "
            f"({res['rss']['settled_connections']} connections)"
            if "settled" in res["rss"]
            else ""
        )
        + f"; CPU {res['cpu_s']['total']:.1f} s "
        f"({res['cpu_s']['total'] / n * 1000:.0f} ms per job); {res['api_connections']} TCP connections to the API "
        "server while they run",
        *_burst_line(res["cpu_s"].get("burst")),
        f"- writes per job besides progress: **{(writes + ev + fin) / n:.2f}** = the operator's API writes "
        f"{writes / n:.2f} ({breakdown}) + Events {ev / n:.2f} ({reasons}) + kopf's finalizer patches "
        f"{fin / n:.2f}; of the API writes {after_delete / n:.2f} came after the delete",
        f"- reads per job: {sum(res['reads_total'].values()) / n:.1f} "
        + "("
        + ", ".join(
            f"{v} {k} {c / n:.1f}" for (v, k, o), c in sorted(res["reads_total"].items()) if o == "ok" or c / n >= 0.05
        )
        + f"); progress reads that failed (kwok pods serve nothing): {res['progress_errors'] / n:.1f} per job",
        f"- CodexTrainingJob writes seen on the watch (MODIFIED, anyone's): {res['ctj_modified'] / n:.2f} per job",
        *_reconcile_line(res, n),
        "- the timer's round (every job's progress read, wait explained, retry or TTL) with all "
        + (
            f"{n} running: median {_pct(res['rounds_all_running'], 50):.1f} s, "
            f"max {max(res['rounds_all_running']):.1f} s"
            if res["rounds_all_running"]
            else f"{n} running: not sampled"
        ),
        f"- the operator's log: {res['log']['levels'].get('ERROR', 0)} ERROR, "
        f"{res['log']['levels'].get('WARNING', 0)} WARNING lines"
        + (f" (first: {res['log']['errors'][0]})" if res["log"]["errors"] else "")
        + f"; calls answered 429 and sent again: {res['throttled']:.0f} (the operator's client), log lines of "
        f"retried requests: {res['log']['retry_lines']}; calls that failed: {sum(res['api_errors'].values()):.0f}",
        "- each job: went into Running exactly once, one attempt Job, one ConfigMap, no Service: "
        + (
            f"**{n}/{n}**"
            if not res["wrong"]
            else "; ".join(f"**{k}: {len(v)}** (e.g. {', '.join(v[:3])})" for k, v in res["wrong"].items())
        ),
        f"- others on the cluster at start → end: `pytest tests/integration` "
        f"{_yes(res['others']['start']['pytest tests/integration'])} → "
        f"{_yes(res['others']['end']['pytest tests/integration'])}; other operator processes "
        f"{res['others']['start']['codex_operator'] - 1} → {res['others']['end']['codex_operator'] - 1}",
    ]
    return "\n".join(lines)


def _reconcile_line(res: dict[str, Any], n: int) -> list[str]:
    """How many reconciles the jobs took, and their wall time (awaits included), from the operator's histogram."""
    count = res.get("reconciles") or 0
    if not count:
        return []
    mean = res["reconcile_s"] / count * 1000
    return [f"- reconciles per job: {count / n:.1f} (the operator's `codex_operator_reconcile_seconds`), {mean:.1f} ms "
            "of wall time each on average, its API calls' waits included"]  # fmt: skip


def _burst_line(burst: dict[str, Any] | None) -> list[str]:
    """Who had the cores from the first create until every attempt Job existed (what create→Job waited on)."""
    if not burst:
        return []
    wall, cores, by = burst["wall"], burst["cores"], dict(burst["by"])
    machine = by.pop("machine")
    parts = sorted(by.items(), key=lambda kv: -kv[1])
    rest = machine - sum(by.values())
    shares = ", ".join(f"{k} {v:.1f} s" for k, v in parts if v >= 0.05) + f", everything else {max(rest, 0):.1f} s"
    return [
        f"- CPU from the first create until every attempt Job existed ({wall:.1f} s; {cores} cores: "
        f"{cores * wall:.0f} core-seconds): the machine was busy {machine:.1f} s "
        f"({machine / (cores * wall):.0%}): {shares}"
    ]


def _yes(count: int) -> str:
    return "running" if count else "none"


def update_readme(n: int, block: str, throttled: bool = False) -> None:
    """Replace this N's block between its markers in benchmarks/README.md (the prose around is by hand)."""
    key = f"{n}-throttled" if throttled else str(n)
    start, end = f"<!-- operator-latency:{key} -->", f"<!-- /operator-latency:{key} -->"
    text = README.read_text()
    new = f"{start}\n{block}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: new, text, flags=re.S)
    else:
        if "## Operator latency" not in text:
            text = text.rstrip("\n") + "\n\n## Operator latency\n"
        title = f"{n:,} jobs" + (", the operator throttled (429s)" if throttled else "")
        text = text.rstrip("\n") + f"\n\n### {title}\n\n{new}\n"
    README.write_text(text)


def malloc_report(path: Path, since: float) -> str:
    """Where the operator's RSS was (benchmarks/malloc_stats) at the round's first sample, at its highest, and at
    its last: glibc's heap and CPython's arenas."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        t, *fields = line.split()
        if float(t) >= since:
            rows.append({k: int(v) for k, v in (f.split("=") for f in fields)})
    if not rows:
        return "malloc stats: no samples"
    out = ["| moment | RSS | glibc heap in use | CPython arenas held (1 MiB) | CPython blocks in use |",
           "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, row in (("idle", rows[0]), ("peak", max(rows, key=lambda r: r["rss"])), ("last", rows[-1])):
        mb = lambda n: f"{n / 2**20:.0f} MB"  # noqa: E731
        out.append(f"| {name} | {mb(row['rss'])} | {mb(row['glibc_in_use'])} | {row['py_arenas']} | "
                   f"{mb(row['py_used'])} |")  # fmt: skip
    return "\n".join(out)


def rounds_summary(rounds: list[dict[str, Any]]) -> str:
    """One line per round: the operator's memory and CPU, and whether every job was right."""
    lines = ["| round | RSS before | peak | after the delete | 30 s later | CPU per job | correct |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for i, res in enumerate(rounds, 1):
        n, right = res["jobs"], res["jobs"] - len(set().union(*res["wrong"].values()))
        mb = [f"{res['rss'][k] / 2**20:.0f} MB" for k in ("idle", "peak", "end", "settled")]
        lines.append(f"| {i} | {' | '.join(mb)} | {1e3 * res['cpu_s']['total'] / n:.0f} ms | {right}/{n} |")
    return "\n".join(lines)
