"""run.json: what exactly ran, so a result can be traced and repeated."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .data import PACKING_SCHEME
from .files import write_text_atomically
from .spec import JobSpec

PACKAGES = ("codex-training-operator", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors")


def spec_hash(spec: JobSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True).encode()).hexdigest()


def resume_identity(spec: JobSpec, data_digest: str) -> dict[str, Any]:
    """The parts of a spec a checkpoint is tied to: change them and the old checkpoints no longer apply.

    The data counts by its content (`data_digest`, sha256 of the files), not by the paths naming it; the
    batch shape counts because it decides which rows each step sees."""
    d = spec.model_dump(mode="json", by_alias=True)
    data = {k: v for k, v in d["data"].items() if k not in ("train", "validation", "existingClaim")}
    if spec.data.packing:  # checkpoints of a packed run hold what its blocks taught (data.PACKING_SCHEME)
        data["packingScheme"] = PACKING_SCHEME
    batch = {k: d["training"][k] for k in ("batchSize", "gradientAccumulation")}
    return {
        "model": d["model"],
        "tokenizer": d["tokenizer"],
        "data": data | {"sha256": data_digest},
        "peft": d["peft"],
        "seed": spec.training.seed,
        "training": batch,
    }


def legacy_identity(spec: JobSpec) -> dict[str, Any] | None:
    """What checkpoints written before the data was identified by content hold (data by path). Those runs
    packed documents the earlier way, so a packed run has none: its old checkpoints are refused."""
    if spec.data.packing:
        return None
    d = spec.model_dump(mode="json", by_alias=True)
    return {k: d[k] for k in ("model", "tokenizer", "data", "peft")} | {"seed": spec.training.seed}


# in an identity, but what they change is only what the result writes (final/merged), not what is trained:
# a finished run asked for them again writes its result again
OUTPUT_ONLY = frozenset({"peft.merge"})


def identity_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted paths (under spec) where two identities differ, e.g. ['data.sha256', 'peft.r']; OUTPUT_ONLY
    fields are left out."""
    changed = []
    for key in [*current, *(k for k in saved if k not in current)]:  # a key only the checkpoint has is a change
        a, b = saved.get(key), current[key]
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{key}.{k}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
        elif a != b:
            changed.append("training.seed" if key == "seed" else key)  # where the field is in the spec
    return [c for c in changed if c not in OUTPUT_ONLY]


def training_changes(saved: dict[str, Any] | None, spec: JobSpec) -> dict[str, dict[str, Any]]:
    """training.* fields that differ from the run that wrote the checkpoint: {field: {was, now}}."""
    if not saved:
        return {}
    now = spec.training.model_dump(mode="json", by_alias=True)
    return {f"training.{k}": {"was": saved.get(k), "now": v} for k, v in now.items() if saved.get(k) != v}


def write_run_json(
    path: Path,
    name: str,
    spec: JobSpec,
    world_size: int,
    device: str,
    resumed_from: int = 0,
    changes: dict[str, Any] | None = None,
    data_sha256: str = "",
) -> None:
    """run.json tells what runs now; on resume, from which step, what changed, and what earlier starts ran;
    and the data's digest (data.data_digest), by which eval knows whether the run's split can be rebuilt."""
    earlier = _earlier_starts(path)
    info = {
        "name": name,
        "spec": spec.shown(),  # env values hidden; spec_sha256 still tells one spec from another
        "spec_sha256": spec_hash(spec),
        "data_sha256": data_sha256,
        "workdir": str(Path.cwd()),  # where the spec's relative data paths were read from (eval reads them there)
        "seed": spec.training.seed,
        "world_size": world_size,
        "device": device,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "resumed_from_step": resumed_from,
        "changed_on_resume": changes or {},
        "earlier_starts": earlier,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "git_sha": _git_sha(),
    }
    write_text_atomically(path, json.dumps(info, indent=2))


def _earlier_starts(path: Path) -> list[dict[str, Any]]:
    """The previous run.json's start, appended to its own list of earlier starts."""
    try:
        prev = json.loads(path.read_text())
        entry = {
            "started_at": prev["started_at"],
            "resumed_from_step": prev.get("resumed_from_step", 0),
            "spec_sha256": prev["spec_sha256"],
            "training": prev["spec"]["training"],
            "world_size": prev.get("world_size"),
        }
        return [*prev.get("earlier_starts", []), entry]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_sha() -> str | None:
    """The commit of the code that ran: CODEX_GIT_SHA (set in images), else the source checkout's."""
    if os.environ.get("CODEX_GIT_SHA"):
        return os.environ["CODEX_GIT_SHA"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
