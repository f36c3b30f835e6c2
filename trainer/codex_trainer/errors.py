"""Errors a user can fix: a bad spec or bad data. The CLI prints them and exits with code 2."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RETRYABLE = 1  # e.g. the Hub could not be reached: a retry may succeed
EXIT_USER_ERROR = 2  # permanent: the operator will not retry


class SpecError(Exception):
    """An invalid spec or data. `problems` is a list of (field path, message)."""

    def __init__(self, problems: list[tuple[str, str]] | str, message: str | None = None):
        if isinstance(problems, str):
            problems = [(problems, message or "")]
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(f"{path}: {msg}" if path else msg for path, msg in self.problems)


class TransientError(Exception):
    """Something outside the spec failed (the network, say): worth a retry, not a traceback."""
