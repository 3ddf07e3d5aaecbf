"""`ortforge run` and `ortforge.load()`: the guarded loader, a ready session for a (possibly stamped) model, configured as it was saved.

A stamped model is checked against this machine first; on a mismatch it is refused with the reason,
or, when allowed and the original model is given, the original is re-optimized here in memory
(nothing on disk is touched).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortforge import zoo
from ortforge.commands.common import feeds_for
from ortforge.core.errors import UserError
from ortforge.core.model import Model, from_proto, load_model
from ortforge.core.saved import open_saved
from ortforge.core.session import ProviderSpec, SessionConfig, run_on_feeds
from ortforge.core.stamp import Stamp, config_for, read_stamp
from ortforge.data import FeedSet, ShapeOptions
from ortforge.data.specs import recorded_shape_options


@dataclass
class Loaded:
    """A session and how it came to be (for `ortforge run` and reports)."""

    session: Any
    path: Path
    model: Model
    config: SessionConfig
    stamp: Stamp | None
    reoptimized: bool = False
    notes: list[str] = field(default_factory=list)


def load_checked(
    path: str | os.PathLike[str], *, original: str | os.PathLike[str] | None = None, reoptimize: bool = False
) -> Loaded:
    """Load a model (or a `tune` artifact folder) for this machine, honouring and checking its stamp."""
    from ortforge.tuning.artifact import is_artifact, read_artifact

    base, notes = None, []
    if is_artifact(path):
        path, base, _ = read_artifact(path)
        notes.append(f"session config from {Path(path).parent / 'ortforge.json'}")
    opened = open_saved(path, base)
    if opened.stamp is None:
        notes.append("not stamped by ortforge: its own or ORT's default session settings")
    if not opened.problems or not (reoptimize and original is not None):
        return Loaded(opened.session(), Path(path), opened.model, opened.config, opened.stamp, notes=notes)
    stamp, problems = opened.stamp, opened.problems
    assert stamp is not None
    loaded = _reoptimized(Path(path), stamp, Path(original), problems, base)
    loaded.notes = notes + loaded.notes
    return loaded


def _reoptimized(path: Path, stamp: Stamp, original_path: Path, problems: list[str], base: SessionConfig | None) -> Loaded:
    from ortforge.core.runtime import available_providers
    from ortforge.transforms.graph_opt import GraphOptOptions, optimize_offline

    original = load_model(original_path)
    if stamp.source_sha256 and original.content_hash() != stamp.source_sha256:
        raise UserError(f"{original_path}: is not the model {path.name} was made from (its hash differs from the stamp's)")
    available = available_providers()
    providers = tuple(ProviderSpec(p["name"], p.get("options", {})) for p in stamp.providers if p["name"] in available)
    options = GraphOptOptions(level=stamp.level, providers=providers or (ProviderSpec("CPUExecutionProvider"),), portable=stamp.portable)
    source = original
    if stamp.fusion:  # replay the transformer fusion the saved model was made with
        from ortforge.transforms.fusion import FusionOptions, fuse_transformer

        fused = fuse_transformer(original, FusionOptions(**stamp.fusion))
        source = from_proto(fused.proto, base_dir=original.base_dir)
    result = optimize_offline(source, options, source_sha256=stamp.source_sha256, fusion=stamp.fusion)
    model = result.as_model(original)
    fresh = read_stamp(result.proto)
    config = config_for(fresh, base)
    notes = [f"re-optimized {original_path.name} for this machine because {path.name} was {'; '.join(problems)}"]
    return Loaded(config.build(model), path, model, config, fresh, reoptimized=True, notes=notes)


def load(path: str | os.PathLike[str], *, original: str | os.PathLike[str] | None = None, reoptimize: bool = False) -> Any:
    """A ready `InferenceSession` for a model saved by ortforge, a `tune` artifact folder, or any ONNX model."""
    return load_checked(path, original=original, reoptimize=reoptimize).session


def run(
    reference: str | Path,
    *,
    data: str | None = None,
    samples: int | None = None,
    shape_options: ShapeOptions | None = None,
    original: str | None = None,
    reoptimize: bool = False,
) -> tuple[Loaded, FeedSet, list[dict]]:
    """Load a model the guarded way and run it on the feeds; returns what ran, its feeds and its outputs."""
    path = zoo.resolve_model_argument(str(reference))
    original_path = zoo.resolve_model_argument(original) if original else None
    loaded = load_checked(path, original=original_path, reoptimize=reoptimize)
    if data is None and shape_options is None:
        shape_options = recorded_shapes(path)
    feeds = feeds_for(loaded.model, reference, data, samples=samples, shape_options=shape_options)
    return loaded, feeds, run_on_feeds(loaded.session, feeds, loaded.path.name)


def recorded_shapes(path: str | os.PathLike[str]) -> ShapeOptions | None:
    """The input shapes a tune artifact was judged and timed on (None for a plain model, or shapes it did not record)."""
    from ortforge.tuning.artifact import is_artifact, read_artifact

    if not is_artifact(path):
        return None
    return recorded_shape_options(read_artifact(path)[2].get("inputs", {}).get("shapes", {}))
