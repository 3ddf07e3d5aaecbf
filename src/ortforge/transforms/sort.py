"""Nodes in an order every checker accepts: producers before their consumers, subgraph reads of outer
values included (ORT runs such models, `onnx.checker` and ortforge's loader refuse them)."""

from __future__ import annotations

import onnx

from ortforge.transforms import TransformResult


def topologically_sorted(proto: onnx.ModelProto) -> TransformResult:
    """The model with each graph's nodes sorted (stable: the order changes only where it must), by onnx-ir,
    whose sort counts a node's subgraphs' reads of outer values as its inputs."""
    import onnx_ir as ir

    model = ir.serde.deserialize_model(proto)
    model.graph.sort()
    result = ir.serde.serialize_model(model)
    changed = [n.name for n in result.graph.node] != [n.name for n in proto.graph.node]
    return TransformResult(result, changed, ["nodes re-sorted so that every value is produced before it is read"] if changed else [])


def unsorted_problem(proto: onnx.ModelProto) -> str | None:
    """onnx.checker's complaint when the nodes are out of order (None when they are in order)."""
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        text = str(exc)
        return text.splitlines()[0] if "topologically sorted" in text else None
    return None
