"""Turn a source string (hf://org/name@rev or a local path) into what from_pretrained takes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SpecError, TransientError
from .fields import HF_SOURCE

if TYPE_CHECKING:
    from .spec import JobSpec

HUB_PROBE_TIMEOUT = 10.0  # seconds for the one look-up that tells whether the Hub answers at all
_answered: set[tuple[str, str | None]] = set()


def resolve_source(source: str, field: str, what: str = "a model") -> tuple[str, str | None]:
    """Return (name_or_path, revision). A local path must exist; a Hub repository (and revision) is looked
    up once, without retries, so an unreachable Hub is one line within seconds instead of a minute of
    retry warnings from from_pretrained, and a missing repository or revision is refused at once."""
    m = HF_SOURCE.match(source)
    if m:
        _probe_hub(m.group("repo"), m.group("rev"), source, field, what)
        return m.group("repo"), m.group("rev")
    path = Path(source).expanduser()
    if not path.exists():
        raise SpecError(field, f"'{source}' is neither hf://org/name[@revision] nor an existing local directory")
    return str(path), None


COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_commit(source: str) -> str | None:
    """The commit of a Hub model's files as loaded (from the local cache, where from_pretrained put them); None
    for a local or scratch source, or where the cache does not say. A revision that is a branch or a tag (or
    none: main) moves when the repository is pushed to; its commit does not."""
    m = HF_SOURCE.match(source)
    if m is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(m.group("repo"), "config.json", revision=m.group("rev"))
    commit = Path(found).parent.name if isinstance(found, str) else ""
    return commit if COMMIT.fullmatch(commit) else None


def branch_commit(source: str) -> str | None:
    """The commit a Hub model's revision (a branch or a tag; none: main) names now: the Hub's answer, or offline
    (or with the Hub not answering) the local cache's; None for a local or scratch source, or where neither says."""
    m = HF_SOURCE.match(source)
    if m is None:
        return None
    if COMMIT.fullmatch(m.group("rev") or ""):
        return m.group("rev")
    from huggingface_hub import HfApi, constants

    if not constants.HF_HUB_OFFLINE:
        try:
            sha = HfApi().model_info(m.group("repo"), revision=m.group("rev"), timeout=HUB_PROBE_TIMEOUT).sha
        except Exception:  # noqa: BLE001 - the load that follows says what is wrong, as without this look-up
            sha = None
        if sha and COMMIT.fullmatch(sha):
            return sha
    return hub_commit(source)


def at_commit(source: str, commit: str | None) -> str:
    """The Hub source pinned to `commit` (a run resumes on the base it started from); others as they are."""
    m = HF_SOURCE.match(source)
    return f"hf://{m.group('repo')}@{commit}" if m and commit else source


def tokenizer_at(spec: JobSpec, commit: str | None) -> str:
    """The tokenizer's source for a run whose Hub model is pinned to `commit`: from the same repository at the
    same revision (hf://org/name and @main alike; the Hub's names are not case-sensitive), at that commit too,
    spelled as the model is (the files the model's commit came with, in the same cache); else as the spec says."""
    tok, model = HF_SOURCE.match(spec.tokenizer_source), HF_SOURCE.match(spec.model.source)
    if not (tok and model and commit) or tok.group("repo").lower() != model.group("repo").lower():
        return spec.tokenizer_source
    if (tok.group("rev") or "main") != (model.group("rev") or "main"):
        return spec.tokenizer_source  # a revision of its own (its tokens are checked on resume all the same)
    return at_commit(spec.model.source, commit)


def _probe_hub(repo: str, revision: str | None, source: str, field: str, what: str) -> None:
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE or (repo, revision) in _answered:
        return  # offline, from_pretrained reads the local cache alone
    try:
        HfApi().model_info(repo, revision=revision, timeout=HUB_PROBE_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - load_failure sorts it into the user's problem or a retryable one
        raise load_failure(e, source, field, what) from None
    _answered.add((repo, revision))


def load_failure(e: Exception, source: str, field: str, what: str) -> Exception:
    """The error to raise when from_pretrained fails: a SpecError when the source itself is wrong
    (no such repository, revision or files, a gated repository, a local directory without a
    model), a TransientError when the Hub could not be reached, so the run is retried."""
    from huggingface_hub import errors as hub

    permanent = (
        hub.RepositoryNotFoundError,
        hub.RevisionNotFoundError,
        hub.GatedRepoError,
        hub.RemoteEntryNotFoundError,  # not EntryNotFoundError: the local-cache miss offline is one too
        hub.HFValidationError,
    )
    chain: list[BaseException] = []
    c: BaseException | None = e
    while c is not None and len(chain) < 10:
        chain.append(c)
        c = c.__cause__ or c.__context__
    if not HF_SOURCE.match(source) and (Path(source).expanduser() / "adapter_config.json").is_file():
        return SpecError(
            field,
            f"'{source}' holds a PEFT adapter (adapter_config.json), not {what}: name the adapter's base model "
            "here, or a merged model (a run with peft.merge: true writes one to final/merged)",
        )
    local = Path(source).expanduser()
    if what == "a tokenizer" and not HF_SOURCE.match(source) and local.is_dir() and not _tokenizer_files(local):
        # transformers' own words run over several lines and name no fix (a run's base-model/ has no tokenizer)
        return SpecError(
            field,
            f"'{source}' holds no tokenizer (no tokenizer.json or tokenizer_config.json): set spec.tokenizer to one "
            "that does (a Hub model, a folder, a run's final/), or 'bytes' for the built-in byte tokenizer",
        )
    if not HF_SOURCE.match(source) or any(isinstance(c, permanent) for c in chain):
        return SpecError(field, f"cannot load {what} from '{source}': {str(e).splitlines()[0]}")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # the cache is all there is: say what to put there (retried, as it may be)
        return TransientError(
            f"could not fetch {what} '{source}': HF_HUB_OFFLINE is set and the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) does not hold it; put it there (a resumed run needs the commit it started "
            f"on, after the @), or unset HF_HUB_OFFLINE where the Hub can be reached (retryable): "
            f"{str(e).splitlines()[0][:200]}"
        )
    return TransientError(f"could not fetch {what} '{source}' from the Hub (retryable): {str(e).splitlines()[0]}")


def _tokenizer_files(folder: Path) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt",
             "spiece.model", "sentencepiece.bpe.model")  # fmt: skip
    return any((folder / name).is_file() for name in names)
