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


class OptionError(UserError):
    """A bad value for a named option. Python callers read the option's name (`level='x': ...`); the CLI
    shows the flag the user typed (`--level x: ...`)."""

    def __init__(self, option: str, value: object, problem: str, hint: str | None = None) -> None:
        self.option, self.value, self.problem = option, value, problem
        super().__init__(f"{option}: {problem}" if value is None else f"{option}={value!s}: {problem}", hint)

    def with_flag(self, flag: str) -> str:
        """The message as the command line says it, naming `flag` instead of the option."""
        text = f"{flag}: {self.problem}" if self.value is None else f"{flag} {self.value!s}: {self.problem}"
        return f"{text} ({self.hint})" if self.hint else text


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first non-empty line (its type name when it has no message), for one-line errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
