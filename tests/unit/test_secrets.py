"""`make secrets` (tools/secret_scan.py, gitleaks) fails on a token anywhere in a repository's history or
tree, and never prints the token. Tokens are made up at run time, so this file holds none."""

from __future__ import annotations

import random
import string
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNER = REPO / "tools" / "secret_scan.py"


def fake_token(prefix: str, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    rng = random.Random()
    return prefix + "".join(rng.choice(alphabet) for _ in range(length))


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo, check=True,
                   capture_output=True)  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "job.yaml").write_text("model:\n  source: hf://org/model\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "a job")
    return tmp_path


def scan(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCANNER), str(repo)], capture_output=True, text=True, timeout=600)


def test_a_clean_repository_passes(repo):
    r = scan(repo)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no leaks found" in r.stderr


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("a GitHub token", fake_token("ghp_", 36)),
        ("a Hugging Face token", fake_token("hf_", 34, string.ascii_letters)),
    ],
    ids=["github", "huggingface"],
)
def test_a_token_committed_and_then_deleted_fails_the_scan(repo, name, token):
    (repo / "run.sh").write_text(f'export TOKEN="{token}"\ncodex-train run job.yaml\n')
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "run script")
    (repo / "run.sh").unlink()
    git(repo, "commit", "-qam", "drop the script")
    r = scan(repo)
    assert r.returncode == 1, f"{name} in the history went unnoticed:\n{r.stdout}{r.stderr}"
    assert "run.sh" in r.stdout + r.stderr and "secrets found" in r.stdout
    assert token not in r.stdout + r.stderr and token[8:] not in r.stdout + r.stderr, "the scan printed the secret"


def test_a_token_in_an_uncommitted_file_fails_the_scan(repo):
    token = fake_token("ghp_", 36)
    (repo / "notes.txt").write_text(f"github token: {token}\n")
    r = scan(repo)
    assert r.returncode == 1 and "notes.txt" in r.stdout + r.stderr
    assert token[8:] not in r.stdout + r.stderr


def test_an_ignored_build_output_is_not_scanned(repo):
    (repo / ".gitignore").write_text("/runs/\n")
    (repo / "runs").mkdir()
    (repo / "runs" / "env.txt").write_text(f"token {fake_token('ghp_', 36)}\n")
    assert scan(repo).returncode == 0


def test_a_shallow_clone_fetches_its_history_before_the_scan(repo, tmp_path):
    token = fake_token("ghp_", 36)
    (repo / "run.sh").write_text(f"TOKEN={token}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "run script")
    (repo / "run.sh").unlink()
    git(repo, "commit", "-qam", "drop it")
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow))
    r = scan(shallow)
    assert r.returncode == 1 and "run.sh" in r.stdout + r.stderr, r.stdout + r.stderr
