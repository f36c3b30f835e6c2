"""The dependency locks: requirements/<name>.txt, every package pinned with the hashes of its files.

    python3 tools/lock.py            # `make lock`: write the locks, keeping the versions they already pin
    python3 tools/lock.py --upgrade  # `make lock-upgrade`: the newest versions pyproject.toml allows
    python3 tools/lock.py --check    # `make lock-check`: exit 1 naming each place where pyproject.toml and the
                                     # locks disagree, or where a fresh `make lock` would write something else

One lock per way the project is installed (LOCKS): dev.txt for `make install` and CI, trainer.txt for
Dockerfile.trainer, operator.txt for the operator. requirements/build.in pins the tools that install
them and build the project itself; every lock includes it, and build.txt holds it alone, so that an
old pip can upgrade itself from a lock before it reads the others. dev.txt is resolved first and
constrains the others, so a package has one version in every lock.

The locks are for CPython 3.11 on x86_64 Linux with glibc 2.36 (Debian bookworm: CI, the images,
this machine), written by uv from PyPI.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK_DIR = REPO / "requirements"
BUILD_IN = "requirements/build.in"
PROJECT_VIA = "codex-training-operator (pyproject.toml)"
# name -> the extras of pyproject.toml it installs; dev first: it constrains the others
LOCKS: dict[str, tuple[str, ...]] = {
    "dev": ("trainer", "operator", "dev"),
    "trainer": ("trainer",),
    "operator": ("operator",),
    "build": (),
}
PYTHON, PLATFORM = "3.11", "x86_64-manylinux_2_36"


def compile_command(
    name: str, upgrade: bool = False, out: str = "requirements", packages: tuple[str, ...] = ()
) -> list[str]:
    """uv's command for one lock, written into `out` (relative to the repository, or absolute)."""
    cmd = [sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--generate-hashes", "--python-version", PYTHON,
           "--python-platform", PLATFORM, "--custom-compile-command", "make lock", "--no-config",
           "--index-url", "https://pypi.org/simple", "-o", f"{out}/{name}.txt"]  # fmt: skip
    cmd += [BUILD_IN] if name == "build" else ["pyproject.toml", BUILD_IN]
    cmd += [a for extra in LOCKS[name] for a in ("--extra", extra)]
    if name != "dev":
        cmd += ["-c", f"{out}/dev.txt"]
    if upgrade:
        cmd.append("--upgrade")
    cmd += [a for package in packages for a in ("--upgrade-package", package)]
    return cmd


def write(upgrade: bool = False, out: str = "requirements", packages: tuple[str, ...] = ()) -> None:
    for name in LOCKS:
        if subprocess.run(compile_command(name, upgrade, out, packages), cwd=REPO).returncode != 0:
            sys.exit(f"uv could not lock requirements/{name}.txt: its reason is above")


def relocked() -> dict[str, str]:
    """What `make lock` would write now, starting from the committed locks (so it keeps their versions)."""
    with tempfile.TemporaryDirectory(prefix="lock-") as tmp:
        for name in LOCKS:
            shutil.copy2(LOCK_DIR / f"{name}.txt", Path(tmp) / f"{name}.txt")
        write(out=tmp)
        return {name: (Path(tmp) / f"{name}.txt").read_text() for name in LOCKS}


# ---------------------------------------------------------------------- the check (pure)


@dataclass
class Locked:
    version: str
    hashes: set[str] = field(default_factory=set)
    via: set[str] = field(default_factory=set)


def read_lock(text: str) -> dict[str, Locked]:
    """The packages of a uv/pip-compile lock: canonical name -> version, hash count, what asked for it."""
    locked: dict[str, Locked] = {}
    current: Locked | None = None
    for line in text.splitlines():
        pin = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if pin:
            current = locked[canonicalize_name(pin[1])] = Locked(pin[2])
        elif current is not None and (digest := re.search(r"--hash=(sha256:[0-9a-f]+)", line)):
            current.hashes.add(digest[1])
        elif current is not None and (via := re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)) and via[1] != "via":
            current.via.add(via[1].strip())
    return locked


def wanted(pyproject: dict, build_in: str, extras: tuple[str, ...]) -> list[tuple[Requirement, str]]:
    """What a lock must satisfy: (requirement, where it is asked for)."""
    project = pyproject["project"]
    base = project["dependencies"] if extras else []  # build.txt: the build tools alone
    reqs = [(Requirement(r), "pyproject.toml [project] dependencies") for r in base]
    for extra in extras:
        reqs += [(Requirement(r), f"pyproject.toml [{extra}]") for r in project["optional-dependencies"][extra]]
    lines = (line.split("#")[0].strip() for line in build_in.splitlines())
    return reqs + [(Requirement(line), BUILD_IN) for line in lines if line]


def problems(pyproject: dict, build_in: str, locks: dict[str, str]) -> list[str]:
    """Each disagreement between pyproject.toml, build.in and the locks' texts, as a line naming the fix."""
    found = _extras_unlocked(pyproject)
    read = {name: read_lock(text) for name, text in locks.items()}
    for name, locked in read.items():
        where = f"requirements/{name}.txt"
        asked = wanted(pyproject, build_in, LOCKS[name])
        found += _unmet(where, locked, asked)
        names = {canonicalize_name(req.name) for req, _ in asked}
        needed = _needed(locked, names)
        for pkg, entry in sorted(locked.items()):
            if not entry.hashes:
                found.append(f"{where}: {pkg} has no --hash: run `make lock`")
            direct = {PROJECT_VIA, f"-r {BUILD_IN}"} & entry.via
            if direct and pkg not in names:
                found.append(f"{where} locks {pkg} for {', '.join(sorted(direct))}, which no longer asks for it: "
                             "run `make lock`")  # fmt: skip
            if not direct and pkg not in needed:
                found.append(f"{where}: nothing in it asks for {pkg} any more: run `make lock`")
    found += _versions_differ(read)
    found += _build_system_unmet(pyproject, read.get("build", {}))
    return found


def _needed(locked: dict[str, Locked], asked: set[str]) -> set[str]:
    """The packages of a lock that what is asked for needs, following its `# via` annotations."""
    needed = asked & locked.keys()
    while True:
        more = {pkg for pkg, entry in locked.items() if {canonicalize_name(v) for v in entry.via} & needed} - needed
        if not more:
            return needed
        needed |= more


def _extras_unlocked(pyproject: dict) -> list[str]:
    locked = {extra for extras in LOCKS.values() for extra in extras}
    return [f"pyproject.toml has the extra [{extra}], which no lock installs: add it to LOCKS in tools/lock.py"
            for extra in sorted(set(pyproject["project"].get("optional-dependencies", {})) - locked)]  # fmt: skip


def _build_system_unmet(pyproject: dict, build: dict[str, Locked]) -> list[str]:
    asked = [(Requirement(r), "pyproject.toml [build-system] requires") for r in pyproject["build-system"]["requires"]]
    return _unmet("requirements/build.txt", build, asked)


def differences(committed: dict[str, str], fresh: dict[str, str]) -> list[str]:
    """Where the committed locks differ from what `make lock` writes now (packages, versions, hashes)."""
    found = []
    for name in LOCKS:
        old, new = read_lock(committed[name]), read_lock(fresh[name])
        for pkg in sorted(old.keys() | new.keys()):
            if pkg not in new:
                found.append(f"requirements/{name}.txt locks {pkg}, which `make lock` drops: run `make lock`")
            elif pkg not in old:
                found.append(f"requirements/{name}.txt lacks {pkg}=={new[pkg].version}, which `make lock` adds: "
                             "run `make lock`")  # fmt: skip
            elif (old[pkg].version, old[pkg].hashes) != (new[pkg].version, new[pkg].hashes):
                now = f"{pkg}=={new[pkg].version}, {len(new[pkg].hashes)} hashes"
                found.append(f"requirements/{name}.txt: {pkg}=={old[pkg].version} differs from what `make lock` "
                             f"writes ({now}): run `make lock`")  # fmt: skip
    return found


def _unmet(where: str, locked: dict[str, Locked], asked: list[tuple[Requirement, str]]) -> list[str]:
    found = []
    for req, source in asked:
        entry = locked.get(canonicalize_name(req.name))
        if entry is None:
            found.append(f"{where} lacks {req.name}, which {source} asks for ({req}): run `make lock`")
        elif not req.specifier.contains(entry.version, prereleases=True):
            found.append(f"{where} pins {req.name}=={entry.version} where {source} asks for {req}: run `make lock`")
    return found


def _versions_differ(read: dict[str, dict[str, Locked]]) -> list[str]:
    found = []
    dev = read.get("dev", {})
    for name, locked in read.items():
        for pkg, entry in sorted(locked.items()):
            if pkg in dev and dev[pkg].version != entry.version:
                found.append(f"requirements/{name}.txt pins {pkg}=={entry.version}, requirements/dev.txt "
                             f"{pkg}=={dev[pkg].version}: run `make lock`")  # fmt: skip
    return found


def check() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    build_in = (REPO / BUILD_IN).read_text()
    missing = [name for name in LOCKS if not (LOCK_DIR / f"{name}.txt").is_file()]
    if missing:
        return [f"requirements/{name}.txt is missing: run `make lock`" for name in missing]
    return problems(pyproject, build_in, {name: (LOCK_DIR / f"{name}.txt").read_text() for name in LOCKS})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upgrade", action="store_true", help="the newest versions pyproject.toml allows")
    p.add_argument("--upgrade-package", action="append", default=[], metavar="NAME",
                   help="the newest version of NAME only (repeatable), e.g. when `make audit` names one")  # fmt: skip
    p.add_argument("--check", action="store_true", help="only check that pyproject.toml and the locks agree")
    args = p.parse_args()
    if args.check:
        found = check() or differences({n: (LOCK_DIR / f"{n}.txt").read_text() for n in LOCKS}, relocked())
    else:
        write(args.upgrade, packages=tuple(args.upgrade_package))
        print(f"wrote {', '.join(f'requirements/{name}.txt' for name in LOCKS)}")
        found = check()
    for line in found:
        print(line, file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
