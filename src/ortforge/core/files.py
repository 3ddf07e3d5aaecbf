"""Writing files the way every ortforge output is written: to a temporary sibling, then renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write a small text file via a temporary file in the same folder, then rename."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, content: bytes) -> Path:
    """Write a small file via a temporary file in the same folder, then rename; the mode follows the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".ortforge-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; a written config is a normal file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
