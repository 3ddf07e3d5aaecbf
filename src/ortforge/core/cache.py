"""Where ortforge keeps what it can reuse: zoo wheels and models, tune builds, facts about the installed ORT."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$ORTFORGE_CACHE, else $XDG_CACHE_HOME/ortforge, else ~/.cache/ortforge."""
    if root := os.environ.get("ORTFORGE_CACHE"):
        return Path(root).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "ortforge"
    return Path.home() / ".cache" / "ortforge"
