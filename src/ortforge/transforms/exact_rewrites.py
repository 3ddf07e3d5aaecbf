"""The float-exact rewrites ORT's optimizers miss, applied together as one stage: affine folding (`fold_affine`), GELU
fusion (`fuse_gelu`) and one-hot products read as lookups (`onehot_lookup`). tune tries them as one candidate and as
the first stage of every static int8 recipe."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from ortforge.core.errors import OptionError
from ortforge.core.model import Model, from_proto
from ortforge.transforms import TransformResult
from ortforge.transforms.fold_affine import find_folds, fold_affine
from ortforge.transforms.fuse_gelu import find_gelus, fuse_gelu
from ortforge.transforms.onehot_lookup import find_lookups, onehot_lookup

REWRITES = (("affine folding", find_folds, fold_affine), ("GELU fusion", find_gelus, fuse_gelu), ("one-hot lookup", find_lookups, onehot_lookup))


def applicable_rewrites(proto: onnx.ModelProto) -> list[str]:
    """The names of the rewrites that find something to do in this graph."""
    return [name for name, find, _ in REWRITES if find(proto)]


def exact_rewrites(model: Model, names: Sequence[str] | None = None) -> TransformResult:
    """The rewrites named (every one of REWRITES when None) that apply, in REWRITES' order; the changes and details of
    each, by name."""
    unknown = sorted(set(names or ()) - {name for name, _, _ in REWRITES})
    if unknown:
        raise OptionError("rewrites", ", ".join(unknown), f"unknown exact rewrite(s) (known: {', '.join(name for name, _, _ in REWRITES)})")
    current, changes, details, notes = model, [], {}, []
    for name, _, rewrite in REWRITES:
        if names is not None and name not in names:
            continue
        result = rewrite(current)
        if result.changed:
            current = from_proto(result.proto, base_dir=model.base_dir)
            changes += result.changes
            details[name] = result.details
    if not changes:
        return TransformResult(model.proto, False, notes=["no constant Mul/Add beside a Conv, written-out GELU or one-hot MatMul to rewrite"])
    return TransformResult(current.proto, True, changes, notes, details)
