"""Static facts about a model for `ortforge inspect`: I/O, opsets, ops, parameters, MACs and family.

Nothing here loads external weights: parameter sizes come from tensor dims, MACs from shapes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from onnx import helper

from ortforge.analysis.macs import MacReport, count_macs, op_key, subgraphs
from ortforge.core.errors import UserError
from ortforge.core.model import Model, iter_graphs, iter_nodes, opset_versions
from ortforge.data import ShapeOptions, input_specs, resolve_shapes

# A family claimed from MACs needs its op group to hold at least this share of the counted MACs.
DOMINANT_SHARE = 0.5

CONV_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "FusedConv", "NhwcConv"}
DENSE_OPS = {
    "MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "FusedGemm", "QGemm", "MatMulNBits",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
}
RECURRENT_OPS = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
ATTENTION_OPS = {
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
    "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention", "SparseAttention", "QAttention",
    "LongformerAttention", "PagedAttention", "DecoderAttention",
}
NORM_OPS = {
    "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
    "RMSNormalization", "EmbedLayerNormalization",
}
QUANT_OPS = {
    "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger", "MatMulNBits", "QGemm", "QAttention",
    "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
}
CNN_COMPANIONS = ("BatchNormalization", "Resize", "Upsample", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
# Between the scores MatMul and the Softmax (scaling, masks, casts), and after it (casts, dropout).
SCORE_PATH_OPS = {"Div", "Mul", "Add", "Sub", "Where", "Cast", "Reshape", "Clip", "Identity"}
PROBS_PATH_OPS = {"Cast", "Dropout", "Identity", "Reshape", "Where"}
MATMUL_LIKE = {"MatMul", "FusedMatMul", "Einsum"}
PATTERN_DEPTH = 4
FOUR_BIT_TYPES = {
    getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, name)
}
# Constant attributes holding plain numbers rather than a tensor: their data type and bytes per number.
NUMBER_ATTRIBUTES = {
    "value_float": (onnx.TensorProto.FLOAT, 4),
    "value_floats": (onnx.TensorProto.FLOAT, 4),
    "value_int": (onnx.TensorProto.INT64, 8),
    "value_ints": (onnx.TensorProto.INT64, 8),
}


@dataclass(frozen=True)
class ValueReport:
    """A graph input or output: dims are ints, symbolic names, or None where unknown."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape) if self.shape is not None else None}


@dataclass(frozen=True)
class ParameterStats:
    """Weights held in the model (initializers and Constant tensors), sized from their dims."""

    count: int
    bytes: int
    tensors: int
    external_tensors: int
    by_dtype: dict[str, dict[str, int]]  # dtype -> {"count", "bytes", "tensors"}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelReport:
    """Everything `inspect` says about a model; `placements` is filled by the caller when asked."""

    name: str
    path: str | None
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[ValueReport]
    outputs: list[ValueReport]
    node_count: int
    subgraph_node_count: int
    subgraph_count: int
    op_histogram: dict[str, int]
    parameters: ParameterStats
    macs: MacReport
    shapes: dict[str, tuple[int, ...]]
    shape_defaults: list[str]
    family: str
    family_evidence: list[str]
    notes: list[str] = field(default_factory=list)
    placements: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "ir_version": self.ir_version,
            "opsets": dict(self.opsets),
            "producer": self.producer,
            "inputs": [value.to_dict() for value in self.inputs],
            "outputs": [value.to_dict() for value in self.outputs],
            "node_count": self.node_count,
            "subgraph_node_count": self.subgraph_node_count,
            "subgraph_count": self.subgraph_count,
            "op_histogram": dict(self.op_histogram),
            "parameters": self.parameters.to_dict(),
            "macs": self.macs.to_dict(),
            "shapes": {name: list(shape) for name, shape in self.shapes.items()},
            "shape_defaults": list(self.shape_defaults),
            "family": self.family,
            "family_evidence": list(self.family_evidence),
            "notes": list(self.notes),
            "placements": [p.to_dict() if hasattr(p, "to_dict") else p for p in self.placements],
        }


def inspect_model(
    model: Model, shape_options: ShapeOptions | None = None, *, feeds: dict[str, Any] | None = None
) -> ModelReport:
    """Describe a model without running it, except where MACs need an onnxruntime run for shapes."""
    proto = model.proto
    main_nodes = len(proto.graph.node)
    histogram = Counter(op_key(node) for node in iter_nodes(proto))
    node_count = sum(histogram.values())
    notes: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    defaults: list[str] = []
    try:
        resolved = resolve_shapes(input_specs(model), shape_options)
        shapes, defaults = resolved.shapes, resolved.defaults
        macs = count_macs(model, shapes, feeds=feeds)
    except UserError as exc:
        macs = MacReport(notes=[f"MACs not counted: {exc}"])
    if defaults and any("fallback failed" in entry.reason for entry in macs.unknown):
        notes.append(
            f"some nodes could not be sized on these input shapes ({len(defaults)} dim(s) are defaults, which may not "
            "suit this model); give real ones with --shape or --dim"
        )
    family, evidence = classify_family(proto, macs)
    return ModelReport(
        name=model.name,
        path=str(model.path) if model.path else None,
        ir_version=proto.ir_version,
        opsets=opset_versions(proto),
        producer=" ".join(part for part in (proto.producer_name, proto.producer_version) if part),
        inputs=[_value_report(value) for value in _real_inputs(proto)],
        outputs=[_value_report(value) for value in proto.graph.output],
        node_count=node_count,
        subgraph_node_count=node_count - main_nodes,
        subgraph_count=sum(1 for _ in iter_graphs(proto.graph)) - 1,
        op_histogram=dict(sorted(histogram.items(), key=lambda item: (-item[1], item[0]))),
        parameters=parameter_stats(proto),
        macs=macs,
        shapes=shapes,
        shape_defaults=defaults,
        family=family,
        family_evidence=evidence,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------------
# Inputs, outputs, parameters


def _real_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {tensor.name for tensor in proto.graph.initializer}
    return [value for value in proto.graph.input if value.name not in initializers]


def dtype_name(data_type: int) -> str:
    """numpy-style names for the common types ('float32'), ONNX's own for the rest ('float8e4m3fn')."""
    named = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.STRING: "str"}
    if data_type in named:
        return named[data_type]
    try:
        return onnx.TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"type{data_type}"


def _type_text(value_type: onnx.TypeProto) -> str:
    kind = value_type.WhichOneof("value")
    if kind == "tensor_type":
        return dtype_name(value_type.tensor_type.elem_type)
    if kind == "sequence_type":
        return f"sequence({_type_text(value_type.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_type_text(value_type.optional_type.elem_type)})"
    if kind == "map_type":
        return f"map({dtype_name(value_type.map_type.key_type)}, {_type_text(value_type.map_type.value_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse({dtype_name(value_type.sparse_tensor_type.elem_type)})"
    return kind or "unknown"


def _value_report(value: onnx.ValueInfoProto) -> ValueReport:
    shape: tuple[int | str | None, ...] | None = None
    tensor_type = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if tensor_type is not None and tensor_type.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or None)
            for d in tensor_type.shape.dim
        )
    return ValueReport(value.name, _type_text(value.type), shape)


def parameter_stats(proto: onnx.ModelProto) -> ParameterStats:
    """Counts and bytes of initializers and Constant tensors in every graph, by dtype, from dims only."""
    by_dtype: dict[str, dict[str, int]] = {}
    external = 0
    for data_type, count, size, is_external in _weights(proto):
        stats = by_dtype.setdefault(dtype_name(data_type), {"count": 0, "bytes": 0, "tensors": 0})
        stats["count"] += count
        stats["bytes"] += size
        stats["tensors"] += 1
        external += is_external
    ordered = dict(sorted(by_dtype.items(), key=lambda item: -item[1]["bytes"]))
    return ParameterStats(
        count=sum(s["count"] for s in ordered.values()),
        bytes=sum(s["bytes"] for s in ordered.values()),
        tensors=sum(s["tensors"] for s in ordered.values()),
        external_tensors=external,
        by_dtype=ordered,
    )


def _weights(proto: onnx.ModelProto) -> Iterator[tuple[int, int, int, bool]]:
    """(data type, values, bytes, stored externally) of each weight: dense tensors first, then sparse and numbers."""
    for tensor in _dense_weights(proto):
        count = math.prod(tensor.dims)
        yield tensor.data_type, count, _tensor_bytes(tensor, count), tensor.data_location == onnx.TensorProto.EXTERNAL
    for graph in iter_graphs(proto.graph):
        for sparse in graph.sparse_initializer:
            count = math.prod(sparse.values.dims)
            size = _tensor_bytes(sparse.values, count) + _tensor_bytes(sparse.indices, math.prod(sparse.indices.dims))
            yield sparse.values.data_type, count, size, False
        for node in filter(_is_constant, graph.node):
            for attribute in node.attribute:
                if attribute.name in NUMBER_ATTRIBUTES:
                    data_type, itemsize = NUMBER_ATTRIBUTES[attribute.name]
                    count = len(attribute.floats) + len(attribute.ints) if attribute.name.endswith("s") else 1
                    yield data_type, count, itemsize * count, False


def _dense_weights(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and Constant tensors (of a sparse Constant, its values) of every graph."""
    for graph in iter_graphs(proto.graph):
        yield from graph.initializer
        for node in filter(_is_constant, graph.node):
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.HasField("t"):
                    yield attribute.t
                elif attribute.name == "sparse_value" and attribute.HasField("sparse_tensor"):
                    yield attribute.sparse_tensor.values


def _is_constant(node: onnx.NodeProto) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx")


def _tensor_bytes(tensor: onnx.TensorProto, elements: int) -> int:
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    if tensor.data_type in FOUR_BIT_TYPES:
        return (elements + 1) // 2
    try:
        return elements * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 0


# ---------------------------------------------------------------------------------------------------
# Model family


@dataclass
class _Graphs:
    """Producer/consumer maps over all graphs (names are unique across scopes in valid models)."""

    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    constants: set[str]
    container: dict[int, str]  # id(node) -> op type of the outermost control-flow node holding it ("" if main)

    @classmethod
    def build(cls, proto: onnx.ModelProto) -> _Graphs:
        producer: dict[str, onnx.NodeProto] = {}
        consumers: dict[str, list[onnx.NodeProto]] = {}
        constants: set[str] = set()
        for graph in iter_graphs(proto.graph):
            constants.update(t.name for t in graph.initializer)
            for node in graph.node:
                if node.op_type == "Constant":
                    constants.update(node.output)
                for name in node.output:
                    producer[name] = node
                for name in node.input:
                    consumers.setdefault(name, []).append(node)
        container: dict[int, str] = {}
        _mark_containers(proto.graph, "", container)
        return cls(producer, consumers, constants, container)


def _mark_containers(graph: onnx.GraphProto, holder: str, container: dict[int, str]) -> None:
    for node in graph.node:
        container[id(node)] = holder
        for subgraph in subgraphs(node):
            _mark_containers(subgraph, holder or node.op_type, container)


def attention_patterns(proto: onnx.ModelProto, graphs: _Graphs | None = None) -> int:
    """Softmax nodes fed (through scaling/masking) by a MatMul of two activations and feeding a MatMul."""
    graphs = graphs or _Graphs.build(proto)
    return sum(
        1
        for node in iter_nodes(proto)
        if node.op_type == "Softmax"
        and _scores_matmul(node.input[0], graphs, PATTERN_DEPTH)
        and _probs_matmul(node.output[0], graphs, PATTERN_DEPTH)
    )


def _scores_matmul(name: str, graphs: _Graphs, depth: int) -> bool:
    node = graphs.producer.get(name)
    if node is None or depth == 0:
        return False
    if node.op_type in MATMUL_LIKE:
        # Q x K^T multiplies two activations; a classifier head multiplies by a weight.
        operands = [n for n in node.input if n]
        return len(operands) >= 2 and not any(n in graphs.constants for n in operands)
    if node.op_type in SCORE_PATH_OPS:
        return any(_scores_matmul(n, graphs, depth - 1) for n in node.input if n and n not in graphs.constants)
    return False


def _probs_matmul(name: str, graphs: _Graphs, depth: int) -> bool:
    if depth == 0:
        return False
    for node in graphs.consumers.get(name, []):
        if node.op_type in MATMUL_LIKE:
            return True
        if node.op_type in PROBS_PATH_OPS and node.output and _probs_matmul(node.output[0], graphs, depth - 1):
            return True
    return False


def _decomposed_layernorms(proto: onnx.ModelProto, graphs: _Graphs) -> int:
    """x - ReduceMean(x): the centring step of a LayerNorm written out in primitive ops."""
    count = 0
    for node in iter_nodes(proto):
        if node.op_type == "Sub" and len(node.input) == 2:
            mean = graphs.producer.get(node.input[1])
            if mean is not None and mean.op_type == "ReduceMean" and mean.input and mean.input[0] == node.input[0]:
                count += 1
    return count


def classify_family(proto: onnx.ModelProto, macs: MacReport) -> tuple[str, list[str]]:
    """cnn, rnn, transformer, mlp, quantized or other, with short human-readable evidence for the choice."""
    ops = Counter(node.op_type for node in iter_nodes(proto))
    family, evidence = _architecture(proto, macs, ops)
    quantized = Counter({op: n for op, n in ops.items() if op in QUANT_OPS or op.startswith(("QLinear", "DynamicQuantize"))})
    if quantized:
        listed = ", ".join(f"{n} {op}" for op, n in quantized.most_common(4))
        return "quantized", [f"already quantized: {listed}", f"underlying architecture looks {family}", *evidence]
    return family, evidence


def _architecture(proto: onnx.ModelProto, macs: MacReport, ops: Counter) -> tuple[str, list[str]]:
    """Recurrent ops decide first, then attention unless convolutions dominate, then Conv, then MatMul/Gemm."""
    graphs = _Graphs.build(proto)
    shares = _mac_shares(macs)
    incomplete = [f"MAC shares cover counted nodes only ({len(macs.unknown)} heavy node(s) uncounted)"] if macs.unknown and shares else []
    recurrent = [node for node in iter_nodes(proto) if node.op_type in RECURRENT_OPS]
    if recurrent:
        return "rnn", _rnn_evidence(recurrent, graphs, ops, shares) + incomplete
    attention = _attention_evidence(ops, attention_patterns(proto, graphs))
    conv_nodes = _node_count(ops, CONV_OPS)
    dense_nodes = _node_count(ops, DENSE_OPS)
    # Without counted MACs, node counts stand in for the shares.
    conv_dominant = _share(shares, CONV_OPS) >= DOMINANT_SHARE if shares else conv_nodes > dense_nodes
    if attention and not conv_dominant:
        return "transformer", _transformer_evidence(proto, graphs, ops, shares, attention) + incomplete
    if conv_nodes and conv_dominant:
        return "cnn", _cnn_evidence(ops, shares, attention) + incomplete
    if dense_nodes and (_share(shares, DENSE_OPS) >= DOMINANT_SHARE or not shares):
        return "mlp", [
            f"{dense_nodes} MatMul/Gemm node(s) ({_share_text(shares, DENSE_OPS)})",
            "no attention or recurrent ops" + (f"; {conv_nodes} minor Conv node(s)" if conv_nodes else ", no Conv"),
            *incomplete,
        ]
    return "other", _other_evidence(proto, ops)


def _rnn_evidence(recurrent: list[onnx.NodeProto], graphs: _Graphs, ops: Counter, shares: dict[str, float]) -> list[str]:
    text = ", ".join(f"{n} {op}" for op, n in Counter(node.op_type for node in recurrent).most_common())
    holders = [graphs.container[id(node)] for node in recurrent if graphs.container[id(node)]]
    if len(holders) == len(recurrent) and len(set(holders)) == 1:
        text += f", inside {holders[0]} subgraphs"
    elif holders:
        text += f" ({len(holders)} inside If/Loop/Scan subgraphs)"
    evidence = [text]
    if shares:
        evidence.append(f"recurrent ops hold {_share(shares, RECURRENT_OPS):.0%} of counted MACs")
    if conv_nodes := _node_count(ops, CONV_OPS):
        evidence.append(f"also {conv_nodes} Conv node(s) ({_share_text(shares, CONV_OPS)})")
    return evidence


def _attention_evidence(ops: Counter, patterns: int) -> list[str]:
    evidence = []
    if fused := _listed(ops, sorted(ATTENTION_OPS)):
        evidence.append(f"fused attention ops: {fused}")
    if patterns:
        evidence.append(f"{patterns} Softmax between two activation MatMuls (attention pattern)")
    return evidence


def _transformer_evidence(
    proto: onnx.ModelProto, graphs: _Graphs, ops: Counter, shares: dict[str, float], attention: list[str]
) -> list[str]:
    evidence = list(attention)
    if norms := _node_count(ops, NORM_OPS):
        evidence.append(f"{norms} LayerNormalization-type node(s)")
    elif decomposed := _decomposed_layernorms(proto, graphs):
        evidence.append(f"{decomposed} LayerNorm(s) written out as ReduceMean/Sub/...")
    if shares:
        share = _share(shares, DENSE_OPS) + _share(shares, ATTENTION_OPS)
        evidence.append(f"MatMul/Gemm/attention hold {share:.0%} of counted MACs")
    return evidence


def _cnn_evidence(ops: Counter, shares: dict[str, float], attention: list[str]) -> list[str]:
    evidence = [f"{_listed(ops, sorted(CONV_OPS))} ({_share_text(shares, CONV_OPS)})"]
    if companions := _listed(ops, CNN_COMPANIONS):
        evidence.append(f"with {companions}")
    if dense_nodes := _node_count(ops, DENSE_OPS):
        evidence.append(f"{dense_nodes} MatMul/Gemm node(s) ({_share_text(shares, DENSE_OPS)})")
    if attention:
        evidence.append("also " + "; ".join(attention) + ": a hybrid CNN-transformer, convolutions dominate")
    return evidence


def _other_evidence(proto: onnx.ModelProto, ops: Counter) -> list[str]:
    heavy = _listed(ops, sorted(CONV_OPS | DENSE_OPS))
    evidence = [f"heavy ops without a dominant kind: {heavy}" if heavy else "no Conv, MatMul/Gemm, attention or recurrent ops"]
    ml_ops = Counter(node.op_type for node in iter_nodes(proto) if node.domain == "ai.onnx.ml")
    if ml_ops:
        evidence.append("ai.onnx.ml ops: " + ", ".join(f"{n} {op}" for op, n in ml_ops.most_common(3)))
    return evidence


def _mac_shares(macs: MacReport) -> dict[str, float]:
    """Bare op type -> share of counted MACs (empty when nothing was counted)."""
    if macs.total_macs <= 0:
        return {}
    shares: dict[str, float] = {}
    for key, value in macs.by_op_type.items():
        op = key.rsplit(":", 1)[-1]
        shares[op] = shares.get(op, 0.0) + value / macs.total_macs
    return shares


def _share(shares: dict[str, float], group: Iterable[str]) -> float:
    return sum(shares.get(op, 0.0) for op in group)


def _share_text(shares: dict[str, float], group: Iterable[str]) -> str:
    return f"{_share(shares, group):.0%} of counted MACs" if shares else "MACs unknown"


def _node_count(ops: Counter, group: Iterable[str]) -> int:
    return sum(ops[op] for op in group)


def _listed(ops: Counter, names: Iterable[str]) -> str:
    """'2 Conv, 1 ConvTranspose': those of `names` that occur, with their node counts."""
    return ", ".join(f"{ops[op]} {op}" for op in names if ops[op])
