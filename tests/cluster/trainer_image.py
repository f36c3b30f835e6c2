"""The trainer image (Dockerfile.trainer) without a registry: wheelhouse, build, load.

    python3 tests/cluster/trainer_image.py            # what `make trainer-image` runs
    python3 tests/cluster/trainer_image.py --no-load  # build only, even when the cluster is up

1. The wheelhouse `.whl/trainer-<key>/`: every wheel of the locks requirements/build.txt and
   requirements/trainer.txt (`make lock`), for CPython 3.11 on manylinux x86_64 (Debian bookworm's
   python3), downloaded on the host with `pip download --require-hashes` (containers here reach no
   package index), with the two locks beside them; the image installs from them with
   `--require-hashes` too. The key is a hash of the locks, so it is downloaded again only when they change.
2. The build context `.whl/context-*/`: only what the image needs (the wheelhouse hard-linked, the
   sources copied), so the 3 GB of wheels never pass through the repository's own context.
3. The image, labelled with a hash of everything it is built from: rebuilt only when that changed.
4. The node's containerd gets the image only when it lacks this very image (compared by image ID).

`ensure_trainer_image(cluster)` does 1-4 for a pytest session fixture; it costs a few `docker` and
`ctr` calls when nothing changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "operator"))

from images import Images  # noqa: E402

from codex_operator.names import DEFAULT_IMAGE  # noqa: E402

DOCKERFILE = REPO / "Dockerfile.trainer"
WHL = REPO / ".whl"
SOURCES = ["pyproject.toml", "README.md", "trainer", "operator", "configs"]  # what the image copies in
HASH_LABEL = "ml.codex.source-hash"
# build.txt (pip, setuptools) is installed first, so that the venv's own old pip is used for it alone
LOCKS = [REPO / "requirements" / "build.txt", REPO / "requirements" / "trainer.txt"]
PYTHON_VERSION, ABI = "3.11", "cp311"
PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{minor}_x86_64" for minor in range(17, 37)]  # glibc 2.36


# ---------------------------------------------------------------------- the wheelhouse


def wheelhouse_key() -> str:
    text = json.dumps([[lock.read_text() for lock in LOCKS], PYTHON_VERSION, ABI, PLATFORMS])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_wheelhouse(log=print) -> Path:
    """`.whl/trainer-<key>/` with the locks and every wheel they pin; older ones are removed."""
    key = wheelhouse_key()
    dest = WHL / f"trainer-{key}"
    if (dest / ".complete").is_file():
        return dest
    partial = WHL / f"trainer-{key}.part"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for lock in LOCKS:
        shutil.copy2(lock, partial / lock.name)
    previous = [d for d in WHL.glob("trainer-*") if d.is_dir() and (d / ".complete").is_file()]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial), "--only-binary=:all:",
           "--require-hashes", "--no-deps",
           "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", ABI,
           *(a for p in PLATFORMS for a in ("--platform", p)),
           *(a for d in previous for a in ("--find-links", str(d))),  # reuse what an older wheelhouse has
           *(a for lock in LOCKS for a in ("-r", str(partial / lock.name)))]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}  # only PyPI and our own wheelhouses
    log(f"downloading the trainer wheelhouse into {dest.relative_to(REPO)} ...")
    start = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pip download failed:\n{r.stderr[-3000:]}")
    (partial / ".complete").write_text(key + "\n")
    partial.rename(dest)
    for d in previous:
        shutil.rmtree(d, ignore_errors=True)
    size = sum(f.stat().st_size for f in dest.iterdir())
    took = time.monotonic() - start
    log(f"wheelhouse: {len(list(dest.glob('*.whl')))} wheels, {size / 2**30:.1f} GiB in {took:.0f} s")
    return dest


# ---------------------------------------------------------------------- the image


def _source_files() -> list[Path]:
    files = [DOCKERFILE]
    for name in SOURCES:
        p = REPO / name
        if p.is_file():
            files.append(p)
        else:
            files += sorted(f for f in p.rglob("*") if f.is_file() and not _ignored(f))
    return files


def _ignored(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo") or path.name.endswith(".egg-info")


def source_hash() -> str:
    """A hash of everything the image is built from: the Dockerfile, the locks and the sources."""
    h = hashlib.sha256(wheelhouse_key().encode())
    for f in _source_files():
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stage_context(wheels: Path) -> Path:
    """A new `.whl/context-*/`: wheels/ (hard links) and the sources, nothing else. The caller removes it."""
    ctx = Path(tempfile.mkdtemp(prefix="context-", dir=WHL))
    (ctx / "wheels").mkdir()
    for f in wheels.iterdir():
        if f.name.endswith((".whl", ".txt")):
            try:
                os.link(f, ctx / "wheels" / f.name)
            except OSError:
                shutil.copy2(f, ctx / "wheels" / f.name)
    for name in SOURCES:
        src = REPO / name
        if src.is_file():
            shutil.copy2(src, ctx / name)
        else:
            shutil.copytree(src, ctx / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return ctx


def image_label(images: Images, tag: str) -> str | None:
    r = images.docker("image", "inspect", "-f", f'{{{{ index .Config.Labels "{HASH_LABEL}" }}}}', tag, check=False)
    if r.returncode != 0:
        return None
    return r.stdout.decode().strip() or None


def build(images: Images, tag: str = DEFAULT_IMAGE, force: bool = False, log=print) -> bool:
    """Build the image unless one with the same source hash is there. True when it built."""
    images.ensure_base()
    wheels = ensure_wheelhouse(log)
    want = source_hash()
    if not force and image_label(images, tag) == want:
        return False
    ctx = stage_context(wheels)
    try:
        _docker_build(ctx, tag, want, log, images)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return True


def _space_hint(images: Images) -> str:
    """What to do when Docker's disk filled during a build: how much is free, and what prune would free."""
    root = images.docker("info", "-f", "{{.DockerRootDir}}", check=False).stdout.decode().strip() or "/var/lib/docker"
    free = shutil.disk_usage(root).free / 2**30 if Path(root).is_dir() else float("nan")
    dangling = images.docker("images", "-q", "--filter", "dangling=true", check=False).stdout.split()
    return (f"Docker's disk ({root}) filled up: {free:.1f} GiB free now, and a cold build wants about 16 GiB "
            f"(the deps stage, ~10 GB, and the image, ~6.5 GB). Docker holds {len(dangling)} untagged images from "
            "earlier builds: `docker image prune` removes them (the next build is then a cold one)")  # fmt: skip


def _docker_build(ctx: Path, tag: str, want: str, log, images: Images) -> None:
    cmd = ["docker", "build", "-f", str(DOCKERFILE), "-t", tag, "--label", f"{HASH_LABEL}={want}",
           "--build-arg", f"CODEX_GIT_SHA={_git_sha()}", str(ctx)]  # fmt: skip
    log(f"building {tag} (source hash {want}) ...")
    start = time.monotonic()
    r = subprocess.run(cmd, env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True, text=True)
    if r.returncode != 0:
        output = (r.stdout + r.stderr)[-4000:]
        hint = f"\n{_space_hint(images)}" if "no space left on device" in output else ""
        raise RuntimeError(f"docker build of {tag} failed:\n{output}{hint}")
    log(f"built {tag} in {time.monotonic() - start:.0f} s")


def image_size(images: Images, tag: str) -> int:
    return int(images.docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.decode().strip())


def _git_sha() -> str:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "Dockerfile.trainer", *SOURCES], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return r.stdout.strip() + ("-dirty" if dirty else "")


# ---------------------------------------------------------------------- the node


def node_has(cluster, tag: str) -> bool:
    """Whether the local cluster's containerd holds `tag` as the very image Docker has (same image ID)."""
    ctr = ["ctr", "--address", cluster.containerd_socket, "--namespace", "k8s.io"]
    image_id = cluster.images.docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.decode().strip()
    listed = subprocess.run([*ctr, "images", "ls"], capture_output=True, text=True).stdout.splitlines()
    for line in listed[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] in (tag, f"docker.io/library/{tag}"):
            manifest = subprocess.run([*ctr, "content", "get", fields[2]], capture_output=True, text=True)
            if manifest.returncode == 0:
                with_config = json.loads(manifest.stdout).get("config", {})
                return with_config.get("digest") == image_id
    return False


def load(cluster, tag: str = DEFAULT_IMAGE, log=print) -> bool:
    """Put the image on the node unless it is there already. True when it loaded."""
    if not hasattr(cluster, "containerd_socket"):  # another cluster (kind): its loader skips what the node has
        cluster.load_image(tag)
        return True
    if node_has(cluster, tag):
        return False
    start = time.monotonic()
    # streamed: `docker save` of a multi-GiB image does not go through this process's memory
    ctr = f"ctr --address {cluster.containerd_socket} --namespace k8s.io images import -"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", f"docker save {tag} | {ctr}"], capture_output=True, text=True)
    if r.returncode != 0 or not node_has(cluster, tag):
        raise RuntimeError(f"loading {tag} into the node failed: {r.stderr.strip()[-2000:]}")
    log(f"loaded {tag} into the node in {time.monotonic() - start:.0f} s")
    return True


def ensure_trainer_image(cluster, tag: str = DEFAULT_IMAGE) -> str:
    """The trainer image built from the current sources and present on the cluster's node."""
    build(cluster.images, tag)
    load(cluster, tag)
    return tag


def main() -> None:
    p = argparse.ArgumentParser(description="Build the trainer image and load it into the local test cluster.")
    p.add_argument("--tag", default=DEFAULT_IMAGE)
    p.add_argument("--force", action="store_true", help="build even when the source hash is unchanged")
    p.add_argument("--no-load", action="store_true", help="do not load it into the test cluster")
    args = p.parse_args()
    from cluster import Cluster

    cluster = Cluster()
    if not build(cluster.images, args.tag, force=args.force):
        print(f"{args.tag} is up to date (source hash {source_hash()})")
    print(f"{args.tag}: {image_size(cluster.images, args.tag) / 2**30:.2f} GiB")
    if args.no_load:
        return
    if cluster.is_up():
        if not load(cluster, args.tag):
            print(f"the node already has {args.tag}")
    else:
        print("the test cluster is not up: not loaded (make cluster-up, then run this again to load it)")


if __name__ == "__main__":
    main()
