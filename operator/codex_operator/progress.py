"""status.progress and status.checkpoint from rank 0's Prometheus gauges, and the timestamps the status
carries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from codex_trainer import contract

from . import names


def checkpoint_path(step: int) -> str:
    """Where a checkpoint is in the trainer pod (status.checkpoint.path)."""
    return f"{names.OUTPUT_DIR}/{contract.checkpoint_dir(step)}"


def ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(s: str | None) -> datetime | None:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if s else None


def progress_from_metrics(
    samples: dict[str, float], now: datetime, previous: dict[str, Any] | None = None, fresh: float | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Turn rank 0's Prometheus gauges into status.progress and status.checkpoint; the ETA comes from
    the pace since the previous reading, when that is at most `fresh` seconds old (one from before a
    suspension or a restart would count the time nothing ran)."""
    step = int(samples.get(contract.METRIC_STEP, 0))
    total = int(samples.get(contract.METRIC_TOTAL_STEPS, 0))
    prog: dict[str, Any] = {"step": step, "totalSteps": total}
    if contract.METRIC_LOSS in samples:
        prog["loss"] = round4(samples[contract.METRIC_LOSS])
    if samples.get(contract.METRIC_EVAL_LOSS):
        prog["evalLoss"] = round4(samples[contract.METRIC_EVAL_LOSS])
    tps = samples.get(contract.METRIC_TOKENS_PER_SECOND)
    if tps:
        prog["tokensPerSecond"] = round(tps)
    prog = with_step(prog, step)
    before, when = (previous or {}).get("step"), parse_ts((previous or {}).get("updatedAt"))
    if when is not None and fresh is not None and (now - when).total_seconds() > fresh:
        when = None
    if before is not None and when is not None and before < step < total:
        pace = (now - when).total_seconds() / (step - before)
        prog["eta"] = duration((total - step) * pace)
    elif previous and previous.get("eta") and step == before:
        prog["eta"] = previous["eta"]
    prog["updatedAt"] = ts(now)
    ckpt = None
    if samples.get(contract.METRIC_CHECKPOINT_STEP):
        n = int(samples[contract.METRIC_CHECKPOINT_STEP])
        ckpt = {"step": n, "path": checkpoint_path(n)}
        if samples.get(contract.METRIC_CHECKPOINT_TIME):
            ckpt["savedAt"] = ts(datetime.fromtimestamp(samples[contract.METRIC_CHECKPOINT_TIME], UTC))
    return prog, ckpt


def with_step(prog: dict[str, Any], step: int) -> dict[str, Any]:
    total = prog.get("totalSteps") or 0
    out = dict(prog, step=step)
    if total:
        pct = min(100, int(100 * step / total))
        out.update(percent=pct, percentText=f"{pct}%", stepText=f"{step}/{total}")
        if step >= total:
            out.pop("eta", None)
    return out


def round4(x: float) -> float:
    return float(f"{x:.4g}")


def duration(seconds: float) -> str:
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def progress_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a progress write says anything new (updatedAt alone is not news)."""
    strip = lambda d: {k: v for k, v in (d or {}).items() if k != "updatedAt"}  # noqa: E731
    return strip(old) != strip(new)
