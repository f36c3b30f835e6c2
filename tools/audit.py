"""`make audit`: pip-audit over the locks; exit 1 on a known vulnerability not accepted in
requirements/audit-ignore.toml, on a package it could not check, on one it could check only against
its latest release's list unless accepted there too (a release out for less than a week only warns:
lock it, see below), or on an entry there that is expired or incomplete.

    python3 tools/audit.py [LOCK ...] [--ignore-file FILE]   # default: every requirements/*.txt

pip-audit reads the hashed locks and asks PyPI for each locked version's vulnerabilities
(`/pypi/<name>/<version>/json`). Where PyPI's per-version pages are not reachable (some mirrors
serve only the per-project page: a 404 for every version), the package is checked against the list
PyPI publishes with the project's latest release instead: the same answer when the lock pins that
release; for an older pin, every vulnerability of the latest release is taken to affect it too, and
the package is named as checked against the latest release only, since a vulnerability fixed in a
newer release than ours is not on that list.

A pin whose first newer release is out for less than GRACE_DAYS is named with the day it starts failing the audit,
without failing it yet: a patch release of any of the locks' packages would otherwise fail the
next landing at random, between a check before it and CI after it. Lock it before that day.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from packaging.version import Version
from pip_audit._audit import Auditor
from pip_audit._dependency_source import RequirementSource
from pip_audit._service import PyPIService
from pip_audit._service.interface import (
    Dependency,
    ResolvedDependency,
    ServiceError,
    SkippedDependency,
    VulnerabilityResult,
)

REPO = Path(__file__).resolve().parents[1]
IGNORE_FILE = REPO / "requirements" / "audit-ignore.toml"
GRACE_DAYS = 7


@dataclass(frozen=True)
class LatestOnly:
    """A package checked only against its latest release's list: "name version (latest X)", and the day the
    first release newer than ours came out (None when the page gives no upload time)."""

    text: str
    released: dt.date | None


def first_newer(page: dict, ours: Version) -> dt.date | None:
    """The day the first release newer than ours came out (not the latest's: each new patch release would
    start the grace again for a pin long out of date), from the project page's "releases"; pre-releases and
    yanked files left out. None where the page gives no upload times."""
    days = []
    for version, files in (page.get("releases") or {}).items():
        try:
            v = Version(version)
        except ValueError:
            continue
        if v <= ours or v.is_prerelease:
            continue
        days += [_day(f) for f in files if not f.get("yanked") and f.get("upload_time_iso_8601")]
    if not days:  # a page without the releases: the latest's own files
        days = [_day(f) for f in page.get("urls") or [] if f.get("upload_time_iso_8601")]
    return min(days, default=None)


def _day(file: dict) -> dt.date:
    return dt.datetime.fromisoformat(file["upload_time_iso_8601"]).date()


class PyPIOrLatestRelease(PyPIService):
    """pip-audit's PyPI service, falling back to the project page's list where the version page is a 404."""

    def __init__(self, timeout: int = 30) -> None:
        super().__init__(timeout=timeout)
        self.latest_only: dict[str, LatestOnly] = {}  # name -> checked against its latest release's list

    def query(self, spec: Dependency) -> tuple[Dependency, list[VulnerabilityResult]]:
        dep, vulns = super().query(spec)
        if spec.is_skipped() or not dep.is_skipped():
            return dep, vulns
        return spec, self._latest_release(cast(ResolvedDependency, spec))

    def _latest_release(self, spec: ResolvedDependency) -> list[VulnerabilityResult]:
        response = self.session.get(f"https://pypi.org/pypi/{spec.canonical_name}/json", timeout=self.timeout)
        if response.status_code != 200:
            raise ServiceError(f"PyPI has no page for {spec.canonical_name} (HTTP {response.status_code})")
        page = response.json()
        latest = Version(page["info"]["version"])
        if latest != spec.version:
            text = f"{spec.canonical_name} {spec.version} (latest {latest})"
            self.latest_only[spec.canonical_name] = LatestOnly(text, first_newer(page, spec.version))
        listed = [
            VulnerabilityResult.create(
                ids=[v["id"], *v.get("aliases", [])],
                description=(v.get("summary") or v.get("details") or "N/A").replace("\n", " "),
                fix_versions=sorted(Version(f) for f in v.get("fixed_in", [])),
                published=self._parse_rfc3339(v.get("published")),
            )
            for v in page.get("vulnerabilities") or []
            if not v.get("withdrawn")
        ]
        unique: list[VulnerabilityResult] = []  # PyPI lists one advisory under each of its databases' ids
        for vuln in listed:
            if not any(vuln.alias_of(seen) for seen in unique):
                unique.append(vuln)
        return unique


@dataclass(frozen=True)
class Accepted:
    """An entry of audit-ignore.toml: a vulnerability ([[ignore]]) or packages checked only against
    their latest release's list ([[partial]]), accepted for a reason until a date."""

    table: str
    ids: frozenset[str]
    packages: frozenset[str]
    reason: str
    expires: dt.date


FIELDS = {"ignore": ("id", "package", "reason", "expires"), "partial": ("packages", "reason", "expires")}


def accepted(tables: dict, today: dt.date) -> tuple[list[Accepted], list[str]]:
    """The entries in force, and a line for each one that is expired or incomplete."""
    ok, errors = [], []
    for table, fields in FIELDS.items():
        for n, entry in enumerate(tables.get(table, []), 1):
            error = _invalid(entry, fields, today)
            if error:
                errors.append(f"{IGNORE_FILE.name} [[{table}]] entry {n} {error}")
                continue
            packages = entry["packages"] if table == "partial" else [entry["package"]]
            ids = frozenset([entry["id"]] if table == "ignore" else [])
            ok.append(Accepted(table, ids, frozenset(packages), entry["reason"], entry["expires"]))
    return ok, errors


def _invalid(entry: dict, fields: tuple[str, ...], today: dt.date) -> str | None:
    missing = [f for f in fields if not entry.get(f)]
    what = entry.get("id") or ", ".join(entry.get("packages") or []) or "?"
    if missing:
        return f"({what}): missing {', '.join(missing)} (each entry needs {', '.join(fields)}; expires = YYYY-MM-DD)"
    if not isinstance(entry["expires"], dt.date):
        return f"({what}): expires must be a date, like 2027-01-31"
    if entry["expires"] < today:
        pkgs = entry.get("package") or what
        return f"({what}) expired on {entry['expires']}: upgrade {pkgs}, or renew the entry with a new reason"
    return None


def is_accepted(package: str, vuln: VulnerabilityResult, entries: list[Accepted]) -> Accepted | None:
    names = {vuln.id, *vuln.aliases}
    return next((e for e in entries if package in e.packages and e.ids & names), None)


def audit(locks: list[Path], ignore_file: Path, today: dt.date) -> int:
    entries, errors = accepted(tomllib.loads(ignore_file.read_text()), today)
    for line in errors:
        print(line)
    service = PyPIOrLatestRelease()
    source = RequirementSource(locks, require_hashes=True, disable_pip=True)
    found, unaudited, packages = 0, 0, set()
    for dep, vulns in Auditor(service).audit(source):
        packages.add(dep.canonical_name)
        if isinstance(dep, SkippedDependency):
            unaudited += 1
            print(f"NOT AUDITED {dep.canonical_name}: {dep.skip_reason}")
        for vuln in vulns:
            found += _report(dep, vuln, entries)
    where = ", ".join(str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in locks)
    counted = f"{len(packages)} package{'s' if len(packages) != 1 else ''}"
    print(f"pip-audit: {counted} in {where}: {found or 'no'} known vulnerabilit{'y' if found == 1 else 'ies'}")
    partial = report_partial(service.latest_only, [e for e in entries if e.table == "partial"], today)
    return 1 if found or errors or unaudited or partial else 0


def _report(dep: Dependency, vuln: VulnerabilityResult, entries: list[Accepted]) -> int:
    """Print one vulnerability; 1 when it fails the audit."""
    ok = is_accepted(dep.canonical_name, vuln, entries)
    fix = ", ".join(map(str, vuln.fix_versions)) or "none yet"
    line = f"{dep.canonical_name} {getattr(dep, 'version', '')} {vuln.id} (fixed in {fix}): {vuln.description}"
    if ok:
        print(f"accepted until {ok.expires}: {line[:200]} — {ok.reason}")
        return 0
    print(f"VULNERABLE {line[:300]}")
    return 1


def report_partial(latest_only: dict[str, LatestOnly], entries: list[Accepted], today: dt.date) -> int:
    """Print the packages checked against their latest release's list only; the count that fails the
    audit: not accepted, and their first newer release out for GRACE_DAYS or more (or of an unknown day)."""
    if not latest_only:
        return 0
    accepted_names = {name for e in entries for name in e.packages}
    print(f"  {len(latest_only)} checked against their latest release's vulnerability list only (PyPI's per-version "
          f"pages answered 404): {', '.join(latest_only[name].text for name in sorted(latest_only))}")  # fmt: skip
    failed = 0
    for name in sorted(set(latest_only) - accepted_names):
        only = latest_only[name]
        fix = (f"lock the latest release (python3 tools/lock.py --upgrade-package {name}), or accept {name} in "
               f"[[partial]] of {IGNORE_FILE.name} with a reason and an expiry date")  # fmt: skip
        fails_on = only.released + dt.timedelta(days=GRACE_DAYS) if only.released else None
        if fails_on and today < fails_on:
            print(f"NEW RELEASE {only.text}, newer since {only.released}: the audit fails on it from {fails_on}; {fix}")
            continue
        failed += 1
        print(f"PARTIAL {only.text}: a vulnerability fixed after our version would not show; {fix}")
    return failed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("locks", nargs="*", type=Path, help="hashed lock files (default: requirements/*.txt)")
    p.add_argument("--ignore-file", type=Path, default=IGNORE_FILE)
    args = p.parse_args()
    locks = [p.resolve() for p in args.locks] or sorted((REPO / "requirements").glob("*.txt"))
    sys.exit(audit(locks, args.ignore_file, dt.date.today()))


if __name__ == "__main__":
    main()
