"""Read a CodexTrainingJob manifest, apply --set overrides, validate, and explain what is wrong."""

from __future__ import annotations

import copy
import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from .errors import FieldValueError, SpecError
from .fields import STORED, redact_credentials
from .spec import Manifest

MAX_MANIFEST_BYTES = 1 << 20  # a Kubernetes object is at most about 1.5 MB; a job file is a few hundred bytes
MAX_VALUES = 100_000  # after YAML aliases are expanded: a few dozen levels of `&a [*b, *b]` would be billions
MAX_DEPTH = 64
MAX_PROBLEMS = 20


def load_manifest(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Manifest:
    """Parse and validate a manifest file; raise SpecError naming each bad field.

    Whatever the file holds (random bytes, another encoding, broken or deeply nested YAML, several
    documents, alias bombs, a huge file), the answer is a SpecError with a short message, soon."""
    path = Path(path)
    raw = parse_yaml(_read_text(path), str(path))
    if not isinstance(raw, dict):
        raise SpecError(str(path), "expected a CodexTrainingJob manifest (apiVersion, kind, metadata, spec)")
    return parse_manifest(apply_overrides(raw, overrides))


def _read_text(path: Path) -> str:
    try:
        if path.is_dir():
            raise SpecError(str(path), "is a directory, not a manifest file")
        with path.open("rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(str(path), "file not found") from None
    except OSError as e:
        raise SpecError(str(path), f"cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise SpecError(str(path), f"is larger than {MAX_MANIFEST_BYTES >> 20} MiB; a job file is a few hundred bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(
            str(path), f"is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None


class _UniqueKeys(yaml.SafeLoader):
    """safe_load's loader, refusing a key given twice in one mapping. YAML says a mapping's keys are unique;
    PyYAML would keep the last one silently, so a second `training:` block would replace the first whole."""


def _mapping_once(loader: _UniqueKeys, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults`: what it brings in may be overridden, as YAML means
        key, line = loader.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
        try:
            first = lines.get(key)
        except TypeError:
            continue  # an unhashable key: construct_mapping says so
        if first is not None:
            where = f"lines {first} and {line}" if first != line else f"line {line}"
            raise yaml.constructor.ConstructorError(None, None, f"{str(key)!r} is given twice ({where})")
        lines[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_once)


def _as_written(loader: _UniqueKeys, node: yaml.ScalarNode) -> str:
    """An unquoted date (`queueName: 2026-12-01`): the string written, as kubectl reads it, not a datetime.date."""
    return str(loader.construct_scalar(node))


_UniqueKeys.add_constructor("tag:yaml.org,2002:timestamp", _as_written)
# YAML 1.2's numbers with an exponent (1e-6, 1E+5, 1.5e6), which kubectl reads as numbers and PyYAML's 1.1 rules
# (a dot and a signed exponent) as strings: a model.config copied from a config.json builds the same model here
# as on the cluster. Checked after PyYAML's own rules, so what they read as a number (or a date: a string) stays so.
# A writer of job files adds the same rule to its dumper (operator/codex_operator/builders.py), so that a string
# such as "1e3" is quoted there and read back as the string it is.
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
EXPONENT_FLOAT_FIRST = list("-+.0123456789")
_UniqueKeys.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, EXPONENT_FLOAT_FIRST)


SEVERAL_DOCUMENTS = "it holds several documents; give one CodexTrainingJob per file"


def parse_yaml(text: str, source: str) -> Any:
    """One YAML document, bounded in size and depth; SpecError with a one-line reason otherwise."""
    try:  # a SafeLoader: plain data only. Empty documents (a trailing ---) are nothing, as kubectl has them
        documents = [d for d in yaml.load_all(text, Loader=_UniqueKeys) if d is not None]
    except yaml.YAMLError as e:
        raise SpecError(source, f"not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise SpecError(source, f"is nested more than {MAX_DEPTH} levels deep") from None
    if len(documents) > 1:
        raise SpecError(source, f"not valid YAML: {SEVERAL_DOCUMENTS}")
    raw = documents[0] if documents else None
    _check_bounds(raw, source)
    return raw


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem and "another document" in problem:
        return SEVERAL_DOCUMENTS
    if problem is None:
        return _short(str(e).splitlines()[0] if str(e) else type(e).__name__)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return _short(problem) + where


def _check_bounds(raw: Any, source: str) -> None:
    """Walk the parsed document once, counting every value as often as aliases repeat it."""
    count, stack = 0, [(raw, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise SpecError(source, f"holds more than {MAX_VALUES} values once YAML aliases are expanded")
        if depth > MAX_DEPTH:
            raise SpecError(source, f"is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_manifest(raw: dict[str, Any], stored: bool = False) -> Manifest:
    """The typed manifest, or a SpecError naming every problem. `stored`: a job the API server already holds
    (the operator's read), which the checks added to admission since (fields.ADMISSION_ONLY) do not fail: a
    job accepted before an upgrade must not turn Failed, its running attempt stopped, on the upgrade."""
    try:
        return Manifest.model_validate(without_nulls(raw), context={STORED: True} if stored else None)
    except ValidationError as e:
        problems = [_explain(err) for err in e.errors()]
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS], ("", f"... and {len(problems) - MAX_PROBLEMS} more problems")]
        raise SpecError(problems) from None
    except RecursionError:
        raise SpecError("", f"the manifest is nested more than {MAX_DEPTH} levels deep") from None


def without_nulls(node: Any) -> Any:
    """`node` less every null in a mapping, as the API server prunes them from a job (the CRD has no nullable
    field; a free-form mapping such as model.config or affinity loses its nulls too): `warmupSteps:` left empty,
    or `--set eval=null`, means the default, in a run here as on the cluster. A null list item stays: the API
    server refuses it (`spec.data.train[1] ... must be of type string`), and so does the spec here."""
    if isinstance(node, list):
        return [without_nulls(item) for item in node]
    if isinstance(node, dict):
        return {key: without_nulls(value) for key, value in node.items() if value is not None}
    return node


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `PATH=VALUE` overrides; PATH is relative to .spec (camelCase), VALUE is YAML."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError("--set", f"'{item}' is not PATH=VALUE (e.g. --set training.maxSteps=20)")
        if "[" in key:
            raise SpecError(
                "--set",
                f"'{_short(item, 80)}': a list is set whole, not item by item "
                "(e.g. --set 'data.train=[a.jsonl, b.jsonl]')",
            )
        parts = key.split(".")
        if parts[0] not in ("spec", "metadata"):
            parts = ["spec", *parts]
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise SpecError(".".join(parts), f"--set cannot descend into '{p}', which is not a mapping")
            node = nxt
        node[parts[-1]] = _override_value(item, value)
    return raw


def _override_value(item: str, value: str) -> Any:
    if value == "":
        return ""
    try:
        return parse_yaml(value, "--set")
    except SpecError as e:
        raise SpecError("--set", f"'{_short(item, 80)}': the value is {e.problems[0][1]}") from None


def _explain(err: ErrorDetails) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    if isinstance(raised := (err.get("ctx") or {}).get("error"), FieldValueError):
        loc.append(raised.field)  # a check of the whole model, about one of its fields
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
        shown = redact_credentials(got) if isinstance(got, str) else got  # an error message is no place for a password
        msg += f" (got {_short(repr(shown), 80)})"
    if kind == "list_type" and isinstance(got, str | int | float):
        msg += f"; write it as a list: [{_short(str(shown), 60)}]"  # e.g. train: file.jsonl for train: [file.jsonl]
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
        model = model_of(field.annotation)
        if model is None:
            return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _field_by_alias(model: type[BaseModel], name: str) -> FieldInfo | None:
    for n, f in model.model_fields.items():
        if name in (n, f.alias):
            return f
    return None


def model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        m = model_of(arg)
        if m is not None:
            return m
    return None
