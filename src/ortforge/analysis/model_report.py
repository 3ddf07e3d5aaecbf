"""Static facts about a model for `ortforge inspect`: I/O, opsets, ops, parameters, MACs and family (`family`).

Nothing here loads external weights: parameter sizes come from tensor dims, MACs from shapes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from onnx import helper

from ortforge.analysis.decoder import DecoderFacts, find_decoder
from ortforge.analysis.family import classify_family
from ortforge.analysis.macs import MacReport, count_macs, op_key
from ortforge.core.errors import UserError
from ortforge.core.graph import is_default_domain
from ortforge.core.model import Model, iter_graphs, iter_nodes, opset_versions
from ortforge.data import ShapeOptions, input_specs, resolve_shapes
from ortforge.data.pinned import pinned_dims
from ortforge.data.specs import check_shape_names

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
    decoder: DecoderFacts | None = None
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
            "decoder": self.decoder.to_dict() if self.decoder else None,
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
    check_shape_names(input_specs(model), shape_options)  # a typo is the user's to fix, not a note
    try:
        resolved = resolve_shapes(input_specs(model), shape_options, pinned_dims(model))
        shapes, defaults = resolved.shapes, resolved.defaults
        macs = count_macs(model, shapes, feeds=feeds)
    except UserError as exc:
        macs = MacReport(notes=[f"MACs not counted: {exc}"])
    if defaults and any("fallback failed" in entry.reason for entry in macs.unknown):
        notes.append(
            f"some nodes could not be sized on these input shapes ({len(defaults)} dim(s) are defaults, which may not "
            "suit this model); give real ones with shapes / dims (--shape, --dim)"
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
        decoder=find_decoder(proto),
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
    """Counts and bytes of initializers and Constant tensors in every graph, by dtype, from dims only. Block-quantized
    weights count as the logical weights they hold (a MatMulNBits' packed uint8 [N, blocks, bytes] is N x K int4 or
    int8 values), and their scales and zero points as bytes only, not as parameters."""
    by_dtype: dict[str, dict[str, int]] = {}
    external = 0
    packed = _packed_weights(proto)
    for data_type, count, size, is_external, name in _weights(proto):
        label, count = packed.get(name, (dtype_name(data_type), count))
        stats = by_dtype.setdefault(label, {"count": 0, "bytes": 0, "tensors": 0})
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


def _weights(proto: onnx.ModelProto) -> Iterator[tuple[int, int, int, bool, str]]:
    """(data type, values, bytes, stored externally, name) of each weight: dense tensors first, then sparse and numbers."""
    for tensor in _dense_weights(proto):
        count = math.prod(tensor.dims)
        yield tensor.data_type, count, _tensor_bytes(tensor, count), tensor.data_location == onnx.TensorProto.EXTERNAL, tensor.name
    for graph in iter_graphs(proto.graph):
        for sparse in graph.sparse_initializer:
            count = math.prod(sparse.values.dims)
            size = _tensor_bytes(sparse.values, count) + _tensor_bytes(sparse.indices, math.prod(sparse.indices.dims))
            yield sparse.values.data_type, count, size, False, sparse.values.name
        for node in filter(_is_constant, graph.node):
            for attribute in node.attribute:
                if attribute.name in NUMBER_ATTRIBUTES:
                    data_type, itemsize = NUMBER_ATTRIBUTES[attribute.name]
                    count = len(attribute.floats) + len(attribute.ints) if attribute.name.endswith("s") else 1
                    yield data_type, count, itemsize * count, False, node.output[0]


def _packed_weights(proto: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """Weights of block-quantized ops -> (dtype label, logical values): the packed weights' N x K (MatMulNBits) or rows x
    columns (GatherBlockQuantized) values at their bits, and 0 values for their scales and zero points."""
    found: dict[str, tuple[str, int]] = {}
    tensors = {t.name: t for t in _dense_weights(proto)}
    dims = {name: tuple(t.dims) for name, t in tensors.items()}
    for node in iter_nodes(proto):
        if node.domain != "com.microsoft" or node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        found_attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits = int(found_attributes.get("bits", 4))
        weight = node.input[1] if node.op_type == "MatMulNBits" else node.input[0]
        if node.op_type == "MatMulNBits" and "N" in found_attributes and "K" in found_attributes:
            found[weight] = (f"int{bits} (packed)", int(found_attributes["N"]) * int(found_attributes["K"]))
        elif node.op_type == "GatherBlockQuantized" and weight in dims and dims[weight]:
            per_byte = 1 if tensors[weight].data_type in FOUR_BIT_TYPES else 8 // bits if bits in (2, 4) else 1  # int4 elements: logical already
            found[weight] = (f"int{bits} (packed)", math.prod(dims[weight]) * per_byte)
        for name in node.input[2:4]:  # scales, zero points
            if name and name in dims:
                found.setdefault(name, ("quantization scales and zero points", 0))
    return found


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
    return node.op_type == "Constant" and is_default_domain(node)


def _tensor_bytes(tensor: onnx.TensorProto, elements: int) -> int:
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    if tensor.data_type in FOUR_BIT_TYPES:
        return (elements + 1) // 2
    try:
        return elements * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 0
