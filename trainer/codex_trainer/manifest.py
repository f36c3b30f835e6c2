"""Read a CodexTrainingJob manifest, apply --set overrides, validate, and explain what is wrong."""

from __future__ import annotations

import copy
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import SpecError
from .spec import Manifest


def load_manifest(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Manifest:
    """Parse and validate a manifest file; raise SpecError naming each bad field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(str(path), "file not found") from None
    except yaml.YAMLError as e:
        raise SpecError(str(path), f"not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(str(path), "expected a CodexTrainingJob manifest (apiVersion, kind, metadata, spec)")
    return parse_manifest(apply_overrides(raw, overrides))


def parse_manifest(raw: dict[str, Any]) -> Manifest:
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        raise SpecError([_explain(err) for err in e.errors()]) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `PATH=VALUE` overrides; PATH is relative to .spec (camelCase), VALUE is YAML."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError("--set", f"'{item}' is not PATH=VALUE (e.g. --set training.maxSteps=20)")
        parts = key.split(".")
        if parts[0] not in ("spec", "metadata"):
            parts = ["spec", *parts]
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise SpecError(".".join(parts), f"--set cannot descend into '{p}', which is not a mapping")
            node = nxt
        node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
    return raw


def _explain(err: dict[str, Any]) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    path = ".".join(loc)
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        known = _known_fields(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], known, n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else f"known fields here: {', '.join(sorted(known))}"
        return path, f"unknown field; {fix}"
    if kind == "missing":
        return path, "required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if got is not None and not isinstance(got, dict | list):
        msg += f" (got {got!r})"
    return path, msg


def _is_union_tag(p: Any) -> bool:
    # pydantic puts the union member it tried into loc ("str", "list[str]", "int"): not a field.
    return isinstance(p, str) and (p in {"str", "int", "float", "bool"} or "[" in p)


def _known_fields(loc: list[str]) -> list[str]:
    model: Any = Manifest
    for name in loc:
        field = _field_by_alias(model, name)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _field_by_alias(model: type[BaseModel], name: str):
    for n, f in model.model_fields.items():
        if name in (n, f.alias):
            return f
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        m = _model_of(arg)
        if m is not None:
            return m
    return None
