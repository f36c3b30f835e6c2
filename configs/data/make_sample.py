"""Generate configs/data/tiny-code.jsonl: small Python functions with docstrings and tests.

The project's own sample data (no download, no licence question): templated but varied enough
that a tiny model's loss falls steadily for a few hundred steps. Deterministic for a given seed.

    python configs/data/make_sample.py [--examples 1500] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NOUNS = ["value", "count", "total", "size", "score", "price", "width", "height", "speed", "level", "age", "index"]
VERBS = {
    "add": ("{a} + {k}", "Return {a} plus {k}.", lambda x, k: x + k),
    "sub": ("{a} - {k}", "Return {a} minus {k}.", lambda x, k: x - k),
    "mul": ("{a} * {k}", "Return {a} times {k}.", lambda x, k: x * k),
    "mod": ("{a} % {k}", "Return the remainder of {a} divided by {k}.", lambda x, k: x % k),
    "floor_div": ("{a} // {k}", "Return {a} divided by {k}, rounded down.", lambda x, k: x // k),
    "min": ("min({a}, {k})", "Return the smaller of {a} and {k}.", min),
    "max": ("max({a}, {k})", "Return the larger of {a} and {k}.", max),
}
PREDICATES = {
    "is_above": ("{a} > {k}", "Tell whether {a} is above {k}.", lambda x, k: x > k),
    "is_below": ("{a} < {k}", "Tell whether {a} is below {k}.", lambda x, k: x < k),
    "is_multiple_of": ("{a} % {k} == 0", "Tell whether {a} is a multiple of {k}.", lambda x, k: x % k == 0),
}


def arithmetic(rng: random.Random) -> str:
    verb = rng.choice(list(VERBS))
    expr, doc, fn = VERBS[verb]
    a, k = rng.choice(NOUNS), rng.randint(2, 9)
    x = rng.randint(0, 50)
    return (
        f"def {verb}_{k}_to_{a}({a}):\n"
        f'    """{doc.format(a=a, k=k)}"""\n'
        f"    return {expr.format(a=a, k=k)}\n\n\n"
        f"assert {verb}_{k}_to_{a}({x}) == {fn(x, k)}\n"
    )


def predicate(rng: random.Random) -> str:
    name = rng.choice(list(PREDICATES))
    expr, doc, fn = PREDICATES[name]
    a, k = rng.choice(NOUNS), rng.randint(2, 9)
    x = rng.randint(0, 30)
    return (
        f"def {a}_{name}_{k}({a}):\n"
        f'    """{doc.format(a=a, k=k)}"""\n'
        f"    return {expr.format(a=a, k=k)}\n\n\n"
        f"assert {a}_{name}_{k}({x}) is {fn(x, k)}\n"
    )


def loop(rng: random.Random) -> str:
    a = rng.choice(NOUNS)
    op, doc, start = rng.choice([("+", "Sum", 0), ("*", "Multiply", 1)])
    items = [rng.randint(1, 5) for _ in range(rng.randint(2, 4))]
    result = start
    for i in items:
        result = result + i if op == "+" else result * i
    return (
        f"def {doc.lower()}_{a}s({a}s):\n"
        f'    """{doc} all {a}s in the list."""\n'
        f"    result = {start}\n"
        f"    for {a} in {a}s:\n"
        f"        result = result {op} {a}\n"
        f"    return result\n\n\n"
        f"assert {doc.lower()}_{a}s({items}) == {result}\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("tiny-code.jsonl"))
    args = p.parse_args()
    rng = random.Random(args.seed)
    makers = [arithmetic, arithmetic, predicate, loop]
    with args.out.open("w") as f:
        for i in range(args.examples):
            f.write(json.dumps({"id": i, "text": rng.choice(makers)(rng)}) + "\n")
    print(f"wrote {args.examples} examples to {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
