"""`make audit`: pip-audit over the locks; exit 1 on a known vulnerability not accepted in
requirements/audit-ignore.toml, or on an entry there that is expired or incomplete.

    python3 tools/audit.py [LOCK ...] [--ignore-file FILE]   # default: every requirements/*.txt

pip-audit reads the hashed locks and asks PyPI for each locked version's vulnerabilities
(`/pypi/<name>/<version>/json`). Where PyPI's per-version pages are not reachable (some mirrors
serve only the per-project page: a 404 for every version), the package is checked against the list
PyPI publishes with the project's latest release instead: the same answer when the lock pins that
release; for an older pin, every vulnerability of the latest release is taken to affect it too, and
the package is named as checked against the latest release only, since a vulnerability fixed in a
newer release than ours is not on that list.
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
from pip_audit._service.interface import Dependency, ResolvedDependency, ServiceError, VulnerabilityResult

REPO = Path(__file__).resolve().parents[1]
IGNORE_FILE = REPO / "requirements" / "audit-ignore.toml"
IGNORE_FIELDS = ("id", "package", "reason", "expires")


class PyPIOrLatestRelease(PyPIService):
    """pip-audit's PyPI service, falling back to the project page's list where the version page is a 404."""

    def __init__(self, timeout: int = 30) -> None:
        super().__init__(timeout=timeout)
        self.latest_only: list[str] = []  # "name version (latest X)" checked against a newer release's list

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
            self.latest_only.append(f"{spec.canonical_name} {spec.version} (latest {latest})")
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
    id: str
    package: str
    reason: str
    expires: dt.date


def accepted(entries: list[dict], today: dt.date) -> tuple[list[Accepted], list[str]]:
    """The ignore entries in force, and a line for each one that is expired or incomplete."""
    ok, errors = [], []
    for n, entry in enumerate(entries, 1):
        missing = [f for f in IGNORE_FIELDS if not entry.get(f)]
        if missing:
            errors.append(f"{IGNORE_FILE.name} entry {n}: missing {', '.join(missing)} "
                          "(each entry needs id, package, reason and expires = YYYY-MM-DD)")  # fmt: skip
        elif not isinstance(entry["expires"], dt.date):
            errors.append(f"{IGNORE_FILE.name} entry {n} ({entry['id']}): expires must be a date, like 2027-01-31")
        elif entry["expires"] < today:
            pkg = entry["package"]
            errors.append(f"{IGNORE_FILE.name} entry {n} ({entry['id']} in {pkg}) expired on {entry['expires']}: "
                          f"upgrade {pkg}, or renew the entry with a new reason")  # fmt: skip
        else:
            ok.append(Accepted(entry["id"], entry["package"], entry["reason"], entry["expires"]))
    return ok, errors


def is_accepted(package: str, vuln: VulnerabilityResult, entries: list[Accepted]) -> Accepted | None:
    names = {vuln.id, *vuln.aliases}
    return next((e for e in entries if e.package == package and e.id in names), None)


def audit(locks: list[Path], ignore_file: Path, today: dt.date) -> int:
    entries, errors = accepted(tomllib.loads(ignore_file.read_text()).get("ignore", []), today)
    for line in errors:
        print(line)
    service = PyPIOrLatestRelease()
    source = RequirementSource(locks, require_hashes=True, disable_pip=True)
    found, packages = 0, set()
    for dep, vulns in Auditor(service).audit(source):
        packages.add((dep.canonical_name, str(getattr(dep, "version", ""))))
        for vuln in vulns:
            ok = is_accepted(dep.canonical_name, vuln, entries)
            fix = ", ".join(map(str, vuln.fix_versions)) or "none yet"
            line = f"{dep.canonical_name} {getattr(dep, 'version', '')} {vuln.id} (fixed in {fix}): {vuln.description}"
            if ok:
                print(f"accepted until {ok.expires}: {line[:200]} — {ok.reason}")
            else:
                found += 1
                print(f"VULNERABLE {line[:300]}")
    where = ", ".join(str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in locks)
    counted = f"{len(packages)} package{'s' if len(packages) != 1 else ''}"
    print(f"pip-audit: {counted} in {where}: {found or 'no'} known vulnerabilit{'y' if found == 1 else 'ies'}")
    if service.latest_only:
        print(f"  {len(service.latest_only)} checked against their latest release's list only (PyPI's per-version "
              f"pages answered 404): {', '.join(sorted(service.latest_only))}")  # fmt: skip
    return 1 if found or errors else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("locks", nargs="*", type=Path, help="hashed lock files (default: requirements/*.txt)")
    p.add_argument("--ignore-file", type=Path, default=IGNORE_FILE)
    args = p.parse_args()
    locks = [p.resolve() for p in args.locks] or sorted((REPO / "requirements").glob("*.txt"))
    sys.exit(audit(locks, args.ignore_file, dt.date.today()))


if __name__ == "__main__":
    main()
