"""Where ortforge keeps what it can reuse: zoo wheels and models, tune builds, facts about the installed ORT."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ortforge.core.errors import OptionError


def cache_root() -> Path:
    """$ORTFORGE_CACHE, else $XDG_CACHE_HOME/ortforge, else ~/.cache/ortforge."""
    if root := os.environ.get("ORTFORGE_CACHE"):
        return Path(root).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "ortforge"
    return Path.home() / ".cache" / "ortforge"


PARTS = {"tune": "tune's builds and verdicts, per model", "zoo": "zoo wheels and the models taken from them",
         "runtime": "what was probed about installed onnxruntime builds"}  # fmt: skip


@dataclass
class CachePart:
    name: str
    what: str
    files: int
    bytes: int


def cache_parts() -> list[CachePart]:
    """Each part of the cache with its file count and size (parts not yet created count zero)."""
    root = cache_root()
    found = []
    for name, what in PARTS.items():
        files = [p for p in (root / name).rglob("*") if p.is_file()] if (root / name).is_dir() else []
        found.append(CachePart(name, what, len(files), sum(p.stat().st_size for p in files)))
    return found


def clear_cache(parts: Sequence[str]) -> int:
    """Delete the named parts of the cache; returns the bytes freed. Unknown part names are refused before anything goes."""
    unknown = [name for name in parts if name not in PARTS]
    if unknown:
        raise OptionError("parts", unknown[0], f"not a part of the cache (parts: {', '.join(PARTS)})")
    sizes = {part.name: part.bytes for part in cache_parts()}
    for name in parts:
        shutil.rmtree(cache_root() / name, ignore_errors=True)
    return sum(sizes[name] for name in parts)
