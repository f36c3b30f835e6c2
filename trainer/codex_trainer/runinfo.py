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
from .errors import SpecError
from .files import write_text_atomically
from .modeldigest import changed_files
from .spec import JobSpec

PACKAGES = ("codex-training-operator", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors")


def spec_hash(spec: JobSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True).encode()).hexdigest()


def resume_identity(
    spec: JobSpec,
    data_digest: str,
    model_files: dict[str, str] | None = None,
    commit: str | None = None,
    tokens: str = "",
) -> dict[str, Any]:
    """The parts of a spec a checkpoint is tied to: change them and the old checkpoints no longer apply.

    The data counts by its content (`data_digest`, sha256 of the files), not by the paths naming it; so does a
    local base model (`model_files`, modeldigest.model_digests; none for scratch and Hub models, which count by
    their config or name); a Hub model's `commit` is the one its files were loaded at (sources.hub_commit),
    which a resumed run loads again; the tokenizer counts by the `tokens` it makes of the data (data.Dataset
    .tokens_sha256: a tokenizer changed in its files or its library is another); the batch shape counts
    because it decides which rows each step sees."""
    d = spec.model_dump(mode="json", by_alias=True)
    if model_files:
        d["model"]["files"] = model_files
    if commit:
        d["model"]["commit"] = commit
    data = {k: v for k, v in d["data"].items() if k not in ("train", "validation", "existingClaim")}
    if spec.data.packing:  # checkpoints of a packed run hold what its blocks taught (data.PACKING_SCHEME)
        data["packingScheme"] = PACKING_SCHEME
    batch = {k: d["training"][k] for k in ("batchSize", "gradientAccumulation")}
    return {
        "model": d["model"],
        "tokenizer": d["tokenizer"],
        "data": data | {"sha256": data_digest} | ({"tokens": tokens} if tokens else {}),
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


# ---------------------------------------------------------------- a checkpoint's run is this job

# The loop reseeds every step from (seed, step, rank) (train._step_seed), so a checkpoint holds no RNG state;
# it records which way of seeding it was trained with. A checkpoint without the field is scheme 1.
SEED_SCHEME = 1


def saved_digest(state: dict) -> str:
    """The data digest a checkpoint's identity holds ('' where it has none)."""
    return str(((state.get("identity") or {}).get("data") or {}).get("sha256", ""))


def saved_model_files(state: dict) -> dict[str, str] | None:
    """The local base model's files a checkpoint's identity holds (None where it has none)."""
    return ((state.get("identity") or {}).get("model") or {}).get("files")


def saved_tokens(state: dict) -> str:
    """The digest of the tokens a checkpoint's run trained on ('' where it has none)."""
    return str(((state.get("identity") or {}).get("data") or {}).get("tokens", ""))


def saved_commit(state: dict | None) -> str | None:
    """The Hub commit of the base model a checkpoint was trained on (None where it holds none)."""
    return (((state or {}).get("identity") or {}).get("model") or {}).get("commit") or None


def _comparable(saved: dict[str, Any], current: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What both sides identify by content counts by it alone: a local model by its files wherever they are
    (its path may differ), the tokenizer by the tokens it made (its name or path may differ). A checkpoint
    written before one of these was recorded compares by path or name there, as it was written."""
    saved, current = dict(saved), dict(current)
    for part, keys in (("model", ("files", "commit")), ("data", ("tokens",))):
        was, now = saved.get(part) or {}, current.get(part) or {}
        current[part] = {k: v for k, v in now.items() if k not in keys or k in was}
    if "files" in (current.get("model") or {}):
        saved["model"] = {k: v for k, v in saved["model"].items() if k != "source"}
        current["model"] = {k: v for k, v in current["model"].items() if k != "source"}
    if "tokens" in (current.get("data") or {}):
        saved.pop("tokenizer", None)
        current.pop("tokenizer", None)
    return saved, current


def check_same_job(state: dict, current: dict, legacy: dict | None, path: Path) -> None:
    """The checkpoint's run is this job: the same identity (resume_identity) and way of seeding."""
    if state.get("seed_scheme", 1) != SEED_SCHEME:
        raise SpecError(
            "",
            f"{path} was written with seed scheme {state['seed_scheme']}, which this version does not know; "
            "resume it with the version that wrote it, or use a new --output-dir",
        )
    saved = state.get("identity")
    if saved is None or saved == legacy:
        return
    source = (current.get("model") or {}).get("source")
    saved, current = _comparable(saved, current)
    if saved == current:
        return
    changed = identity_changes(saved, current)
    if "data.sha256" in changed:  # other data makes other tokens: the data is what changed
        changed = [c for c in changed if c != "data.tokens"]
    if not changed:  # only output settings differ (runinfo.OUTPUT_ONLY)
        return
    saved_data = saved.get("data") or {}
    if saved_data.get("packing") and "packingScheme" not in saved_data and "packingScheme" in current["data"]:
        raise SpecError(
            "spec.data.packing",
            f"{path} was trained with an earlier packing, where a document attended to the documents before it "
            "in its block; this version keeps documents apart (position ids restart at each one), and resuming "
            "would mix the two. Use a new --output-dir, or finish that run with the version that started it",
        )
    if changed == ["model.files"]:  # none now: the folder is gone, or empty (mounted without its files)
        which = changed_files(saved["model"]["files"], current["model"].get("files") or {})
        raise SpecError(
            "spec.model.source",
            f"the base model's files in '{source}' differ from those the run that wrote {path} trained from "
            f"({which}); resuming would put its adapters on weights they were not trained with. Use a new "
            "--output-dir, or restore the earlier model files to continue",
        )
    if changed == ["data.tokens"]:
        raise SpecError(
            "spec.tokenizer",
            f"the tokenizer makes other tokens of the same data than it made for the run that wrote {path} (its "
            "files changed, or the tokenizers library that reads them); resuming would train on other token ids. "
            "Use a new --output-dir, or restore the earlier tokenizer to continue",
        )
    if changed == ["data.sha256"]:
        raise SpecError(
            "spec.data",
            f"the data files' contents, or their order, differ from those the run that wrote {path} trained on; "
            "resuming would mix two trainings. Use a new --output-dir, or restore the earlier files, in their "
            "order, to continue",
        )
    names = [c.replace("data.sha256", "data (the files' contents)") for c in changed]
    names = [c.replace("model.files", "model (the files' contents)") for c in names]
    names = [c.replace("data.tokens", "tokenizer (the tokens it makes)") for c in names]
    if "data.packing" in changed:  # the scheme is not a field of the job: packing is what the user changed
        names = [n for n in names if n != "data.packingScheme"]
    raise SpecError(
        f"spec.{changed[0]}" if changed else "spec",
        f"differs from the run that wrote {path} (changed: {', '.join(names)}); resuming would mix two "
        "trainings. Use a new --output-dir, or restore the earlier settings to continue",
    )
