"""magika's realistic inputs: the features magika's own code extracts from real files on this machine.

The feature extraction is imported from the pinned wheel (not reimplemented, not the user's installed
magika), so the bytes the model sees are exactly what magika would give it.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ortforge.core import runtime
from ortforge.core.errors import UserError
from ortforge.data import Feed
from ortforge.zoo.inputs.realistic import Realistic
from ortforge.zoo.registry import ZooEntry
from ortforge.zoo.wheels import fetch, imported_from, unpacked_package

# Most common first, so even a few samples cover text, markup, images, archives and binaries.
_FILE_EXTENSIONS = (
    ".py", ".txt", ".json", ".html", ".xml", ".png", ".gz", ".so", ".pyc", ".csv", ".md", ".cfg",
    ".sh", ".c", ".h", ".css", ".js", ".svg", ".rst", ".toml", ".ini", ".gif", ".jpg", ".pem",
    ".jar", ".zip", ".pdf", ".pyi", ".mo", ".pl", ".yaml", ".wav",
)  # fmt: skip
# Enough of each root to find most extensions without walking, say, all of /usr/share.
_FILES_PER_ROOT = 15000


def feeds(entry: ZooEntry, count: int, seed: int) -> Realistic:
    """magika's features of `count` real files on this machine, one file type after another."""
    config = json.loads((fetch(entry.name).parent / "config.min.json").read_text(encoding="utf-8"))
    extract = _feature_extractor(entry, config)
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
    return Realistic(samples, notes, "bytes of real files on this machine")


def _feature_extractor(entry: ZooEntry, config: dict[str, Any]) -> Callable[[Path], list[int] | None]:
    """magika's own feature extraction for a file path (None when magika would not ask the model)."""
    runtime.ort()  # importing magika needs onnxruntime: fail with ortforge's message, not magika's
    with imported_from(unpacked_package(entry, "magika"), "magika"):
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
