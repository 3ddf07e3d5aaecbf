"""Attention geometry read from the main graph: hidden size, heads and head size, with the evidence.

ORT's transformer optimizer needs heads and hidden size when the exporter's reshape constants say -1
for the heads; exporters leave them in projection weights, head-split Reshapes, norm scales and the
1/sqrt(head size) that scales QK^T. Only small constants are read; weights contribute their dims.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx

from ortforge.core.graph import GraphIndex


@dataclass
class Geometry:
    """Heads, hidden and head size (0: not found), and the lines of evidence for them."""

    num_heads: int = 0
    hidden_size: int = 0
    head_size: int = 0
    evidence: list[str] = field(default_factory=list)


def find_geometry(index: GraphIndex) -> Geometry:
    """Hidden size from projection weights and norm scales; heads from reshapes and the QK^T scale."""
    found = Geometry()
    projections = _head_reshapes(index)
    _hidden_size(projections, _norm_scale_sizes(index), found)
    _heads_from_reshapes(projections, found)
    _heads_from_scale(_scale_head_sizes(index), found)
    if found.num_heads and found.hidden_size and found.hidden_size % found.num_heads == 0:
        found.head_size = found.hidden_size // found.num_heads
    if not found.num_heads:
        found.evidence.append("heads not found: no head-split Reshape constants or QK^T scale; give num_heads (--num-heads)")
    return found


def _shape_entries(index: GraphIndex, name: str, depth: int = 0) -> list[int | None] | None:
    """A shape tensor's entries where constant (None where computed at run time); None if unknowable."""
    value = index.value(name)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    node = index.producer.get(name)
    if node is None or depth > 4:
        return None
    if node.op_type == "Concat":
        entries: list[int | None] = []
        for part in node.input:
            part_entries = _shape_entries(index, part, depth + 1)
            if part_entries is None:
                return None
            entries.extend(part_entries)
        return entries
    if node.op_type == "Cast":
        return _shape_entries(index, node.input[0], depth + 1)
    return _dynamic_length(index, node)


def _dynamic_length(index: GraphIndex, node: onnx.NodeProto) -> list[int | None] | None:
    """Placeholders for a run-time piece of a shape whose length is known (a dim taken from a Shape)."""
    if node.op_type == "Unsqueeze":
        return [None]  # a scalar dim made 1-D: the usual TorchScript way
    if node.op_type == "Shape":
        attributes = {a.name: a.i for a in node.attribute}
        if "end" in attributes and attributes.get("start", 0) >= 0 and attributes["end"] > 0:
            return [None] * (attributes["end"] - attributes.get("start", 0))
    if node.op_type == "Gather":
        indices = index.value(node.input[1])
        if indices is not None:
            return [None] * max(1, indices.size)
    if node.op_type == "Slice" and len(node.input) >= 3:
        starts, ends = index.value(node.input[1]), index.value(node.input[2])
        if starts is not None and ends is not None and starts.size == ends.size == 1 and 0 <= starts.item() < ends.item() < 64:
            return [None] * int(ends.item() - starts.item())
    return None


def _hidden_size(projections: list[_HeadReshape], norm_sizes: Counter, found: Geometry) -> None:
    """The projections' input width wins; the norms' scale width confirms it (or stands in for it)."""
    in_dims = Counter(p.in_dim for p in projections if p.in_dim)
    if in_dims:
        found.hidden_size, count = in_dims.most_common(1)[0]
        found.evidence.append(f"hidden {found.hidden_size}: input width of {count} projection(s) into head-split Reshapes")
    if norm_sizes:
        size, count = norm_sizes.most_common(1)[0]
        if not found.hidden_size:
            found.hidden_size = size
            found.evidence.append(f"hidden {size}: scale of {count} normalization(s)")
        else:
            agrees = "agrees" if size == found.hidden_size else f"DISAGREES with {found.hidden_size}"
            found.evidence.append(f"hidden {size}: scale of {count} normalization(s) ({agrees})")


def _heads_from_reshapes(projections: list[_HeadReshape], found: Geometry) -> None:
    votes = Counter(heads for p in projections if (heads := p.heads(found.hidden_size)))
    if not votes:
        return
    found.num_heads, count = votes.most_common(1)[0]
    example = next(p for p in projections if p.heads(found.hidden_size) == found.num_heads)
    width = example.out_dim or found.hidden_size
    found.evidence.append(f"heads {found.num_heads}: {count} Reshape(s) to {example.describe()} after {width}-wide projections")


def _heads_from_scale(scale_sizes: Counter, found: Geometry) -> None:
    """1/sqrt(head size) confirms the reshapes' heads, or gives them when the reshapes say -1 for both."""
    if not scale_sizes:
        return
    head_size, count = scale_sizes.most_common(1)[0]
    found.evidence.append(f"head size {head_size}: QK^T scaled by 1/sqrt({head_size}) in {count} attention block(s)")
    if not found.num_heads and found.hidden_size and found.hidden_size % head_size == 0:
        found.num_heads = found.hidden_size // head_size
        found.evidence.append(f"heads {found.num_heads} = hidden {found.hidden_size} / head size {head_size}")
    elif found.num_heads and found.hidden_size and found.hidden_size != found.num_heads * head_size:
        found.evidence.append(f"the scale's head size {head_size} disagrees with {found.num_heads} heads; kept the reshapes' count")


@dataclass
class _HeadReshape:
    """A Reshape that splits a projection's output into heads: [B, S, H, D] with some entries known."""

    entries: list[int | None]
    in_dim: int | None  # projection weight's input width (the hidden size)
    out_dim: int | None  # projection weight's output width (H * D)

    def heads(self, hidden: int) -> int:
        heads, head_size = self.entries[2], self.entries[3]
        width = self.out_dim or hidden
        if heads is not None and heads > 0:
            return heads
        if head_size is not None and head_size > 0 and width and width % head_size == 0:
            return width // head_size
        return 0

    def describe(self) -> str:
        return "[" + ", ".join("?" if e is None else str(e) for e in self.entries) + "]"


def _head_reshapes(index: GraphIndex) -> list[_HeadReshape]:
    reshapes = []
    for node in index.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        entries = _shape_entries(index, node.input[1])
        if entries is None or len(entries) != 4 or (entries[2] is None and entries[3] is None):
            continue
        weight = _projection_weight(index, node.input[0])
        if weight is None:
            continue
        reshapes.append(_HeadReshape(entries, *weight))
    return reshapes


def _projection_weight(index: GraphIndex, name: str) -> tuple[int | None, int | None] | None:
    """(input, output) width of the MatMul/Gemm weight that feeds `name`, through bias Add/scale Mul/Split.

    A packed QKV projection (GPT-2's c_attn) is Split in parts: each part's width is the weight's share."""
    parts: int | None = 1
    for _ in range(4):
        node = index.producer.get(name)
        if node is None:
            return None
        if node.op_type in ("MatMul", "Gemm"):
            dims = _weight_dims(index, node)
            if dims is None:
                return None
            return dims[0], (dims[1] // parts if parts and dims[1] % parts == 0 else None)
        if node.op_type in ("Split", "Slice"):
            parts = len(node.output) if node.op_type == "Split" and parts else None  # a Slice's share is unknown
            name = node.input[0]
        elif node.op_type in ("Add", "Mul", "Div"):
            activations = [i for i in node.input[:2] if i and index.dims(i) is None]
            if len(activations) != 1:
                return None
            name = activations[0]
        else:
            return None
    return None


def _weight_dims(index: GraphIndex, node: onnx.NodeProto) -> tuple[int | None, int | None] | None:
    weight = node.input[1] if len(node.input) > 1 else ""
    dims = index.dims(weight)
    transposed = False
    if dims is None:  # a weight passed through Transpose (some exporters keep [out, in])
        parent = index.producer.get(weight)
        if parent is not None and parent.op_type == "Transpose":
            dims, transposed = index.dims(parent.input[0]), True
    if dims is None or len(dims) != 2:
        return None
    if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        transposed = not transposed
    return (dims[1], dims[0]) if transposed else (dims[0], dims[1])


def _norm_scale_sizes(index: GraphIndex) -> Counter:
    """Widths of LayerNorm / RMSNorm scales: fused ops or a Mul by a 1-D weight after a ReduceMean."""
    sizes = Counter()
    for node in index.graph.node:
        if node.op_type in ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization") and len(node.input) > 1:
            dims = index.dims(node.input[1])
        elif node.op_type in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization") and len(node.input) > 2:
            dims = index.dims(node.input[2])
        elif node.op_type == "Mul" and _follows_reduce_mean(index, node):
            dims = next((index.dims(i) for i in node.input if index.dims(i) and len(index.dims(i)) == 1), None)
        else:
            continue
        if dims and len(dims) == 1 and dims[0] > 1:
            sizes[dims[0]] += 1
    return sizes


def _follows_reduce_mean(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """A decomposed norm: the activation side leads back to a ReduceMean within a few ops."""
    frontier = [i for i in node.input if index.dims(i) is None]
    for _ in range(6):
        parents = [index.producer[name] for name in frontier if name in index.producer]
        if any(p.op_type == "ReduceMean" for p in parents):
            return True
        frontier = [i for p in parents if p.op_type in ("Div", "Mul", "Sqrt", "Reciprocal", "Add", "Cast") for i in p.input]
    return False


def _scale_head_sizes(index: GraphIndex) -> Counter:
    """Head sizes implied by the constant that scales QK^T (1/sqrt(d) after, or d^-1/4 on both Q and K)."""
    sizes = Counter()
    for node in index.graph.node:
        if node.op_type != "Softmax":
            continue
        head_size = _scale_of_softmax(index, node)
        if head_size:
            sizes[head_size] += 1
    return sizes


def _scale_of_softmax(index: GraphIndex, softmax: onnx.NodeProto) -> int | None:
    """Walk up from the Softmax past mask Add/Where to the QK^T MatMul, multiplying the scales met."""
    factor = 1.0
    name = softmax.input[0]
    for _ in range(5):
        node = index.producer.get(name)
        if node is None:
            return None
        if node.op_type == "MatMul":
            factor *= _operand_scales(index, node)
            return _head_size_from_factor(factor)
        step = _scale_step(index, node)
        if step is None:
            return None
        name, scale = step
        factor *= scale
    return None


def _scale_step(index: GraphIndex, node: onnx.NodeProto) -> tuple[str, float] | None:
    """(input to follow, scale applied) for one op between QK^T and Softmax."""
    if node.op_type in ("Mul", "Div"):
        constants = [index.scalar(i) for i in node.input[:2]]
        if constants[1] is not None:
            value = constants[1]
            return node.input[0], (1.0 / value if node.op_type == "Div" else value)
        if constants[0] is not None and node.op_type == "Mul":
            return node.input[1], constants[0]
        return None
    if node.op_type == "Add":  # additive mask or bias: follow the side that leads to a MatMul
        for side in (0, 1):
            if _leads_to_matmul(index, node.input[side]):
                return node.input[side], 1.0
        return None
    if node.op_type == "Where":
        return (node.input[2], 1.0) if _leads_to_matmul(index, node.input[2]) else None
    if node.op_type in ("Cast", "Reshape", "Identity"):
        return node.input[0], 1.0
    return None


def _leads_to_matmul(index: GraphIndex, name: str) -> bool:
    for _ in range(3):
        node = index.producer.get(name)
        if node is None:
            return False
        if node.op_type == "MatMul":
            return True
        if node.op_type not in ("Mul", "Div", "Cast", "Reshape"):
            return False
        name = node.input[0]
    return False


def _operand_scales(index: GraphIndex, matmul: onnx.NodeProto) -> float:
    """Scales applied to Q and to K before they meet (dynamo/CLIP exports scale the operands)."""
    factor = 1.0
    for name in matmul.input[:2]:
        for _ in range(3):
            node = index.producer.get(name)
            if node is None:
                break
            if node.op_type in ("Mul", "Div"):
                step = _scale_step(index, node)
                if step is None:
                    break
                name, scale = step
                factor *= scale
            elif node.op_type in ("Transpose", "Reshape", "Cast"):
                name = node.input[0]
            else:
                break
    return factor


def _head_size_from_factor(factor: float) -> int | None:
    if not 0 < factor < 1:
        return None
    head_size = 1.0 / (factor * factor)
    rounded = round(head_size)
    return rounded if rounded >= 2 and abs(head_size - rounded) < 1e-3 * rounded else None
