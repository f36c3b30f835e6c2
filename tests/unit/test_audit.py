"""`make audit` fails on a known vulnerability in a lock, accepts one only with a reason and an expiry
date, and fails again once that date has passed. The planted lock asks PyPI (the same index CI
installs from) about pycrypto 2.6.1, whose vulnerabilities (CVE-2013-7459, CVE-2018-6594) will never
be fixed: the project is abandoned."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "tools"))  # after the standard library and site-packages

import audit  # noqa: E402

VULNERABLE = "pycrypto==2.6.1 --hash=sha256:f2ce1e989b272cfcb677616763e0a2e7ec659effa67a88aa92b3a65528f60a3c\n"
# older than the latest release (pycrypto 2.6.1, six 1.17.0)
OLDER_VULNERABLE = "pycrypto==2.6 --hash=sha256:7293c9d7e8af2e44a82f86eb9c3b058880f4bcc884bf3ad6c8a34b64986edde8\n"
OLDER_CLEAN = "six==1.16.0 --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254\n"
PARTIAL_SIX = '[[partial]]\npackages = ["six"]\nreason = "test"\nexpires = {expires}\n'
ENTRY = 'id = "{id}"\npackage = "pycrypto"\nreason = "test: never imported"\nexpires = {expires}\n'


def run_audit(tmp_path: Path, ignore: str = "ignore = []\n", lock: str = VULNERABLE) -> subprocess.CompletedProcess:
    (tmp_path / "lock.txt").write_text(lock)
    (tmp_path / "ignore.toml").write_text(ignore)
    cmd = [sys.executable, str(REPO / "tools" / "audit.py"), str(tmp_path / "lock.txt"),
           "--ignore-file", str(tmp_path / "ignore.toml")]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def ignore_both(expires: str) -> str:
    return "".join(f"[[ignore]]\n{ENTRY.format(id=i, expires=expires)}" for i in ("CVE-2013-7459", "PYSEC-2018-97"))


def test_a_known_vulnerability_fails_the_audit(tmp_path):
    r = run_audit(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "VULNERABLE pycrypto 2.6.1 PYSEC-2017-94" in r.stdout
    assert "VULNERABLE pycrypto 2.6.1 PYSEC-2018-97" in r.stdout
    assert "pip-audit: 1 package in" in r.stdout and "2 known vulnerabilities" in r.stdout


def test_an_accepted_vulnerability_passes_until_its_expiry(tmp_path):
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    r = run_audit(tmp_path, ignore_both(tomorrow.isoformat()))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"accepted until {tomorrow}: pycrypto 2.6.1 PYSEC-2017-94" in r.stdout
    assert "test: never imported" in r.stdout and "no known vulnerabilities" in r.stdout


def test_an_expired_acceptance_fails_again(tmp_path):
    r = run_audit(tmp_path, ignore_both("2026-01-01"))
    assert r.returncode == 1
    assert "[[ignore]] entry 1 (CVE-2013-7459) expired on 2026-01-01: upgrade pycrypto, or renew" in r.stdout
    assert "VULNERABLE pycrypto 2.6.1 PYSEC-2017-94" in r.stdout


def test_an_unhashed_lock_is_refused(tmp_path):
    (tmp_path / "lock.txt").write_text("pycrypto==2.6.1\n")
    cmd = [sys.executable, str(REPO / "tools" / "audit.py"), str(tmp_path / "lock.txt")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "hash" in (r.stdout + r.stderr).lower()


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"id": "X-1", "package": "p", "expires": dt.date(2030, 1, 1)}, "entry 1 (X-1): missing reason"),
        ({"id": "X-1", "package": "p", "reason": "r"}, "entry 1 (X-1): missing expires"),
        ({"id": "X-1", "package": "p", "reason": "r", "expires": "soon"}, "expires must be a date, like 2027-01-31"),
        ({"id": "X-1", "package": "p", "reason": "r", "expires": dt.date(2026, 11, 27)}, "expired on 2026-11-27"),
    ],
)
def test_each_acceptance_needs_a_reason_and_a_future_expiry(entry, error):
    ok, errors = audit.accepted({"ignore": [entry]}, today=dt.date(2026, 11, 28))
    assert ok == [] and len(errors) == 1 and error in errors[0]


def test_an_acceptance_lasts_through_its_expiry_day():
    entry = {"id": "X-1", "package": "p", "reason": "r", "expires": dt.date(2026, 11, 28)}
    ok, errors = audit.accepted({"ignore": [entry]}, today=dt.date(2026, 11, 28))
    assert errors == [] and [sorted(e.ids) for e in ok] == [["X-1"]]


def test_an_older_pin_counts_the_latest_releases_vulnerabilities(tmp_path):
    r = run_audit(tmp_path, lock=OLDER_VULNERABLE)
    assert r.returncode == 1
    assert "VULNERABLE pycrypto 2.6 PYSEC-2017-94" in r.stdout


def test_an_older_pin_checked_only_against_the_latest_release_fails_unless_accepted(tmp_path):
    r = run_audit(tmp_path, lock=OLDER_CLEAN)
    if "PARTIAL" not in r.stdout:  # a machine that reaches PyPI's per-version pages audits six 1.16.0 exactly
        assert r.returncode == 0 and "checked against their latest release" not in r.stdout
        return
    assert r.returncode == 1
    assert "PARTIAL six 1.16.0 (latest " in r.stdout and "accept six in [[partial]]" in r.stdout
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    assert run_audit(tmp_path, PARTIAL_SIX.format(expires=tomorrow), lock=OLDER_CLEAN).returncode == 0
    expired = run_audit(tmp_path, PARTIAL_SIX.format(expires="2026-01-01"), lock=OLDER_CLEAN)
    assert expired.returncode == 1 and "[[partial]] entry 1 (six) expired on 2026-01-01" in expired.stdout


def test_the_committed_acceptances_are_complete_and_in_force():
    tables = tomllib.loads((REPO / "requirements" / "audit-ignore.toml").read_text())
    ok, errors = audit.accepted(tables, today=dt.date.today())
    assert errors == []


def test_a_release_out_for_less_than_a_week_warns_with_the_day_it_starts_failing(capsys):
    today = dt.date(2026, 12, 6)
    only = {
        "grpcio": audit.LatestOnly("grpcio 1.85.3 (latest 1.85.4)", dt.date(2026, 12, 1)),
        "six": audit.LatestOnly("six 1.16.0 (latest 1.17.0)", dt.date(2026, 11, 29)),
        "old": audit.LatestOnly("old 1.0 (latest 2.0)", None),
    }
    assert audit.report_partial(only, [], today) == 2
    out = capsys.readouterr().out
    assert ("NEW RELEASE grpcio 1.85.3 (latest 1.85.4), newer since 2026-12-01: the audit fails on it from "
            "2026-12-08; lock the latest release (python3 tools/lock.py --upgrade-package grpcio)") in out  # fmt: skip
    assert "PARTIAL six 1.16.0 (latest 1.17.0): a vulnerability fixed after our version" in out
    assert "PARTIAL old 1.0 (latest 2.0)" in out
    assert audit.report_partial(only, [], dt.date(2026, 12, 8)) == 3


def test_the_grace_counts_from_the_first_release_newer_than_ours_not_the_latest():
    """A pin a month behind does not pass again for a week each time another release comes out."""
    from packaging.version import Version

    def files(day: str, yanked: bool = False) -> list[dict]:
        return [{"upload_time_iso_8601": f"{day}T10:00:00.000000Z", "yanked": yanked}]

    page = {
        "releases": {
            "1.0": files("2026-01-01"),
            "1.1": files("2026-11-01"),
            "1.2rc1": files("2026-10-01"),  # a pre-release: not a release to lock
            "1.2": files("2026-12-04"),
            "bogus": files("2020-01-01"),
        },
        "urls": files("2026-12-04"),
    }
    assert audit.first_newer(page, Version("1.0")) == dt.date(2026, 11, 1)
    assert audit.first_newer(page, Version("1.1")) == dt.date(2026, 12, 4)
    page["releases"]["1.1"] = files("2026-11-01", yanked=True)
    assert audit.first_newer(page, Version("1.0")) == dt.date(2026, 12, 4)
    assert audit.first_newer({"urls": files("2026-12-04")}, Version("1.0")) == dt.date(2026, 12, 4)
