"""The job file's YAML (codex_operator.yamltext): whatever the job holds, the trainer reads back the same data,
with PyYAML's own YAML 1.1 rules as well as the trainer's loader (which also reads 1e-6 as a number)."""

from __future__ import annotations

import random
import sys

import pytest
import yaml

from codex_operator import yamltext
from codex_trainer.manifest import parse_yaml

STRINGS = [
    "",
    " ",
    "plain",
    "null",
    "Null",
    "~",
    "true",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "1",
    "-1",
    "0x1f",
    "0o17",
    "017",
    "1e5",
    "1e-05",
    "1.0",
    ".5",
    ".inf",
    ".nan",
    "1:30",
    "2026-12-04",
    "2026-12-04T10:00:00Z",
    "- item",
    "-",
    "?",
    "a: b",
    "a:b",
    "#comment",
    "x #y",
    "&anchor",
    "*alias",
    "!tag",
    "%dir",
    "@at",
    "`tick",
    "|",
    ">",
    "'",
    '"',
    "\\",
    "\\n",
    "{a: 1}",
    "[1, 2]",
    ", ",
    " leading",
    "trailing ",
    "two\nlines",
    "tab\there",
    "cr\rlf\n",
    "é",
    "中文",
    "😀",
    "\x00",
    "\x07",
    "\x1b[0m",
    "\x7f",
    "\x85",
    "\xa0",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ufffe",
    "\uffff",
    "\ud800",
    "---",
    "...",
    "--- x",
    "x" * 2000,
    "=",
    "<<",
]
FLOATS = [0.0, -0.0, 0.1, 1.5, 1e-05, 1e-6, 3e-3, 1e20, 1e16, 1.5e300, 5e-324, sys.float_info.max, -2.5e-7, 1 / 3]
INTS = [0, 1, -1, 2**31, 2**63, 10**30, -(10**30)]


def round_trips(value):
    text = yamltext.dump(value)
    assert yaml.safe_load(text) == value, text
    assert parse_yaml(text, "job file") == value, text
    return text


@pytest.mark.parametrize("s", STRINGS)
def test_every_string_comes_back_as_itself(s):
    round_trips({"k": s, s: "key", "list": [s, {s: [s]}]})


def test_numbers_come_back_as_numbers_of_the_same_value():
    value = {"floats": FLOATS, "ints": INTS, "bools": [True, False], "none": None}
    text = round_trips(value)
    assert "1.0e-05" in text and "1e-05" not in text  # a float by YAML 1.1's rules: a dot before the exponent
    loaded = yaml.safe_load(text)
    assert [type(x) for x in loaded["floats"]] == [float] * len(FLOATS)
    assert [type(x) for x in loaded["ints"]] == [int] * len(INTS)
    assert str(loaded["floats"][1]) == "-0.0"


def test_empty_and_nested_containers_come_back_as_given():
    round_trips({"a": {}, "b": [], "c": [[], {}, [[1, [2, {}]], {"x": []}]], "d": {"e": {"f": {"g": [None]}}}})
    round_trips([{"a": 1, "b": [1, 2]}, [3, [4]], "x"])
    assert yamltext.dump({}) == "{}\n" and yamltext.dump([]) == "[]\n"


def test_random_documents_come_back_as_given():
    rng = random.Random(1796)
    leaves = [*STRINGS, *FLOATS, *INTS, True, False, None]

    def tree(depth):
        kind = rng.random()
        if depth > 4 or kind < 0.4:
            return rng.choice(leaves)
        if kind < 0.7:
            return [tree(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(STRINGS): tree(depth + 1) for _ in range(rng.randrange(4))}

    for _ in range(300):
        round_trips({"doc": tree(0)})


def test_what_is_not_json_like_is_refused():
    with pytest.raises(TypeError, match="set"):
        yamltext.dump({"a": {1, 2}})
