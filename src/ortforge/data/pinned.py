"""Symbolic input dims that a weight fixes: x[batch, ?] feeding MatMul(x, W[16, 4]) can only be 16.

ONNX shape inference runs forward (inputs to outputs), so it cannot tell a free input dim's value; these
rules read it back from the first consumer that pins it, so generated inputs fit the model instead of
taking a default that ORT then refuses.
"""

from __future__ import annotations

import onnx

from ortforge.core.graph import GraphIndex
from ortforge.core.model import Model
from ortforge.data.decoder_io import decoder_io, embedding_table, fused_attention

# Ops that hand the input on with the same shape; a pin found after them holds for the input.
SAME_SHAPE = {"Cast", "Identity", "Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Sqrt", "Exp", "Log", "Dropout", "Clip"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Where"}
HOPS = 4


def pinned_dims(model: Model) -> dict[tuple[str, int], tuple[int, str]]:
    """(input name, axis) -> (value, the node whose weight fixes it), for the inputs' dims that are not fixed numbers."""
    index = GraphIndex(model.proto)
    found: dict[tuple[str, int], tuple[int, str]] = {}
    for name, value in index.inputs.items():
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        shape = value.type.tensor_type.shape
        rank = len(shape.dim)
        free = [axis for axis, dim in enumerate(shape.dim) if not (dim.HasField("dim_value") and dim.dim_value > 0)]
        for axis, size, node in _pins(index, name, rank, 0):
            if axis in free and (name, axis) not in found and size > 0:
                found[(name, axis)] = (size, f"fixed by the weights of {node.op_type} '{node.name or node.op_type}'")
    found.update(_empty_cache(model, index))
    return found


def _empty_cache(model: Model, index: GraphIndex) -> dict[tuple[str, int], tuple[int, str]]:
    """A decoder's past key/value inputs start empty (a prefill over the prompt): their sequence axis is 0. A default of
    the sequence length there would ask the model to attend over a cache longer than its attention mask. A symbolic head
    size (onnxruntime-genai's builder names it 'kv_cache_dim') is the hidden size over the attention op's heads."""
    roles = decoder_io(model.proto.graph)
    if roles is None:
        return {}
    found = {(entry.past, entry.sequence_axis): (0, "an empty KV cache: a prefill over the prompt") for entry in roles.cache
             if not isinstance(entry.shape[entry.sequence_axis], int) or not entry.shape[entry.sequence_axis]}  # fmt: skip
    head = _head_size(index, roles.tokens)
    if head is not None:
        found.update({(entry.past, len(entry.shape) - 1): head for entry in roles.cache if not isinstance(entry.shape[-1], int)})
    return found


def _head_size(index: GraphIndex, tokens: str) -> tuple[int, str] | None:
    """hidden / num_heads, from the token embedding table and a fused attention node's num_heads attribute."""
    fused = fused_attention(index)
    _, hidden = embedding_table(index, tokens)
    if fused is None or not fused[1] or not hidden or hidden % fused[1]:
        return None
    node, heads = fused[0], fused[1]
    return hidden // heads, f"the head size: hidden {hidden} / {heads} heads of {node.op_type} '{node.name}'"


def _pins(index: GraphIndex, name: str, rank: int, depth: int) -> list[tuple[int, int, onnx.NodeProto]]:
    """(axis, size, node) pins on a value of `rank` dims from its consumers (and through same-shape ops)."""
    if depth > HOPS:
        return []
    pins = []
    for node in index.consumers.get(name, []):
        position = list(node.input).index(name)
        pins += [(axis % rank, size, node) for axis, size in _node_pins(index, node, position, rank)]
        if node.op_type in SAME_SHAPE and position == 0 and node.output:
            pins += _pins(index, node.output[0], rank, depth + 1)
    return pins


def _node_pins(index: GraphIndex, node: onnx.NodeProto, position: int, rank: int) -> list[tuple[int, int]]:
    """(axis, size) of the input at `position` that the node's constant operands fix."""
    op, inputs = node.op_type, list(node.input)
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    other = index.dims(inputs[1 - position]) if op in ("MatMul", "Gemm") and len(inputs) > 1 else None
    if op == "MatMul" and other and rank >= 1:
        if position == 0:
            return [(rank - 1, other[-2] if len(other) >= 2 else other[0])]
        return [(rank - 2, other[-1])] if rank >= 2 else []
    if op == "Gemm" and position == 0 and other and len(other) == 2:
        return [(0 if attributes.get("transA", 0) else 1, other[1] if attributes.get("transB", 0) else other[0])]
    weight = index.dims(inputs[1]) if len(inputs) > 1 and position == 0 else None
    if op == "Conv" and weight and len(weight) >= 2:
        return [(1, weight[1] * int(attributes.get("group", 1)))]
    if op in ("BatchNormalization", "InstanceNormalization") and weight:
        return [(1, weight[0])]
    if op == "LayerNormalization" and weight:
        return [(rank - len(weight) + axis, size) for axis, size in enumerate(weight)]
    if op in ELEMENTWISE and len(inputs) >= 2:
        constant = next((index.dims(i) for p, i in enumerate(inputs) if p != position and index.dims(i) is not None), None)
        if constant is not None and len(constant) <= rank:
            offset = rank - len(constant)  # numpy broadcasting aligns the trailing dims
            return [(offset + axis, size) for axis, size in enumerate(constant) if size > 1]
    return []
