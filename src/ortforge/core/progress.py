"""The one progress type: long work says what it is doing and how far along it is; the caller shows it.

Steps never print. They take a `Progress` and call it with a short description and the fraction done
(0 to 1); the CLI turns that into a bar in a terminal (or lines in a log), the Python API ignores it.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, float], None]


def silent(what: str, fraction: float) -> None:
    """A progress that shows nothing (the default of every step)."""


def section(progress: Progress | None, stage: str, low: float, high: float) -> Progress:
    """Progress of one stage shown as `stage: what` within [low, high] of its caller's bar."""
    shown = progress or silent
    return lambda what, fraction: shown(f"{stage}: {what}", low + (high - low) * fraction)
