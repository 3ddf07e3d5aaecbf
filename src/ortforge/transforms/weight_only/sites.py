"""The nodes whose weights may be quantized (sites), and for each one the reason it stays float, if any."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_tensor

from ortforge.core.model import iter_nodes
from ortforge.transforms.weight_only.graph import _attributes, _is_graph_input, _lookup, _walk
from ortforge.transforms.weight_only.options import FLOAT_TYPES, OP_TYPES, WeightOnlyOptions


@dataclass
class _Site:
    """One MatMul/Gemm/Gather node of a selected op type, and why it stays float (if it does)."""

    node: onnx.NodeProto
    stack: tuple[onnx.GraphProto, ...]  # the graphs enclosing the node, outermost first
    kind: str  # the original op type
    name: str
    output: str  # of the node to be quantized (a Gemm's MatMul once rewritten)
    reason: str | None = None


def _weight_index(op_type: str) -> int:
    return 0 if op_type == "Gather" else 1


def _position(site: _Site) -> int:
    """Where the site's node sits in its graph, found by its (unique) name rather than by a proto reference
    that edits to the node list may have invalidated."""
    return next(index for index, node in enumerate(site.stack[-1].node) if node.name == site.name and node.op_type in OP_TYPES)


def _is_target(node: onnx.NodeProto, op_types: tuple[str, ...]) -> bool:
    return node.op_type in op_types and node.domain in ("", "ai.onnx")


def _weight_names(proto: onnx.ModelProto, options: WeightOnlyOptions, aliases: dict[str, str]) -> set[str]:
    """Names feeding the weight input of a node that may be quantized (to know which Constants to lift)."""
    names = set()
    for node in iter_nodes(proto):
        index = _weight_index(node.op_type)
        if _is_target(node, options.op_types) and len(node.input) > index and not _exclusion(node, options, aliases):
            names.add(node.input[index])
    return names


def _classify(proto: onnx.ModelProto, options: WeightOnlyOptions, aliases: dict[str, str]) -> list[_Site]:
    """Every node of a selected op type, with the reason it cannot be quantized (None when it can)."""
    sites = []
    for node, stack in _walk(proto.graph):
        if _is_target(node, options.op_types):
            site = _Site(node, stack, node.op_type, node.name, node.output[0])
            site.reason = _exclusion(node, options, aliases) or _weight_problem(node, stack)
            sites.append(site)
    return sites


def _exclusion(node: onnx.NodeProto, options: WeightOnlyOptions, aliases: dict[str, str]) -> str | None:
    if node.name in options.exclude or aliases.get(node.name, node.name) in options.exclude:
        return "excluded by name"
    if node.op_type in options.exclude:
        return "excluded by op type"
    return None


def _weight_problem(node: onnx.NodeProto, stack: tuple) -> str | None:
    """Why this node's weight cannot be block-quantized, in words; None when it can."""
    role = "data" if node.op_type == "Gather" else "B"
    index = _weight_index(node.op_type)
    tensor, graph = _lookup(node.input[index], stack) if len(node.input) > index else (None, None)
    if tensor is None:
        return f"{role} is an activation, not a weight"
    if _is_graph_input(tensor.name, graph):
        return f"{role} is also a graph input, so it can be replaced at run time"
    if tensor.data_type not in FLOAT_TYPES:
        return f"{role} is {onnx.TensorProto.DataType.Name(tensor.data_type)}, not floating point"
    dims = list(tensor.dims)
    if len(dims) < 2:
        return f"{role} is {len(dims)}-D; only matrices are block-quantized"
    if node.op_type == "MatMul" and any(d != 1 for d in dims[:-2]):
        return f"B has shape {dims}: MatMulNBits takes one [K, N] matrix, not a batch of them"
    if node.op_type == "Gemm" and _attributes(node).get("alpha", 1.0) == 0.0:
        return "alpha is 0, so B does not contribute"
    return None


def _load_weights(sites: list[_Site], base_dir: Path | None) -> None:
    """Read from external data only the weights about to be quantized; the rest stay on disk."""
    for site in sites:
        if site.reason is not None:
            continue
        tensor, _ = _lookup(site.node.input[_weight_index(site.kind)], site.stack)
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        if base_dir is None:
            site.reason = "the weight is in external data and the model's folder is unknown"
        else:
            load_external_data_for_tensor(tensor, str(base_dir))
