"""Element types: of every value in the model, and of a node's outputs for given input types.

onnx's type inference where onnx knows the op, ORT's own schemas (contrib ops) where it does not.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import TensorProto

from ortforge.core.graph import subgraphs
from ortforge.transforms.fp16.options import CONTROL_FLOW_OPS, ONNX_DOMAINS

_TYPE_STRINGS = {value: f"tensor({name.lower()})" for name, value in TensorProto.DataType.items() if name != "UNDEFINED"}
_ELEM_TYPES = {text: elem for elem, text in _TYPE_STRINGS.items()}


@dataclass(frozen=True)
class _Signature:
    """An op's formal parameters: type string per input/output slot, allowed types per type parameter."""

    since_version: int
    inputs: tuple[tuple[str, bool], ...]  # (type string or parameter, variadic)
    outputs: tuple[tuple[str, bool], ...]
    allowed: Mapping[str, frozenset[str]]
    schema: Any = None  # onnx.defs.OpSchema when onnx knows the op: its type inference is used

    def input_type(self, slot: int) -> str | None:
        return _slot_type(self.inputs, slot)

    def output_type(self, slot: int) -> str | None:
        return _slot_type(self.outputs, slot)


def _slot_type(formals: tuple[tuple[str, bool], ...], slot: int) -> str | None:
    if slot < len(formals):
        return formals[slot][0]
    if formals and formals[-1][1]:
        return formals[-1][0]
    return None


@functools.lru_cache(maxsize=4096)
def _signature(domain: str, op_type: str, version: int) -> _Signature | None:
    """The op's signature at the model's opset: from onnx when it knows the op, else from ORT's schemas."""
    if domain in ONNX_DOMAINS:
        try:
            schema = onnx.defs.get_schema(op_type, version, "" if domain == "ai.onnx" else domain)
        except onnx.defs.SchemaError:
            schema = None
        if schema is not None:
            variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
            return _Signature(
                schema.since_version,
                tuple((p.type_str, p.option == variadic) for p in schema.inputs),
                tuple((p.type_str, p.option == variadic) for p in schema.outputs),
                {c.type_param_str: frozenset(c.allowed_type_strs) for c in schema.type_constraints},
                schema,
            )
    candidates = [s for s in _ort_schemas().get((domain, op_type), ()) if s.since_version <= version]
    if not candidates:
        return None
    schema = max(candidates, key=lambda s: s.since_version)
    variadic = type(schema.inputs[0].option).Variadic if schema.inputs else None
    return _Signature(
        schema.since_version,
        tuple((p.typeStr, p.option == variadic) for p in schema.inputs),
        tuple((p.typeStr, p.option == variadic) for p in schema.outputs),
        {c.type_param_str: frozenset(c.allowed_type_strs) for c in schema.type_constraints},
    )


@functools.lru_cache(maxsize=1)
def _ort_schemas() -> dict[tuple[str, str], list[Any]]:
    """ORT's op schemas (its contrib ops included), by (domain, op type)."""
    from onnxruntime.capi import _pybind_state as capi

    schemas: dict[tuple[str, str], list[Any]] = {}
    for schema in capi.get_all_operator_schema():
        schemas.setdefault((schema.domain or "ai.onnx", schema.name), []).append(schema)
    return schemas


@dataclass
class _Context:
    """What type inference and decisions need about the model as a whole."""

    opsets: dict[str, int]
    opset_import: list[onnx.OperatorSetIdProto]
    functions: set[tuple[str, str]]

    def signature(self, node: onnx.NodeProto) -> _Signature | None:
        domain = node.domain or "ai.onnx"
        return _signature(domain, node.op_type, self.opsets.get(domain, 1))


def _infer_outputs(node: onnx.NodeProto, signature: _Signature, input_types: list[int | None], context: _Context) -> list[int | None]:
    """Output element types of `node` given its input slots' types (onnx type inference, else type parameters).

    Slots get placeholder names, so one value used in two slots with different types is expressible.
    """
    if signature.schema is not None:
        probe = onnx.NodeProto()
        probe.CopyFrom(node)
        del probe.input[:], probe.output[:]
        probe.input.extend(f"in{i}" if name and input_types[i] else "" for i, name in enumerate(node.input))
        probe.output.extend(f"out{i}" if name else "" for i, name in enumerate(node.output))
        given = {f"in{i}": _type_proto(t) for i, t in enumerate(input_types) if node.input[i] and t}
        inferred = onnx.shape_inference.infer_node_outputs(signature.schema, probe, given, opset_imports=context.opset_import)
        return [_elem(inferred.get(f"out{i}")) for i in range(len(node.output))]
    bound: dict[str, int] = {}
    for slot, elem in enumerate(input_types):
        formal = signature.input_type(slot)
        if elem and formal in signature.allowed:
            bound.setdefault(formal, elem)
    results: list[int | None] = []
    for slot in range(len(node.output)):
        formal = signature.output_type(slot)
        if formal in signature.allowed:
            allowed = signature.allowed[formal]
            single = _ELEM_TYPES.get(next(iter(allowed))) if len(allowed) == 1 else None
            results.append(bound.get(formal, single))
        else:
            results.append(_ELEM_TYPES.get(formal or ""))
    return results


def _type_proto(elem: int) -> onnx.TypeProto:
    proto = onnx.TypeProto()
    proto.tensor_type.elem_type = elem
    return proto


def _elem(type_proto: onnx.TypeProto | None) -> int | None:
    if type_proto is None or not type_proto.HasField("tensor_type"):
        return None
    return type_proto.tensor_type.elem_type or None


def _declared(graph: onnx.GraphProto, types: dict[str, int]) -> None:
    """Types the graph states: inputs, outputs, value_info, initializers."""
    for info in (*graph.input, *graph.output, *graph.value_info):
        elem = _elem(info.type)
        if elem:
            types.setdefault(info.name, elem)
    for tensor in graph.initializer:
        types.setdefault(tensor.name, tensor.data_type)


def _value_types(proto: onnx.ModelProto, context: _Context) -> dict[str, int]:
    """Element type of every tensor value, subgraphs included.

    onnx's model-wide inference types the main graph but writes nothing into subgraphs, and knows no
    contrib ops: the rest is filled node by node (onnx inference per node, ORT's schemas for contrib ops).
    """
    types: dict[str, int] = {}
    _declared(_inferred_main_graph(proto), types)
    _propagate(proto.graph, types, context)
    return types


def _inferred_main_graph(proto: onnx.ModelProto) -> onnx.GraphProto:
    """onnx shape inference on a copy whose large initializers are stubs (types and dims are enough)."""
    light = onnx.ModelProto(ir_version=proto.ir_version)
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(light.graph, part).extend(getattr(proto.graph, part))
    for tensor in proto.graph.initializer:
        small = tensor.data_location != TensorProto.EXTERNAL and tensor.ByteSize() <= 1024
        light.graph.initializer.append(tensor if small else TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims))
    try:
        return onnx.shape_inference.infer_shapes(light).graph
    except Exception:  # onnx raises several types; what it cannot type is filled node by node
        return light.graph


def _propagate(graph: onnx.GraphProto, types: dict[str, int], context: _Context) -> None:
    _declared(graph, types)
    for node in graph.node:
        for _, subgraph in subgraphs(node):
            _propagate(subgraph, types, context)
        if all(not name or name in types for name in node.output):
            continue
        for name, elem in zip(node.output, _original_outputs(node, types, context)):
            if name and elem:
                types.setdefault(name, elem)


def _original_outputs(node: onnx.NodeProto, types: dict[str, int], context: _Context) -> list[int | None]:
    """Output types of a node as the model stands (control flow from its bodies' outputs)."""
    if node.op_type in CONTROL_FLOW_OPS and node.domain in ("", "ai.onnx"):
        body = next((g for _, g in subgraphs(node)), None)
        if body is None:
            return []
        skip = 1 if node.op_type == "Loop" else 0  # a Loop body's first output is its condition
        return [types.get(value.name) or _elem(value.type) for value in body.output[skip:]]
    signature = context.signature(node)
    if signature is None:
        return []
    try:
        return _infer_outputs(node, signature, [types.get(name) if name else None for name in node.input], context)
    except Exception:  # onnx inference rejects the node: its outputs stay untyped
        return []
