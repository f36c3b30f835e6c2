"""Plugins through entry points: data readers by file extension, and callbacks enabled by name.

    [project.entry-points."codex_trainer.readers"]      # a file extension (no dot) -> read(path, text_field)
    csv = "my_package.readers:read_csv"                  # returns the file's texts (an iterable of str)

    [project.entry-points."codex_trainer.callbacks"]    # a name for spec.callbacks -> a class or an object
    my-tracker = "my_package.hooks:MyTracker"            # with any of on_step, on_eval, on_checkpoint, on_end

The built-in readers (.jsonl, .json, .txt, .parquet) are registered the same way in this project's
pyproject.toml; they also work from a source tree that is not installed as a distribution. A callback
gets plain dicts, on rank 0 only; one that raises is reported in one line and disabled, and training
goes on. Unknown names are a SpecError (exit 2) listing what is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import SpecError

READERS = "codex_trainer.readers"
CALLBACKS = "codex_trainer.callbacks"
HOOKS = ("on_step", "on_eval", "on_checkpoint", "on_end")

# The built-in readers' entry points, for a source tree whose distribution metadata is absent or stale
_BUILTIN_READERS = {
    "jsonl": "codex_trainer.data:read_jsonl",
    "json": "codex_trainer.data:read_json",
    "txt": "codex_trainer.data:read_txt",
    "parquet": "codex_trainer.data:read_parquet",
}


def _installed(group: str, builtin: dict[str, str] | None = None) -> dict[str, EntryPoint]:
    """By name: this project's own entry points, then other packages', which replace them (a plugin's jsonl
    reader is used rather than the built-in one)."""
    found = {name: EntryPoint(name, value, group) for name, value in (builtin or {}).items()}
    eps = sorted(entry_points(group=group), key=lambda ep: not _own(ep))  # ours first: the others win
    found.update({_name(ep): ep for ep in eps})
    return found


def _name(ep: EntryPoint) -> str:
    return ep.name.lower().lstrip(".")


def _own(ep: EntryPoint) -> bool:
    return ep.value.startswith("codex_trainer.")


def _claimed_twice(group: str, name: str, field: str, what: str) -> None:
    """SpecError when two other packages register `name`: which one would be used is the order of their
    installation, so none is (a new-user check found the second one used without a word)."""
    claims = sorted({ep.value for ep in entry_points(group=group) if _name(ep) == name and not _own(ep)})
    if len(claims) > 1:
        raise SpecError(
            field,
            f"{what} is registered by {len(claims)} installed packages ({', '.join(claims)}; entry point group "
            f"{group}): uninstall all but one",
        )


def reader_extensions() -> list[str]:
    """The file extensions a reader is installed for, e.g. ['.jsonl', '.json', '.txt', '.parquet', '.csv']."""
    return [f".{name}" for name in _installed(READERS, _BUILTIN_READERS)]


def reader_for(extension: str, field: str) -> tuple[Callable[..., Any], str] | None:
    """(the reader for `extension` such as '.csv', what it is as 'module:attr'), or None when none is installed."""
    ep = _installed(READERS, _BUILTIN_READERS).get(extension.lower().lstrip("."))
    if ep is None:
        return None
    _claimed_twice(READERS, _name(ep), field, f"the {extension} reader")
    return _load(ep, field, f"the {extension} reader"), ep.value


def check_callbacks(names: list[str]) -> None:
    """Every name is an installed callback: SpecError listing the installed ones otherwise."""
    installed = _installed(CALLBACKS)
    unknown = [n for n in names if n not in installed]
    if unknown:
        have = ", ".join(sorted(installed)) or "none"
        raise SpecError(
            "spec.callbacks",
            f"no callback named {', '.join(repr(n) for n in unknown)} is installed (installed: {have}); "
            f"install the package that provides it (entry point group {CALLBACKS}) or remove the name",
        )
    for name in names:
        _claimed_twice(CALLBACKS, name, "spec.callbacks", f"callback '{name}'")
    for name in names:
        _load(installed[name], "spec.callbacks", f"callback '{name}'")  # imported: validate says what run would


def load_callbacks(names: list[str], warn: Callable[[str], None]) -> list[Callbacks]:
    """The named callbacks, ready to call (check_callbacks first). A class is instantiated with no
    arguments; one whose constructor raises is reported through `warn` and left out."""
    check_callbacks(names)
    installed = _installed(CALLBACKS)
    out = []
    for name in dict.fromkeys(names):  # each once, in the order given
        target = _load(installed[name], "spec.callbacks", f"callback '{name}'")
        try:
            obj = target() if isinstance(target, type) else target
        except Exception as e:  # noqa: BLE001 - a plugin's constructor: reported and left out, training goes on
            warn(f"callback '{name}' raised {_one_line(e)} when created; disabled for the rest of the run")
            continue
        out.append(Callbacks(name, obj, warn))
    return out


class Callbacks:
    """One enabled callback: `call(hook, payload)` passes a copy of the dict; the first exception is reported
    in one line and disables it."""

    def __init__(self, name: str, target: Any, warn: Callable[[str], None]):
        self.name = name
        self.target = target
        self.warn = warn
        self.enabled = True

    def call(self, hook: str, payload: dict[str, Any]) -> None:
        fn = getattr(self.target, hook, None) if self.enabled else None
        if fn is None:
            return
        try:
            fn(dict(payload))
        except Exception as e:  # noqa: BLE001 - a plugin's failure must not stop training
            self.enabled = False
            self.warn(f"callback '{self.name}' raised {_one_line(e)} in {hook}; disabled for the rest of the run")


def _load(ep: EntryPoint, field: str, what: str) -> Any:
    try:
        return ep.load()
    except Exception as e:  # noqa: BLE001 - an import error in a plugin: the installation is the problem
        raise SpecError(field, f"{what} ({ep.value}) could not be loaded: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__
