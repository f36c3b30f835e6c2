"""`make secrets`: gitleaks over a repository's whole history and over the files in its tree;
exit 1 on a finding (printed redacted: the secret itself never reaches the log).

    python3 tools/secret_scan.py [REPO]   # default: this repository

1. History: every commit reachable from any ref (`gitleaks git --log-opts=--all`), so a token that
   was committed and deleted later is still found.
2. The tree: the files git sees now, committed or not (tracked, or untracked and not ignored),
   copied aside and scanned with `gitleaks dir`; ignored build outputs (.cluster/, .whl/, runs/)
   are not the project's text and are left out.

gitleaks is built from the Go module proxy on first use into .tools/bin (about 15 s).
Findings that are not secrets go into the repository's .gitleaksignore, one fingerprint a line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GITLEAKS_MODULE = "github.com/zricethezav/gitleaks/v8"
GITLEAKS_VERSION = "v8.30.1"
BIN = REPO / ".tools" / "bin"


def gitleaks() -> Path:
    """The pinned gitleaks, built with `go install` the first time."""
    exe = BIN / "gitleaks"
    stamp = BIN / "gitleaks.version"
    if exe.is_file() and stamp.is_file() and stamp.read_text().strip() == GITLEAKS_VERSION:
        return exe
    BIN.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(BIN), "GOFLAGS": ""}
    subprocess.run(["go", "install", f"{GITLEAKS_MODULE}@{GITLEAKS_VERSION}"], env=env, check=True)
    stamp.write_text(GITLEAKS_VERSION + "\n")
    return exe


def tree_files(repo: Path) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.decode()  # fmt: skip
    return [name for name in listed.split("\0") if name and (repo / name).is_file()]


def is_shallow(repo: Path) -> bool:
    r = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=repo, capture_output=True, text=True)
    return r.stdout.strip() == "true"


def scan(repo: Path) -> int:
    if is_shallow(repo):  # a shallow clone lacks the history: fetch it, or say plainly what is not scanned
        fetched = subprocess.run(["git", "fetch", "--quiet", "--unshallow"], cwd=repo, capture_output=True, text=True)
        if fetched.returncode != 0:
            print(f"WARNING: {repo} is a shallow clone and its origin gave no more history "
                  f"({fetched.stderr.strip()[:200]}): only the commits it has are scanned")  # fmt: skip
    exe = str(gitleaks())
    common = ["--no-banner", "--no-color", "--verbose", "--redact", "--exit-code", "1"]
    common += ["--gitleaks-ignore-path", str(repo)]
    print(f"gitleaks {GITLEAKS_VERSION}: the history of {repo}")
    history = subprocess.run([exe, "git", *common, "--log-opts=--all", str(repo)])
    with tempfile.TemporaryDirectory(prefix="secrets-") as tmp:
        files = tree_files(repo)
        for name in files:
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, Path(tmp) / name, follow_symlinks=False)
        print(f"gitleaks {GITLEAKS_VERSION}: the {len(files)} files of its tree")
        tree = subprocess.run([exe, "dir", *common, "."], cwd=tmp)  # paths as in the repository
    found = history.returncode != 0 or tree.returncode != 0
    if found:
        print("secrets found (above, redacted): remove them from the tree and the history, and revoke them; "
              "a finding that is no secret goes into .gitleaksignore by its Fingerprint")  # fmt: skip
    return 1 if found else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("repo", nargs="?", type=Path, default=REPO)
    sys.exit(scan(p.parse_args().repo.resolve()))


if __name__ == "__main__":
    main()
