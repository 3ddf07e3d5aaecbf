"""The float-exact rewrites ORT's optimizers miss, applied together as one stage: affine folding (`fold_affine`) and
GELU fusion (`fuse_gelu`). tune tries them as one candidate and as the first stage of every static int8 recipe."""

from __future__ import annotations

import onnx

from ortforge.core.model import Model, from_proto
from ortforge.transforms import TransformResult
from ortforge.transforms.fold_affine import find_folds, fold_affine
from ortforge.transforms.fuse_gelu import find_gelus, fuse_gelu

REWRITES = (("affine folding", find_folds, fold_affine), ("GELU fusion", find_gelus, fuse_gelu))


def applicable_rewrites(proto: onnx.ModelProto) -> list[str]:
    """The names of the rewrites that find something to do in this graph."""
    return [name for name, find, _ in REWRITES if find(proto)]


def exact_rewrites(model: Model) -> TransformResult:
    """Every rewrite of REWRITES that applies, in order; the changes and details of each, by name."""
    current, changes, details, notes = model, [], {}, []
    for name, _, rewrite in REWRITES:
        result = rewrite(current)
        if result.changed:
            current = from_proto(result.proto, base_dir=model.base_dir)
            changes += result.changes
            details[name] = result.details
    if not changes:
        return TransformResult(model.proto, False, notes=["no constant Mul/Add beside a Conv and no written-out GELU to rewrite"])
    return TransformResult(current.proto, True, changes, notes, details)
