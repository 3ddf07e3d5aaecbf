"""Options dataclasses carry their own help: one field, one default, one command-line flag derived from it.

A field made with `option(...)` keeps its default where Python callers see it and its help text (and
choices, or a flag name that differs from the field's) in the field's metadata, where the CLI reads it.
Nothing else states a default, so the API and the CLI cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # noqa: A002 - argparse's word for it
    choices: Iterable[Any] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its command-line help; `flag` names the flag when it is not --field-name."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag, "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def default_of(cls: type, name: str) -> Any:
    """A dataclass field's default value (calling its factory)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default
