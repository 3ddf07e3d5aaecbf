"""`ortforge cache info|clear`: where ortforge keeps what it reuses, how big each part is, and emptying it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ortforge.core.cache import CachePart, cache_parts, cache_root, clear_cache


@dataclass
class CacheReport:
    root: str
    parts: list[CachePart]
    freed_bytes: int = 0
    cleared: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"root": self.root, "parts": [asdict(p) for p in self.parts], "freed_bytes": self.freed_bytes, "cleared": list(self.cleared)}


def cache(action: str = "info", parts: Sequence[str] = ("tune",)) -> CacheReport:
    """'info': the cache's location ($ORTFORGE_CACHE, else $XDG_CACHE_HOME/ortforge, else ~/.cache/ortforge) and
    each part's size; 'clear': delete `parts` (tune's builds by default; a later tune rebuilds what it needs)."""
    freed = clear_cache(parts) if action == "clear" else 0
    return CacheReport(str(cache_root()), cache_parts(), freed, tuple(parts) if action == "clear" else ())


