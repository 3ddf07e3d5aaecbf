"""What the CLI shows while work runs and how it prints results: a progress bar on stderr, JSON on stdout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

from ortforge.core.progress import Progress


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """A progress bar on stderr while long work runs (silent when stderr is not a terminal)."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    shown = enabled and stderr_console().is_terminal
    with Bar(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True, disable=not shown) as bar:
        task = bar.add_task("starting", total=1.0)
        yield lambda what, fraction: bar.update(task, description=what, completed=fraction)


def emit_json(result: Any) -> None:
    data = result.to_dict() if hasattr(result, "to_dict") else result
    print(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
