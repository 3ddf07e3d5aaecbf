"""Scratch folders that outlive a function but not the process: where transforms leave the weights of
models over 2 GB on disk (as external data) instead of holding them in memory."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_FOLDERS: list[Path] = []


def scratch_folder(prefix: str) -> Path:
    """A new private folder, removed when the process exits (a killed process leaves it in the temp folder)."""
    folder = Path(tempfile.mkdtemp(prefix=f"ortforge-{prefix}-"))
    _FOLDERS.append(folder)
    return folder


@atexit.register
def remove_scratch_folders() -> None:
    """Remove every scratch folder of this process (at exit, or before leaving without running exit handlers)."""
    for folder in _FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def release(folder: Path | None) -> None:
    """Remove a scratch folder now (its model is no longer needed), rather than at exit."""
    if folder is not None and folder in _FOLDERS:
        _FOLDERS.remove(folder)
        shutil.rmtree(folder, ignore_errors=True)
