"""Turn a source string (hf://org/name@rev or a local path) into what from_pretrained takes."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import SpecError

_HF = re.compile(r"^hf://(?P<repo>[^@]+)(@(?P<rev>.+))?$")


def resolve_source(source: str, field: str) -> tuple[str, str | None]:
    """Return (name_or_path, revision). A local path must exist."""
    m = _HF.match(source)
    if m:
        return m.group("repo"), m.group("rev")
    path = Path(source).expanduser()
    if not path.exists():
        raise SpecError(field, f"'{source}' is neither hf://org/name[@revision] nor an existing local directory")
    return str(path), None
