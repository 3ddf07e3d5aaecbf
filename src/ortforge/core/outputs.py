"""The one output guard: every command that writes checks its outputs here, before any work.

Nothing the user gave is ever overwritten: an output may not be (or, for a folder, hold) an input model,
its external data, a data source or an eval hook file, symlinks followed. A folder output must be new,
empty, or an earlier ortforge output that the user allowed to replace. The place must be writable,
tried for real (a permission check says yes to root on a read-only mount). The writing itself is
atomic elsewhere (`core.files`, `core.model.save_model`): a temporary sibling, then a rename.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ortforge.core.errors import OptionError
from ortforge.core.model import Model


def user_files(model: Model | None, *sources: str | os.PathLike[str] | None) -> list[Path]:
    """What a command reads from the user and must never write over: the model and its external data, and each
    source that is a path (a data file or folder, a hook's `file.py:function` or module file)."""
    found = ([model.path] if model is not None and model.path else []) + (model.external_data_files() if model is not None else [])
    for source in sources:
        if source is None:
            continue
        text = str(source)
        candidates = [Path(text)]
        if ":" in text and not Path(text).exists():  # module:function or file.py:function
            candidates = [Path(text.rpartition(":")[0])]
        found += [path for path in candidates if path.exists()]
    return [path.resolve() for path in found]


def guard_file(path: str | os.PathLike[str], protected: Iterable[Path], *, option: str = "output") -> Path:
    """A file output: not a folder, not one of the user's files (nor its `.data` sidecar), in a writable place."""
    out = Path(path)
    if out.is_dir():
        raise OptionError(option, str(out), f"is a folder; give a file name such as {out / 'model.onnx'}")
    resolved = out.resolve()
    sidecar = resolved.parent / (resolved.name + ".data")
    for guarded in protected:
        if guarded in (resolved, sidecar):
            raise OptionError(option, str(out), f"would overwrite {'the input ' + guarded.name if guarded == resolved else guarded.name}, "
                              "which this command reads; choose another output path")  # fmt: skip
    _require_writable(resolved.parent, option, str(out))
    return out


def guard_folder(path: str | os.PathLike[str], protected: Iterable[Path], *, marker: str, overwrite: bool = False,
                 option: str = "output") -> Path:  # fmt: skip
    """A folder output: new, empty, or an earlier ortforge output (holding `marker`) that `overwrite` allows to replace;
    never holding one of the user's files; in a writable place."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OptionError(option, str(out), "is a file; this command writes a folder")
    resolved = out.resolve()
    for guarded in protected:
        if guarded == resolved or guarded.is_relative_to(resolved):
            raise OptionError(option, str(out), f"holds {guarded.name}, which this command reads; writing the folder would replace it")
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise OptionError(option, str(out), "exists and is not empty (nor an earlier ortforge output); choose a new or empty folder")
        if not overwrite:
            raise OptionError(option, str(out), "holds an earlier ortforge output; give overwrite (--overwrite) to replace it")
    _require_writable(resolved if out.is_dir() else resolved.parent, option, str(out))
    return out


def _require_writable(folder: Path, option: str, given: str) -> None:
    """Create and remove a file in `folder` (or the nearest folder above it that exists): the only reliable test."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(option, given, f"{existing} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".ortforge-probe-", dir=existing)
    except OSError as exc:
        raise OptionError(option, given, f"cannot write in {existing} ({exc.strerror or exc})") from None
    os.close(handle)
    os.unlink(probe)
