"""Nothing crashes the job-file loader: whatever the file holds, `run` and `validate` exit 2 with a short
message, within seconds (random bytes, other encodings, broken and deep YAML, the wrong shape, several
documents, alias bombs, huge files)."""

from __future__ import annotations

import random
import time

import pytest

from codex_trainer.cli import main
from support import TINY

MANIFEST = TINY.read_text()


def _random_bytes() -> dict[str, bytes]:
    rng = random.Random(7)
    return {f"random bytes {i}": bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))) for i in range(12)}


def _truncations() -> dict[str, bytes]:
    """Cut before `data:` (a required section), at seeded random offsets: broken or incomplete YAML."""
    rng = random.Random(11)
    end = MANIFEST.index("  data:")
    return {f"cut at {n}": MANIFEST[:n].encode() for n in sorted(rng.sample(range(1, end), 10))}


def _bomb(levels: int = 12) -> bytes:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines).encode()


CASES: dict[str, bytes] = {
    **_random_bytes(),
    **_truncations(),
    "empty file": b"",
    "UTF-16": MANIFEST.encode("utf-16"),
    "latin-1 with accents": MANIFEST.replace("tiny-cpu", "tiny-caf\u00e9").encode("latin-1"),
    "NUL bytes": b"apiVersion: codex.ml/v1alpha1\x00\x00",
    "tab indentation": b"spec:\n\tmodel: x\n",
    "deep flow sequence": b"[" * 50_000,
    "deep flow mapping": b"{a: " * 5_000 + b"1" + b"}" * 5_000,
    "deep block mapping": "".join(f"{'  ' * i}k{i}:\n" for i in range(200)).encode() + b"  " * 200 + b"v\n",
    "a list": b"- 1\n- 2\n",
    "a string": b"just words",
    "a number": b"42",
    "spec is a list": MANIFEST.replace("spec:\n", "spec: [1, 2]\nignored:\n", 1).encode(),
    "several documents": MANIFEST.encode() + b"\n---\n" + MANIFEST.encode(),
    "alias bomb": _bomb(),
    "alias bomb in spec": MANIFEST.encode() + b"\n" + _bomb().replace(b"a0:", b"zz:"),
    "unhashable key": b"? [a, b]\n: 1\n",
    "python tag": b"!!python/object/apply:os.system ['true']\n",
    "duplicate anchors and unknown alias": b"a: *nothing\n",
    "huge file": b"# " + b"x" * (2 << 20) + b"\n",
    "huge value": MANIFEST.replace("name: tiny-cpu", "name: " + "a" * 500_000).encode(),
    "thousands of unknown fields": MANIFEST.encode() + b"".join(b"  f%d: 1\n" % i for i in range(3000)),
    "wrong types everywhere": b"apiVersion: 1\nkind: [x]\nmetadata: 2\nspec: {model: 3, data: {train: 4}}\n",
    "timestamps and infinities": MANIFEST.replace("maxSteps: 300", "maxSteps: .inf")
    .replace("name: tiny-cpu", "name: 2001-12-14")
    .encode(),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_any_file_gives_exit_2_and_a_short_message_soon(case, command, tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_bytes(CASES[case])
    args = [command, str(job)] + (["--output-dir", str(tmp_path / "out")] if command == "run" else [])
    start = time.monotonic()
    code = main(args)
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-2000:])
    assert 1 <= len(lines) <= 21 and all(len(line) < 400 for line in lines), lines[:3]
    assert all(line.startswith("codex-train: ") for line in lines) and "Traceback" not in err
    # "soon" means no hang and no blow-up (an alias bomb unbounded runs for hours): a bound far above the
    # 0.03-0.9 s these take alone, since coverage tracing and a loaded machine slow them 5-10x
    assert out == "" and elapsed < 60, elapsed
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "override, words",
    [
        ("training.maxSteps=[1", "the value is not valid YAML: expected ',' or ']'"),
        ("training.maxSteps=@x", "found character '@' that cannot start any token"),
        ("peft={a: b: c}", "expected ',' or '}', but got ':'"),
        ("training.maxSteps=" + "[" * 20_000, "nested more than"),
    ],
)
def test_a_set_value_that_is_not_yaml_exits_2_naming_it(override, words, capsys):
    assert main(["validate", str(TINY), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codex-train: invalid --set: '") and words in err and err.count("\n") == 1, err


@pytest.mark.parametrize("around", [("", "\n---\n"), ("---\n", "\n---\n\n"), ("--- # the job\n", "\n...\n")])
def test_empty_documents_around_the_job_are_nothing_as_kubectl_has_them(around, tmp_path, capsys):
    """Generated YAML often ends with `---`; kubectl applies such a file, so validate takes it too."""
    job = tmp_path / "job.yaml"
    job.write_text(around[0] + MANIFEST + around[1])
    assert main(["validate", str(job)]) == 0, capsys.readouterr().err
