"""The project's two images without a registry: wheelhouse, build, load.

    python3 images/build.py operator            # `make operator-image`: codex.local/codex-operator:dev
    python3 images/build.py trainer             # `make trainer-image`:  codex.local/codex-trainer:dev
    python3 images/build.py operator --no-load  # build only, even when the test cluster is up
        [--force] (build even when nothing changed)  [--tag T]  [--base IMAGE] (a Debian bookworm image)

One code path for both (a `Recipe` each: Dockerfile, locks, sources, tag):

1. The wheelhouse `.whl/<image>-<key>/`: every wheel of the image's locks (requirements/build.txt and
   requirements/<image>.txt, written by `make lock`) for CPython 3.11 on manylinux x86_64 (Debian
   bookworm's python3), downloaded on the host with `pip download --require-hashes`, because containers
   here reach no package index; the locks lie beside the wheels and the image installs from them with
   `--require-hashes` too. The key is a hash of the locks: downloaded again only when they change, and
   then a wheel another wheelhouse already holds is copied, not downloaded.
2. The build context `.whl/context-*/`: only what the image needs (the sources copied; for the operator
   the wheelhouse hard-linked too), so that gigabytes of wheels never pass through the repository's own
   context. The trainer's 3 GB wheelhouse is served to its build over HTTP on the loopback instead: no
   context upload, no layer of wheels, and its venv is written once, in the image's own layer.
3. The image, labelled with a hash of everything it is built from (Dockerfile, locks, sources, base):
   rebuilt only when that changed.
4. The test cluster's workers get the image, each only when it lacks this very image (compared by image ID).

Docker itself (started when not running) and the Debian base `codex.local/debian:bookworm` (debootstrap)
come from the test harness's `Images` (tests/cluster/images.py), which the cluster uses as well. A build
holds a lock per image, so that a test session and `make` building at once do not race.

`ensure_trainer_image(cluster)` and `ensure_operator_image(cluster)` do 1-4 for a pytest fixture; each
costs a few `docker` and `crictl` calls when nothing changed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cluster"))
sys.path.insert(0, str(REPO / "operator"))

from images import BASE, Images  # noqa: E402

from codex_operator.names import DEFAULT_IMAGE  # noqa: E402

Log = Callable[[str], None]

WHL = REPO / ".whl"
HASH_LABEL = "ml.codex.source-hash"
OPERATOR_IMAGE = "codex.local/codex-operator:dev"
PYTHON_VERSION, ABI = "3.11", "cp311"
PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{minor}_x86_64" for minor in range(17, 37)]  # glibc 2.36
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info")


@dataclass(frozen=True)
class Recipe:
    """What one image is built from."""

    name: str
    dockerfile: Path
    # build.txt (pip, setuptools) first: it is installed first, by the venv's own older pip
    locks: tuple[Path, ...]
    sources: tuple[str, ...]  # what the Dockerfile copies in, relative to the repository
    tag: str
    disk: str  # what a cold build needs under Docker's root, for the message when it fills up
    # the wheelhouse reaches the build over HTTP on the loopback (build arg WHEELS, `--network host`) instead
    # of through the context: for the trainer's 3 GB, no context upload, no wheels layer, and no builder
    # stage whose 6 GB venv the image would copy
    serve_wheels: bool = False


TRAINER = Recipe(
    name="trainer",
    dockerfile=REPO / "Dockerfile.trainer",
    locks=(REPO / "requirements" / "build.txt", REPO / "requirements" / "trainer.txt"),
    sources=("pyproject.toml", "README.md", "trainer", "operator", "configs"),
    tag=DEFAULT_IMAGE,
    disk="about 7 GiB (the image, ~6.5 GB, and its small project stage)",
    serve_wheels=True,
)
OPERATOR = Recipe(
    name="operator",
    dockerfile=REPO / "Dockerfile.operator",
    locks=(REPO / "requirements" / "build.txt", REPO / "requirements" / "operator.txt"),
    sources=("pyproject.toml", "README.md", "trainer", "operator"),
    tag=OPERATOR_IMAGE,
    disk="about 1 GiB",
)
RECIPES = {r.name: r for r in (TRAINER, OPERATOR)}


def local_images() -> Images:
    """Docker on this machine, through the harness (its state directory, as the cluster's own is)."""
    state = Path(os.environ.get("CODEX_CLUSTER_DIR", REPO / ".cluster")).resolve()
    return Images(state)


# ---------------------------------------------------------------------- the wheelhouse


def wheelhouse_key(recipe: Recipe) -> str:
    text = json.dumps([[lock.read_text() for lock in recipe.locks], PYTHON_VERSION, ABI, PLATFORMS])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_wheelhouse(recipe: Recipe, log: Log = print) -> Path:
    """`.whl/<image>-<key>/` with the locks and every wheel they pin; that image's older ones are removed."""
    key = wheelhouse_key(recipe)
    dest = WHL / f"{recipe.name}-{key}"
    if (dest / ".complete").is_file():
        return dest
    partial = WHL / f"{recipe.name}-{key}.part"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for lock in recipe.locks:
        shutil.copy2(lock, partial / lock.name)
    complete = [d for d in WHL.iterdir() if d.is_dir() and (d / ".complete").is_file()]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial), "--only-binary=:all:",
           "--require-hashes", "--no-deps",
           "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", ABI,
           *(a for p in PLATFORMS for a in ("--platform", p)),
           *(a for d in complete for a in ("--find-links", str(d))),  # reuse what a wheelhouse has already
           *(a for lock in recipe.locks for a in ("-r", str(partial / lock.name)))]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}  # only PyPI and our own wheelhouses
    log(f"downloading the {recipe.name} wheelhouse into {dest.relative_to(REPO)} ...")
    start = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pip download failed:\n{r.stderr[-3000:]}")
    (partial / ".complete").write_text(key + "\n")
    partial.rename(dest)
    for d in complete:
        if d.name.startswith(f"{recipe.name}-"):
            shutil.rmtree(d, ignore_errors=True)
    size = sum(f.stat().st_size for f in dest.iterdir())
    took = time.monotonic() - start
    log(f"wheelhouse: {len(list(dest.glob('*.whl')))} wheels, {size / 2**20:.0f} MiB in {took:.0f} s")
    return dest


# ---------------------------------------------------------------------- the image


def _source_files(recipe: Recipe) -> list[Path]:
    files = [recipe.dockerfile]
    for name in recipe.sources:
        p = REPO / name
        if p.is_file():
            files.append(p)
        else:
            files += sorted(f for f in p.rglob("*") if f.is_file() and not _ignored(f))
    return files


def _ignored(path: Path) -> bool:
    return (
        "__pycache__" in path.parts
        or path.suffix in (".pyc", ".pyo")
        or any(part.endswith(".egg-info") for part in path.parts)
    )


def source_hash(recipe: Recipe, base: str = BASE) -> str:
    """A hash of everything the image is built from: the base's name, the Dockerfile, the locks, the sources."""
    h = hashlib.sha256(f"{wheelhouse_key(recipe)}\0{base}\0".encode())
    for f in _source_files(recipe):
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stage_context(recipe: Recipe, wheels: Path) -> Path:
    """A new `.whl/context-*/`: the sources and, unless the recipe serves them, wheels/ (hard links); nothing
    else. The caller removes it."""
    ctx = Path(tempfile.mkdtemp(prefix="context-", dir=WHL))
    (ctx / "wheels").mkdir()
    for f in [] if recipe.serve_wheels else wheels.iterdir():
        if f.name.endswith((".whl", ".txt")):
            try:
                os.link(f, ctx / "wheels" / f.name)
            except OSError:
                shutil.copy2(f, ctx / "wheels" / f.name)
    for name in recipe.sources:
        src = REPO / name
        if src.is_file():
            shutil.copy2(src, ctx / name)
        else:
            shutil.copytree(src, ctx / name, ignore=_IGNORED)
    return ctx


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Silent: a build fetches a few hundred wheels, and a line each would bury the build's own output."""


def wheels_port(wheels: Path) -> int:
    """The wheelhouse's port: the same for the same wheelhouse, so that WHEELS, a build argument, is the same
    and Docker reuses the cached venv layer of an earlier build."""
    return 20000 + int(hashlib.sha256(wheels.name.encode()).hexdigest()[:8], 16) % 20000


@contextlib.contextmanager
def served(wheels: Path) -> Iterator[str]:
    """The wheelhouse over HTTP on 127.0.0.1 while the block runs (a directory listing is what pip's
    --find-links reads; every wheel is still checked against the locks' hashes); yields its URL. On its
    own port, or on a free one when another build holds that (the venv layer is then built afresh)."""
    handler = functools.partial(_Quiet, directory=str(wheels))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", wheels_port(wheels)), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="wheelhouse", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def image_label(images: Images, tag: str) -> str | None:
    r = images.docker("image", "inspect", "-f", f'{{{{ index .Config.Labels "{HASH_LABEL}" }}}}', tag, check=False)
    if r.returncode != 0:
        return None
    return r.stdout.decode().strip() or None


@contextlib.contextmanager
def _locked(recipe: Recipe) -> Iterator[None]:
    """One build of an image at a time on this machine (a test session and `make` may start one each)."""
    WHL.mkdir(exist_ok=True)
    with (WHL / f"{recipe.name}.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build(images: Images, recipe: Recipe, tag: str | None = None, *, base: str = BASE, force: bool = False,
          log: Log = print) -> bool:  # fmt: skip
    """Build the image unless one with the same source hash is there. True when it built."""
    tag = tag or recipe.tag
    with _locked(recipe):
        if base == BASE:
            images.ensure_base()
        wheels = ensure_wheelhouse(recipe, log)
        want = source_hash(recipe, base)
        if not force and image_label(images, tag) == want:
            return False
        ctx = stage_context(recipe, wheels)
        try:
            with served(wheels) if recipe.serve_wheels else contextlib.nullcontext() as url:
                _docker_build(images, recipe, ctx, tag, base, want, log, wheels_url=url)
        finally:
            shutil.rmtree(ctx, ignore_errors=True)
        drop_stages_when_short(images, log)
    return True


def _docker_build(images: Images, recipe: Recipe, ctx: Path, tag: str, base: str, want: str, log: Log,
                  wheels_url: str | None = None) -> None:  # fmt: skip
    # --force-rm: a failed step's container would keep its layer (a failed trainer build's: 6 GB) for ever
    cmd = ["docker", "build", "--force-rm", "-f", str(recipe.dockerfile), "-t", tag, "--label", f"{HASH_LABEL}={want}",
           "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"CODEX_GIT_SHA={_git_sha(recipe)}"]  # fmt: skip
    if wheels_url:  # the build's RUN steps share the host's network, so they reach the loopback server
        cmd += ["--network", "host", "--build-arg", f"WHEELS={wheels_url}"]
    cmd.append(str(ctx))
    log(f"building {tag} (source hash {want}) ...")
    start = time.monotonic()
    # the legacy builder: BuildKit is a separate component that Debian's docker.io may lack
    r = subprocess.run(cmd, env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True, text=True)
    if r.returncode != 0:
        output = (r.stdout + r.stderr)[-4000:]
        hint = f"\n{_space_hint(images, recipe)}" if "no space left on device" in output else ""
        raise RuntimeError(f"docker build of {tag} failed:\n{output}{hint}")
    log(f"built {tag} in {time.monotonic() - start:.0f} s")


# What must stay free after a build for the tests that follow it: the trainer image on two workers
# (about 5.5 GB each, and 18 GB more while one of them imports it from the archive), the README's first command's new
# venv (about 6 GB), Kueue's build (its own Go cache until it succeeds), and a margin. On a machine with 80 GiB free
# at the start, a fresh clone's `.ci/run` had 42 GiB free after the trainer build and 31 at the lowest
# after it; a CI machine's disk filled up where the Go builds still kept their caches.
ROOM_AFTER_BUILD = 50 * 2**30


def drop_stages_when_short(images: Images, log: Log = print) -> None:
    """The legacy builder keeps every stage's images as the next build's cache: the operator's deps
    stage, the trainer's project stage (its venv is a layer of the image itself). Where less than
    ROOM_AFTER_BUILD is left free, they are removed (`docker image prune`, untagged images only): the
    next build is a cold one, minutes longer, instead of a test session that fills the disk (as a CI
    machine's did). The prune removes every untagged image of this Docker, other checkouts' stages too;
    CODEX_KEEP_STAGE_IMAGES=1 keeps them."""
    if os.environ.get("CODEX_KEEP_STAGE_IMAGES") == "1":
        return
    root = _docker_root(images)
    if not Path(root).is_dir():  # a remote Docker's disk is not this machine's
        return
    before = shutil.disk_usage(root).free
    if before >= ROOM_AFTER_BUILD:
        return
    r = images.docker("image", "prune", "--force", check=False)
    if r.returncode != 0:  # e.g. another prune running: the build itself succeeded
        log(f"docker image prune failed, the stage images stay: {r.stderr.decode().strip()[-300:]}")
        return
    after = shutil.disk_usage(root).free
    log(f"{before / 2**30:.1f} GiB free after the build, less than {ROOM_AFTER_BUILD / 2**30:.0f}: removed the "
        f"untagged stage images, {(after - before) / 2**30:.1f} GiB (the next build is a cold one)")  # fmt: skip


def _docker_root(images: Images) -> str:
    return images.docker("info", "-f", "{{.DockerRootDir}}", check=False).stdout.decode().strip() or "/var/lib/docker"


def _space_hint(images: Images, recipe: Recipe) -> str:
    """What to do when Docker's disk filled during a build: how much is free, and what prune would free."""
    root = _docker_root(images)
    free = shutil.disk_usage(root).free / 2**30 if Path(root).is_dir() else float("nan")
    dangling = images.docker("images", "-q", "--filter", "dangling=true", check=False).stdout.split()
    return (f"Docker's disk ({root}) filled up: {free:.1f} GiB free now, and a cold build of the {recipe.name} "
            f"image wants {recipe.disk}. Docker holds {len(dangling)} untagged images from earlier builds "
            "(the legacy builder keeps every stage): `docker image prune` removes them (the next build is "
            "then a cold one)")  # fmt: skip


def image_size(images: Images, tag: str) -> int:
    return int(images.docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.decode().strip())


def _git_sha(recipe: Recipe) -> str:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        return "unknown"
    paths = [str(recipe.dockerfile.relative_to(REPO)), *recipe.sources]
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return r.stdout.strip() + ("-dirty" if dirty else "")


# ---------------------------------------------------------------------- the node


def load(cluster: Any, tag: str, log: Log = print) -> None:
    """Put the image on the cluster's nodes that run pods (the cluster skips a node that has it already)."""
    start = time.monotonic()
    cluster.load_image(tag)
    log(f"{tag} is on the nodes ({time.monotonic() - start:.0f} s)")


def ensure_image(cluster: Any, recipe: Recipe, tag: str | None = None) -> str:
    """The image built from the current sources and present on the cluster's workers; returns its tag."""
    tag = tag or recipe.tag
    build(cluster.images, recipe, tag)
    load(cluster, tag)
    return tag


def ensure_trainer_image(cluster: Any, tag: str = TRAINER.tag) -> str:
    return ensure_image(cluster, TRAINER, tag)


def ensure_operator_image(cluster: Any, tag: str = OPERATOR.tag) -> str:
    return ensure_image(cluster, OPERATOR, tag)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Build an image of the project and load it into the local test cluster.")
    p.add_argument("image", choices=sorted(RECIPES))
    p.add_argument("--tag", help="default: codex.local/codex-<image>:dev")
    p.add_argument("--base", default=BASE, help=f"a Debian bookworm image (default {BASE}, made by debootstrap)")
    p.add_argument("--force", action="store_true", help="build even when the source hash is unchanged")
    p.add_argument("--no-load", action="store_true", help="do not load it into the test cluster")
    args = p.parse_args(argv)
    recipe = RECIPES[args.image]
    tag = args.tag or recipe.tag
    from cluster import Cluster

    cluster = Cluster()
    if not build(cluster.images, recipe, tag, base=args.base, force=args.force):
        print(f"{tag} is up to date (source hash {source_hash(recipe, args.base)})")
    print(f"{tag}: {image_size(cluster.images, tag) / 2**20:.0f} MiB")
    if args.no_load:
        return
    if cluster.is_up():
        load(cluster, tag)
    else:
        print("the test cluster is not up: not loaded (make cluster-up, then run this again to load it)")


if __name__ == "__main__":
    main()
