"""Static facts about a model for `ortforge inspect`: I/O, opsets, ops, parameters, MACs and family.

Nothing here loads external weights: parameter sizes come from tensor dims, MACs from shapes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import helper

from .data import ShapeOptions, input_specs, resolve_shapes
from .errors import UserError
from .flops import MacReport, count_macs, op_key
from .model import Model, iter_graphs, iter_nodes, opset_versions

FAMILIES = ("cnn", "rnn", "transformer", "mlp", "quantized", "other")
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
        return {
            "count": self.count,
            "bytes": self.bytes,
            "tensors": self.tensors,
            "external_tensors": self.external_tensors,
            "by_dtype": {dtype: dict(stats) for dtype, stats in self.by_dtype.items()},
        }


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

    def add(data_type: int, elements: int, size: int) -> None:
        stats = by_dtype.setdefault(dtype_name(data_type), {"count": 0, "bytes": 0, "tensors": 0})
        stats["count"] += elements
        stats["bytes"] += size
        stats["tensors"] += 1

    for tensor in _weight_tensors(proto):
        external += tensor.data_location == onnx.TensorProto.EXTERNAL
        elements = math.prod(tensor.dims)
        add(tensor.data_type, elements, _tensor_bytes(tensor, elements))
    for graph in iter_graphs(proto.graph):
        for sparse in graph.sparse_initializer:
            stored = math.prod(sparse.values.dims)
            add(sparse.values.data_type, stored, _tensor_bytes(sparse.values, stored) + _tensor_bytes(sparse.indices, math.prod(sparse.indices.dims)))
        for node in graph.node:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            for attribute in node.attribute:
                if attribute.name in ("value_float", "value_floats"):
                    count = 1 if attribute.name == "value_float" else len(attribute.floats)
                    add(onnx.TensorProto.FLOAT, count, 4 * count)
                elif attribute.name in ("value_int", "value_ints"):
                    count = 1 if attribute.name == "value_int" else len(attribute.ints)
                    add(onnx.TensorProto.INT64, count, 8 * count)
    ordered = dict(sorted(by_dtype.items(), key=lambda item: -item[1]["bytes"]))
    return ParameterStats(
        count=sum(s["count"] for s in ordered.values()),
        bytes=sum(s["bytes"] for s in ordered.values()),
        tensors=sum(s["tensors"] for s in ordered.values()),
        external_tensors=external,
        by_dtype=ordered,
    )


def _weight_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = []
    for graph in iter_graphs(proto.graph):
        tensors.extend(graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                tensors.extend(a.t for a in node.attribute if a.name == "value" and a.HasField("t"))
                for attribute in node.attribute:
                    if attribute.name == "sparse_value" and attribute.HasField("sparse_tensor"):
                        tensors.append(attribute.sparse_tensor.values)
    return tensors


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
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _mark_containers(subgraph, holder or node.op_type, container)


def attention_patterns(proto: onnx.ModelProto, graphs: _Graphs | None = None) -> int:
    """Softmax nodes fed (through scaling/masking) by a MatMul of two activations and feeding a MatMul."""
    graphs = graphs or _Graphs.build(proto)
    return sum(
        1
        for node in iter_nodes(proto)
        if node.op_type == "Softmax" and _scores_matmul(node.input[0], graphs, PATTERN_DEPTH) and _probs_matmul(node.output[0], graphs, PATTERN_DEPTH)
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
    """One of FAMILIES, with short human-readable evidence for the choice."""
    ops = Counter(node.op_type for node in iter_nodes(proto))
    graphs = _Graphs.build(proto)
    family, evidence = _architecture(proto, macs, ops, graphs)
    quantized = {op: n for op, n in ops.items() if op in QUANT_OPS or op.startswith(("QLinear", "DynamicQuantize"))}
    if quantized:
        listed = ", ".join(f"{n} {op}" for op, n in sorted(quantized.items(), key=lambda item: -item[1])[:4])
        return "quantized", [f"already quantized: {listed}", f"underlying architecture looks {family}", *evidence]
    return family, evidence


def _architecture(proto: onnx.ModelProto, macs: MacReport, ops: Counter, graphs: _Graphs) -> tuple[str, list[str]]:
    shares = _mac_shares(macs)
    incomplete = [f"MAC shares cover counted nodes only ({len(macs.unknown)} heavy node(s) uncounted)"] if macs.unknown and shares else []
    conv_nodes = sum(ops[op] for op in CONV_OPS)
    dense_nodes = sum(ops[op] for op in DENSE_OPS)

    recurrent = [node for node in iter_nodes(proto) if node.op_type in RECURRENT_OPS]
    if recurrent:
        evidence = [_recurrent_evidence(recurrent, graphs)]
        share = sum(shares.get(op, 0.0) for op in RECURRENT_OPS)
        if shares:
            evidence.append(f"recurrent ops hold {share:.0%} of counted MACs")
        if conv_nodes:
            evidence.append(f"also {conv_nodes} Conv node(s) ({_share_text(shares, CONV_OPS)})")
        return "rnn", evidence + incomplete

    attention_ops = sum(ops[op] for op in ATTENTION_OPS)
    patterns = attention_patterns(proto, graphs)
    attention = _attention_evidence(attention_ops, patterns, ops)
    conv_share = sum(shares.get(op, 0.0) for op in CONV_OPS)
    dense_share = sum(shares.get(op, 0.0) for op in DENSE_OPS)
    conv_dominant = conv_share >= DOMINANT_SHARE if shares else conv_nodes > dense_nodes
    if attention and not conv_dominant:
        norms = sum(ops[op] for op in NORM_OPS)
        decomposed = _decomposed_layernorms(proto, graphs)
        evidence = list(attention)
        if norms:
            evidence.append(f"{norms} LayerNormalization-type node(s)")
        elif decomposed:
            evidence.append(f"{decomposed} LayerNorm(s) written out as ReduceMean/Sub/...")
        if shares:
            evidence.append(f"MatMul/Gemm/attention hold {dense_share + sum(shares.get(op, 0.0) for op in ATTENTION_OPS):.0%} of counted MACs")
        return "transformer", evidence + incomplete
    if conv_nodes and conv_dominant:
        evidence = [f"{_conv_text(ops)} ({_share_text(shares, CONV_OPS)})"]
        companions = [f"{ops[op]} {op}" for op in CNN_COMPANIONS if ops[op]]
        if companions:
            evidence.append("with " + ", ".join(companions))
        if dense_nodes:
            evidence.append(f"{dense_nodes} MatMul/Gemm node(s) ({_share_text(shares, DENSE_OPS)})")
        if attention:
            evidence.append("also " + "; ".join(attention) + ": a hybrid CNN-transformer, convolutions dominate")
        return "cnn", evidence + incomplete
    if dense_nodes and (dense_share >= DOMINANT_SHARE or not shares):
        evidence = [f"{dense_nodes} MatMul/Gemm node(s) ({_share_text(shares, DENSE_OPS)})"]
        evidence.append("no attention or recurrent ops" + (f"; {conv_nodes} minor Conv node(s)" if conv_nodes else ", no Conv"))
        return "mlp", evidence + incomplete
    heavy = [f"{ops[op]} {op}" for op in sorted(CONV_OPS | DENSE_OPS) if ops[op]]
    evidence = [("heavy ops without a dominant kind: " + ", ".join(heavy)) if heavy else "no Conv, MatMul/Gemm, attention or recurrent ops"]
    ml_ops = Counter(node.op_type for node in iter_nodes(proto) if node.domain == "ai.onnx.ml")
    if ml_ops:
        evidence.append("ai.onnx.ml ops: " + ", ".join(f"{n} {op}" for op, n in ml_ops.most_common(3)))
    return "other", evidence


def _mac_shares(macs: MacReport) -> dict[str, float]:
    """Bare op type -> share of counted MACs (empty when nothing was counted)."""
    if macs.total_macs <= 0:
        return {}
    shares: dict[str, float] = {}
    for key, value in macs.by_op_type.items():
        op = key.rsplit(":", 1)[-1]
        shares[op] = shares.get(op, 0.0) + value / macs.total_macs
    return shares


def _share_text(shares: dict[str, float], group: set[str]) -> str:
    if not shares:
        return "MACs unknown"
    return f"{sum(shares.get(op, 0.0) for op in group):.0%} of counted MACs"


def _conv_text(ops: Counter) -> str:
    parts = [f"{ops[op]} {op}" for op in sorted(CONV_OPS) if ops[op]]
    return ", ".join(parts)


def _recurrent_evidence(nodes: list[onnx.NodeProto], graphs: _Graphs) -> str:
    kinds = Counter(node.op_type for node in nodes)
    text = ", ".join(f"{n} {op}" for op, n in kinds.most_common())
    holders = Counter(graphs.container.get(id(node), "") for node in nodes)
    inside = {holder: n for holder, n in holders.items() if holder}
    if inside and len(inside) == 1 and sum(inside.values()) == len(nodes):
        return f"{text}, inside {next(iter(inside))} subgraphs"
    if inside:
        return f"{text} ({sum(inside.values())} inside If/Loop/Scan subgraphs)"
    return text


def _attention_evidence(attention_ops: int, patterns: int, ops: Counter) -> list[str]:
    evidence = []
    if attention_ops:
        listed = ", ".join(f"{ops[op]} {op}" for op in sorted(ATTENTION_OPS) if ops[op])
        evidence.append(f"fused attention ops: {listed}")
    if patterns:
        evidence.append(f"{patterns} Softmax between two activation MatMuls (attention pattern)")
    return evidence
