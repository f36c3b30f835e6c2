"""The field types and rules every part of the CodexTrainingJob spec shares (spec.py, cluster_spec.py).

Patterns, bounds and CEL rules for the CRD, and `SpecModel`, the base of every spec model: camelCase in YAML,
unknown fields refused, and a value of the wrong YAML type (a quoted number, true for a number) refused as
the API server refuses it, with the fix.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from decimal import ROUND_UP, Context, Decimal, InvalidOperation, Overflow
from functools import cache
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

# The job name: kept in step with codex_operator.names (asserted by tests/unit/test_crd.py); copied
# here because the trainer must not import the operator package.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH = 40

# hf://org/name[@revision]: the one pattern for validating and for parsing (codex_trainer.sources),
# and for the CRD's CEL rule (RE2): so no backslashes and no Unicode classes.
HF_PATTERN = r"^hf://(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?)(@(?P<rev>[A-Za-z0-9_./-]+))?$"
HF_SOURCE = re.compile(HF_PATTERN)
HF_FORM_MESSAGE = "must be of the form hf://org/name or hf://org/name@revision"

# The patterns here are used with fullmatch: Python's `$` also matches before a final newline, RE2's does not.

# A Kubernetes resource quantity, without a sign (negative sizes make no sense). The API server's
# isQuantity() alone is more lenient than its documented grammar ("Gi" and "." parse as 0), so the
# CEL rule applies this pattern too; written without backslashes to sit in a CEL string.
QUANTITY_PATTERN = r"^[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][-+]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
QUANTITY = re.compile(QUANTITY_PATTERN)
QUANTITY_MESSAGE = "must be a Kubernetes quantity such as 500m, 2, 4Gi or 1.5G"

# A Kubernetes label value, not empty: runPolicy.queueName and workloadPriorityClass become Kueue labels.
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)
MAX_LABEL_VALUE = 63

# A label or annotation key (a qualified name: an optional DNS-subdomain prefix and '/', then a name), and a
# namespace (a DNS label): the API server's own rules for metadata, which the CRD cannot state. The name part
# has a label value's form (LABEL_VALUE).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
QUALIFIED_NAME_MESSAGE = (
    "letters, digits, '-', '_' and '.', beginning and ending with a letter or digit, at most 63 characters, "
    "after an optional DNS-subdomain prefix and '/' (e.g. example.com/team)"
)


def qualified_name_problem(key: str) -> str | None:
    """Why `key` cannot be a label or annotation key (None: it can)."""
    parts = key.split("/")
    if len(parts) > 2:
        return "has more than one '/'"
    name, prefix = parts[-1], parts[0] if len(parts) == 2 else None
    if prefix is not None and (len(prefix) > MAX_NAME or not DNS_SUBDOMAIN.fullmatch(prefix)):
        return "its prefix (before '/') must be a DNS subdomain: lowercase letters, digits, '-' and '.'"
    if len(name) > MAX_LABEL_VALUE or not LABEL_VALUE.fullmatch(name):
        return f"must be {QUALIFIED_NAME_MESSAGE}"
    return None


ALL_LINEAR = "all-linear"
ALL_LINEAR_MESSAGE = "'all-linear' must be the only item when given; otherwise list module names"

# Bounds on lists and strings: they keep the API server's CEL cost estimate within its limits.
MAX_LIST = 256
MAX_PATH = 4096
MAX_SOURCE = 1024
MAX_NAME = 253
MAX_QUANTITY = 64
MAX_RESOURCES = 32


def cel(rule: str, message: str) -> dict[str, Any]:
    """A CEL rule for the CRD (x-kubernetes-validations), written beside the Python check it mirrors."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


QUANTITY_RULE = f"isQuantity(self) && self.matches('{QUANTITY_PATTERN}')"
HF_RULE = cel(f"!self.startsWith('hf://') || self.matches('{HF_PATTERN}')", HF_FORM_MESSAGE)


# the validation context's key for a job the API server already holds (manifest.parse_manifest(stored=True)):
# checks added to admission after jobs may have been stored without them (each also a CEL rule, which applies
# to new writes) pass such a job; the API server or the Pod refuses what they would have, later, as before
STORED = "stored"


def admitted_before(info: ValidationInfo) -> bool:
    """Whether this validation reads a stored job, which the admission-only checks let through."""
    return bool((info.context or {}).get(STORED))


_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6), ("G", 9), ("T", 12))},
    **{s: Decimal(10) ** e for s, e in (("P", 15), ("E", 18))},
}


_AMOUNT = re.compile(r"[+]?([0-9.]+(?:[eE][-+]?[0-9]+)?)(.*)")


_EXACT = Context(prec=200, Emax=10**6, Emin=-(10**6), traps=[InvalidOperation, Overflow])


def quantity_value(v: str) -> Decimal | None:
    """The amount a quantity stands for (2Gi: 2147483648, 500m: 0.5), rounded up to 1n as Kubernetes rounds it;
    None for one too large to reckon (1e1000000): the API server judges it. The quantity matches QUANTITY."""
    number, suffix = _AMOUNT.fullmatch(v).groups()  # type: ignore[union-attr]  # QUANTITY matched it
    try:
        amount = _EXACT.multiply(Decimal(number), _SUFFIXES.get(suffix, Decimal(1)))
        return amount.quantize(Decimal("1e-9"), rounding=ROUND_UP, context=_EXACT)
    except ArithmeticError:
        return None


def _quantity(v: str) -> str:
    if not QUANTITY.fullmatch(v):
        raise ValueError(QUANTITY_MESSAGE)
    return v


def _quantity_as_written(v: object) -> object:
    """A bare number (`cpu: 2`, which a Pod takes) is refused with the fix: the CRD types quantities as strings."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        raise ValueError(f"write the quantity in quotes, '{v}': quantities here are strings")
    return v


Quantity = Annotated[
    str,
    Field(max_length=MAX_QUANTITY, json_schema_extra=cel(QUANTITY_RULE, QUANTITY_MESSAGE)),
    BeforeValidator(_quantity_as_written),
    AfterValidator(_quantity),
]
DataPath = Annotated[str, Field(min_length=1, max_length=MAX_PATH)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


def hf_form(v: str) -> str:
    if v.startswith("hf://") and not HF_SOURCE.fullmatch(v):
        raise ValueError(HF_FORM_MESSAGE)
    return v


class SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,  # YAML's .inf and .nan: a learning rate or epochs of inf would train for ever or diverge
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_quoted_scalars(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name and isinstance(v, str | int | float):
            kind = _scalar_type(cls.model_fields[info.field_name].annotation)
            if isinstance(v, str):
                _unquoted(v, kind)
            else:
                _typed(v, kind)
        return v


def _scalar_type(annotation: Any) -> type | None:
    """int, float or bool for a field of that type (or that type or None), else None."""
    if annotation in (int, float, bool):
        return typing.cast(type, annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and args[0] in (int, float, bool):
            return typing.cast(type, args[0])
    return None


@cache
def _adapter(kind: type) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _unquoted(v: str, kind: type | None) -> None:
    """A string pydantic would read as a number or boolean ('20', '2e-4', 'yes') is refused with the fix: the
    CRD types these fields integer, number and boolean, so the API server refuses a string there. (An unquoted
    1e-4 is a number: manifest.py reads YAML's numbers as kubectl does.)"""
    if kind is None:
        return
    try:
        value = _adapter(kind).validate_python(v)
    except ValidationError:
        return  # not a number (or boolean) at all: pydantic's own message says so
    if kind is bool:
        raise ValueError(f"write {str(value).lower()} without quotes: this field is true or false, not a string")
    what = "an integer" if kind is int else "a number"
    raise ValueError(f"write the number without quotes, {value}: this field is {what}, not a string")


def _typed(v: int | float, kind: type | None) -> None:
    """true for a number or 1 for a boolean is refused as the API server refuses it (pydantic would take true as
    1: `maxSteps: on`, which YAML reads as true, would train one step)."""
    if kind is bool and not isinstance(v, bool):
        raise ValueError(f"write true or false, not {v}: this field is true or false, not a number")
    if kind in (int, float) and isinstance(v, bool):
        what = "an integer" if kind is int else "a number"
        raise ValueError(
            f"write a number, not {str(v).lower()}: this field is {what} (YAML reads on, yes and true as true)"
        )


# user:password@ or token@ in a URI, or a query or fragment parameter named like a credential (?token=,
# &api_key=, ?password=, #access_token=...): it would land in the job's ConfigMap, run.json and logs. RE2 (the
# CRD's CEL) and Python alike. Bounded repeats: redact_credentials searches whole messages, where an unbounded
# one backtracks over a long value (a 500,000-character name took minutes)
_SCHEME = "[A-Za-z][A-Za-z0-9+.-]{0,31}://"
# a parameter named by one of these words, alone or after a separator (access_token, api-key, X.Auth):
# design=, author= and monkey= are not credentials
_SECRET_PARAM = (
    "[?&;#]([A-Za-z0-9_.-]{0,63}[_.-])?"
    "(?i:token|secret|passwd|password|pwd|pass|key|apikey|auth|authorization|sig|signature|credential|credentials"
    "|jwt|bearer)="
)
# a parameter whose name is written with %-escapes (?%74oken= is ?token=): the words above cannot be seen in it
_ENCODED_PARAM = "[?&;#][A-Za-z0-9_.%-]{0,63}%[A-Za-z0-9_.%-]{0,63}="
# (?s:.*): a newline must not hide what follows it (no backslash: the pattern goes into a CEL string); a
# fragment too: #access_token=, as OAuth gives
CREDENTIALS_PATTERN = f"^{_SCHEME}([^/?#]*@|(?s:.*)({_SECRET_PARAM}|{_ENCODED_PARAM}))"
CREDENTIALS_MESSAGE = (
    "must not carry credentials (user:password@, token@, a ?token= query or #token= fragment, or a parameter name "
    "written with %-escapes, which may spell one): keep them in a "
    "Secret and pass MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
    "through env valueFrom.secretKeyRef"
)


HIDDEN = "(set, not shown)"


def redact_credentials(text: str) -> str:
    """`text` with a URI's user:password@ shown as ***@ and its credential-like query values as ***, for error
    messages."""
    text = re.sub(f"({_SCHEME})[^/?#@\\s]*@", r"\1***@", text)
    return re.sub(f"({_SECRET_PARAM}|{_ENCODED_PARAM})[^&#;\\s]*", r"\1***", text)


def _no_credentials(v: str) -> str:
    if re.match(CREDENTIALS_PATTERN, v):
        raise ValueError(CREDENTIALS_MESSAGE)
    return v


ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"
MLFLOW_FOLDER_MESSAGE = (
    "is a folder, which MLflow no longer writes runs to (its file store is in maintenance mode): use a database, "
    f"sqlite:///PATH/mlflow.db, a tracking server, or leave trackingUri unset for the run's own mlflow.db (or set "
    f"{ALLOW_FILE_STORE}=true in env)"
)
# a folder: file:... or a path; not a database, a server or Databricks (what mlflow_folder reads, in CEL)
MLFLOW_NOT_A_FOLDER = "{uri}.startsWith('databricks') || ({uri}.contains('://') && !{uri}.startsWith('file:'))"


def mlflow_folder(uri: str, env: Mapping[str, str]) -> str | None:
    """What is wrong with a tracking URI that names a folder (MLflow's file store, which MLflow 3 refuses unless
    MLFLOW_ALLOW_FILE_STORE is true in `env`); None for a database, a server or Databricks."""
    if (not uri.startswith("file:") and "://" in uri) or uri.startswith("databricks"):
        return None
    if env.get(ALLOW_FILE_STORE, "").lower() in ("true", "1"):
        return None
    return f"{redact_credentials(uri)} {MLFLOW_FOLDER_MESSAGE}"


TrackingUri = Annotated[
    str,
    Field(max_length=MAX_PATH, json_schema_extra=cel(f"!self.matches('{CREDENTIALS_PATTERN}')", CREDENTIALS_MESSAGE)),
    AfterValidator(_no_credentials),
]
