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

from .spec import JobSpec

PACKAGES = ("codex-training-operator", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors")


def spec_hash(spec: JobSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True).encode()).hexdigest()


def resume_identity(spec: JobSpec) -> dict[str, Any]:
    """The parts of a spec a checkpoint is tied to: change them and the old checkpoints no longer apply."""
    d = spec.model_dump(mode="json", by_alias=True)
    return {k: d[k] for k in ("model", "tokenizer", "data", "peft")} | {"seed": spec.training.seed}


def write_run_json(path: Path, name: str, spec: JobSpec, world_size: int, device: str) -> dict[str, Any]:
    info = {
        "name": name,
        "spec": spec.model_dump(mode="json", by_alias=True),
        "spec_sha256": spec_hash(spec),
        "seed": spec.training.seed,
        "world_size": world_size,
        "device": device,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "git_sha": _git_sha(),
    }
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)
    return info


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
