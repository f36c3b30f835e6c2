"""A codex-train plugin for the tests: a .csv reader and callbacks.

`record` appends each call as a JSON line to the file named by CODEX_TEST_PLUGIN_LOG; `explode` raises
from on_step (and counts its calls in the same file, so a test sees it is not called again)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path


def read_csv(path: Path, text_field: str) -> list[str]:
    """The `text_field` column of a CSV file with a header row."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and text_field not in rows[0]:
        raise ValueError(f"no column '{text_field}' (columns: {', '.join(rows[0])})")
    return [row[text_field] for row in rows]


def _append(entry: dict) -> None:
    with open(os.environ["CODEX_TEST_PLUGIN_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


class Record:
    def on_step(self, row: dict) -> None:
        _append({"hook": "on_step", **row})

    def on_eval(self, row: dict) -> None:
        _append({"hook": "on_eval", **row})

    def on_checkpoint(self, row: dict) -> None:
        _append({"hook": "on_checkpoint", **row})

    def on_end(self, row: dict) -> None:
        _append({"hook": "on_end", **row})


class Explode:
    def on_step(self, row: dict) -> None:
        _append({"hook": "explode", "step": row["step"]})
        raise RuntimeError(f"boom at step {row['step']}")
