"""The deployable artifact `tune` writes: model.onnx (+ data), ortforge.json, report.html, tune.toml.

`ortforge.json` holds the session config a plain ORT user applies by hand (providers and options,
graph optimization level, threads, execution mode, session config entries), the hardware and
software it was measured on, the figures with their spreads, and the command that reproduces it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ortforge.accuracy.judge import Judge
from ortforge.accuracy.reopen import save_verified
from ortforge.core import runtime
from ortforge.core.errors import UserError
from ortforge.core.files import atomic_write_text
from ortforge.core.machine import machine_info
from ortforge.core.model import Model
from ortforge.core.session import SessionConfig
from ortforge.data import FeedSet
from ortforge.version import __version__

FORMAT = "ortforge-artifact/1"
CONFIG_FILE = "ortforge.json"
REPRODUCE_FILE = "tune.toml"  # `ortforge tune --config` with it runs the same search
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.html"


def is_artifact(path: str | os.PathLike[str]) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def read_artifact(path: str | os.PathLike[str]) -> tuple[Path, SessionConfig, dict]:
    """The model file, its session config and the whole record of an artifact folder."""
    folder = Path(path)
    try:
        record = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{folder / CONFIG_FILE}: not a readable ortforge artifact record ({exc})") from None
    if record.get("format") != FORMAT:
        raise UserError(f"{folder / CONFIG_FILE}: format '{record.get('format')}' is not {FORMAT}")
    return folder / record.get("model", MODEL_FILE), SessionConfig.from_dict(record["session"], where=str(folder / CONFIG_FILE)), record


LIBRARIES = ("onnx", "numpy", "onnx-ir", "onnxscript", "ml_dtypes", "protobuf")  # besides onnxruntime: what can change a result


def environment() -> dict[str, Any]:
    """The software and hardware a result was measured on: every version that can change it."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    machine = machine_info()
    return {
        "ortforge": __version__,
        "onnxruntime": runtime.version(),
        "onnxruntime_flavour": runtime.flavour(),
        "libraries": {name: installed(name) for name in LIBRARIES if installed(name)},
        "providers": runtime.available_providers(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": machine.cpu.model,
        "cpu_features": list(machine.cpu.features),
        "cores": {"physical": machine.cpu.physical_cores, "logical": machine.cpu.logical_cores},
        "gpus": [gpu.__dict__ for gpu in machine.gpus],
    }


def write_artifact(folder: Path, model: Model, source: Model, config: SessionConfig, record: dict[str, Any], render: Callable[[dict], str],
                   feeds: FeedSet, judge: Judge | None, extra_files: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the artifact atomically: build it in a sibling temporary folder, reopen its model as a user would
    and judge it again (`ReopenError` if it fails), then move the folder into place. Returns the record written.
    `extra_files` (name -> text) go into the folder too (the file that reproduces the run)."""
    if folder.exists() and not is_artifact(folder) and any(folder.iterdir()):
        raise UserError(f"{folder}: exists and is not an ortforge artifact; choose an empty or new folder")
    staging = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _, checked = save_verified(model.proto, staging / MODEL_FILE, source, feeds, judge, config, data_dir=model.base_dir)
        record = {**record, "notes": record.get("notes", []) + checked}
        full = {"format": FORMAT, "model": MODEL_FILE, "session": config.to_dict(), **record, "environment": environment()}
        atomic_write_text(staging / CONFIG_FILE, json.dumps(full, indent=2, default=str))
        atomic_write_text(staging / REPORT_FILE, render({**record, "session": config.to_dict()}))
        for name, text in (extra_files or {}).items():
            atomic_write_text(staging / name, text)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def reproduce_file(settings: dict[str, Any]) -> str:
    """tune.toml: the run's options, which `ortforge tune --config tune.toml -o NEW_FOLDER` takes back."""
    import tomli_w

    header = ("# Reproduces this artifact's search: ortforge tune --config tune.toml -o NEW_FOLDER\n"
              "# Keys are tune's options (the flags, or their Python names as here); flags typed on the command line win.\n"
              "# Paths are as they were given, relative to the folder tune ran in.\n")  # fmt: skip
    return header + tomli_w.dumps({key: list(value) if isinstance(value, tuple) else value for key, value in settings.items() if value is not None})
