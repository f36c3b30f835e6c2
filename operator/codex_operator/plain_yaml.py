"""Pure: YAML text of plain JSON values (the resolved job file), in block style as PyYAML writes it.

PyYAML's writer spends most of its time deciding, in Python, how to represent and quote each scalar:
on a thousand new jobs that was a tenth of the operator's CPU. The values here are only dicts, lists,
strings, numbers, booleans and None, so the choice is simple: a string is written plain when no YAML
reader can take it for anything else (a name, a path), and otherwise double-quoted as JSON writes it,
which YAML reads back to the same string; numbers are written so that YAML 1.1 readers (PyYAML's
safe_load, as well as the trainer's loader) read the same number.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

# a plain scalar that no YAML 1.1 or 1.2 resolver reads as a bool, null, number, date or merge key: starts
# with a letter or _, no spaces, no character YAML gives a meaning
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*\Z")
_WORDS = frozenset(("y", "n", "yes", "no", "true", "false", "on", "off", "null"))
# what JSON leaves raw but a YAML reader refuses (C1 controls, DEL, U+FFFE/FFFF) or reads as a line break
_NOT_RAW = re.compile("[\x7f-\x9f\u2028\u2029\ufffe\uffff]")


def _string(s: str) -> str:
    if _PLAIN.match(s) and s.lower() not in _WORDS:
        return s
    return _NOT_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", orjson.dumps(s).decode())


def _scalar(v: Any) -> str:
    if isinstance(v, str):
        return _string(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        text = repr(v)
        mantissa, e, exponent = text.partition("e")
        # YAML 1.1 reads 1e-05 as a string: 1.0e-05, as PyYAML writes it
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    raise TypeError(f"not a JSON value: {type(v).__name__}")


# a key written longer than this goes after `? ` (an explicit key): a reader takes an implicit key of at most
# 1,024 characters, as PyYAML's writer knows (it switches at 128)
LONG_KEY = 128


def _block(value: dict[str, Any] | list[Any], indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"not a JSON key: {k!r}")
            key = _string(k)
            if len(key) > LONG_KEY:
                out.append(f"{pad}? {key}")
                _item(":", v, indent, out)
            elif isinstance(v, dict | list) and v:
                out.append(f"{pad}{key}:")
                _block(v, indent + 2 if isinstance(v, dict) else indent, out)  # a list under a key: not indented
            else:
                out.append(f"{pad}{key}: {_scalar(v)}")
        return
    for v in value:
        _item("-", v, indent, out)


def _item(indicator: str, v: Any, indent: int, out: list[str]) -> None:
    """`- v` (a list's item) or `: v` (an explicit key's value), a collection in the compact form."""
    pad = " " * indent
    if isinstance(v, dict | list) and v:
        inner: list[str] = []
        _block(v, indent + 2, inner)
        out.append(f"{pad}{indicator} {inner[0][indent + 2 :]}")
        out.extend(inner[1:])
    else:
        out.append(f"{pad}{indicator} {_scalar(v)}")


def dump(value: dict[str, Any]) -> str:
    """The YAML text of a mapping of JSON values; yaml.safe_load of it gives `value` back."""
    out: list[str] = []
    _block(value, 0, out)
    return "\n".join(out) + "\n" if out else "{}\n"
