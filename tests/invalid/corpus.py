"""Reading the corpus of invalid manifests (see README.md here); shared by the unit and cluster suites."""

from __future__ import annotations

import re
from pathlib import Path

CORPUS = Path(__file__).resolve().parent
FILES = sorted(CORPUS.glob("*.yaml"))


def expectations(path: Path, server: bool = False) -> list[str]:
    """The `# expect:` texts of a corpus file (`# expect-server:` instead for the API server, if any)."""
    found: dict[str, list[str]] = {"expect": [], "expect-server": []}
    for line in path.read_text().splitlines():
        m = re.match(r"#\s*(expect|expect-server):\s*(.+?)\s*$", line)
        if m:
            found[m.group(1)].append(m.group(2))
    return (found["expect-server"] or found["expect"]) if server else found["expect"]
