"""Pure: a CodexTrainingJob's body as the controller keeps it between events, what it parses from it, and the
status merge patches it writes (and what the API server makes of them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from codex_trainer.errors import SpecError
from codex_trainer.manifest import parse_manifest

from .builders import Job


def with_deletions(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A merge patch merges nested objects: say null for what a new progress or checkpoint leaves out
    (an ETA at the end, say), or the old value would stay."""
    out = dict(patch)
    for key in ("progress", "checkpoint"):
        if isinstance(patch.get(key), dict) and isinstance(old.get(key), dict):
            out[key] = {**{k: None for k in old[key] if k not in patch[key]}, **patch[key]}
    return out


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """What a JSON merge patch makes of `base` (RFC 7386): objects merge, null deletes."""
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merged(out[k], v)
        else:
            out[k] = v
    return out


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def kept(body: Mapping[str, Any]) -> dict[str, Any]:
    """The job as the operator keeps it between events: without managedFields and kubectl's copy of the
    last applied spec (together often larger than the rest, and never read)."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    if LAST_APPLIED in (meta.get("annotations") or {}):
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k != LAST_APPLIED}
    out["metadata"] = meta
    return out


def job_or_problem(body: dict[str, Any]) -> Job | str:
    """The typed job, or one line on what the trainer would refuse (the API server let it through)."""
    meta = body["metadata"]
    raw = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {"name": meta["name"]}}
    try:
        manifest = parse_manifest({**raw, "spec": body.get("spec") or {}}, stored=True)
    except SpecError as e:
        return "invalid job: " + "; ".join(f"{p}: {m}" if p else m for p, m in e.problems)
    return Job(meta["name"], meta["namespace"], meta["uid"], manifest.spec, meta.get("generation", 1))


def children_current(status: dict[str, Any], generation: int) -> bool:
    created = any(c.get("type") == "Created" and c.get("status") == "True" for c in status.get("conditions") or [])
    return created and status.get("observedGeneration") == generation
