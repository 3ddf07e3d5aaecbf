"""The one exception type a user can cause; the CLI turns it into one line and an exit code."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave (file, input, option): shown as one line, no traceback."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first non-empty line (its type name when it has no message), for one-line errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
