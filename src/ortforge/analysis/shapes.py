"""Data-free shape inference: every value's dims for concrete input shapes, without reading weights.

ONNX shape inference runs on a copy that carries the concrete input shapes and keeps only the data
that data propagation needs (small integer tensors: shapes). What it leaves open, `ort_shapes` can
supply from a run.
"""

from __future__ import annotations

import contextlib
import math

import onnx
from onnx import external_data_helper

from ortforge.core.graph import constant_node_tensor
from ortforge.core.model import Model, iter_graphs, iter_tensors

# Tensors above this many elements lose their data in the copy given to shape inference: only dims
# matter there, and a copy over 2 GB could not be handed to the C++ inference engine at all.
STRIP_ELEMENTS = 1024
ERROR_CHARS = 200

PartialDims = tuple[int | None, ...]


def inferred_shapes(model: Model, shapes: dict[str, tuple[int, ...]], notes: list[str] | None = None) -> dict[str, PartialDims]:
    """Every value's and constant's dims (None where unknown) for these input shapes, subgraphs included.

    A failure of shape inference is added to `notes`; the declared shapes are returned then.
    """
    return _collect_shapes(_infer(_inference_copy(model, shapes), notes if notes is not None else []))


def _inference_copy(model: Model, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The model with concrete input shapes and large tensors reduced to dims (data is not needed)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model.proto)
    for tensor in iter_tensors(copy):
        _strip_tensor(tensor, model)
    for value in copy.graph.input:
        if value.name in shapes and value.type.HasField("tensor_type"):
            shape = value.type.tensor_type.shape
            shape.Clear()
            for size in shapes[value.name]:
                shape.dim.add().dim_value = int(size)
    return copy


def _strip_tensor(tensor: onnx.TensorProto, model: Model) -> None:
    """Drop data inference does not need; external tensors end up inline (read, or as bare dims)."""
    elements = math.prod(tensor.dims)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        # Small integer tensors may be shapes that data propagation needs; read those, drop the rest.
        if elements <= STRIP_ELEMENTS and is_integer(tensor.data_type) and model.base_dir is not None:
            with contextlib.suppress(OSError):
                external_data_helper.load_external_data_for_tensor(tensor, str(model.base_dir))
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    elif elements > STRIP_ELEMENTS:
        for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            tensor.ClearField(name)


def is_integer(data_type: int) -> bool:
    """The integer types shape tensors come in."""
    return data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)


def _infer(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Shape inference with data propagation; retried without stored value_info, then without data_prop."""
    error = ""
    for clear, data_prop in ((False, True), (True, True), (True, False)):
        candidate = proto
        if clear:
            # Stale or symbolic value_info and output shapes can contradict concrete inference.
            candidate = onnx.ModelProto()
            candidate.CopyFrom(proto)
            for graph in iter_graphs(candidate.graph):
                del graph.value_info[:]
            for value in candidate.graph.output:
                if value.type.HasField("tensor_type"):
                    value.type.tensor_type.ClearField("shape")
        try:
            return onnx.shape_inference.infer_shapes(candidate, check_type=False, strict_mode=False, data_prop=data_prop)
        except Exception as exc:  # onnx raises several types (InferenceError, ValidationError, RuntimeError)
            error = error_line(exc)
    notes.append(f"onnx shape inference failed ({error}); only declared shapes and the onnxruntime fallback were used")
    return proto


def _collect_shapes(proto: onnx.ModelProto) -> dict[str, PartialDims]:
    """Name -> dims (None where unknown) for every typed value and constant in every graph."""
    shapes: dict[str, PartialDims] = {}
    for graph in iter_graphs(proto.graph):
        for value in [*graph.input, *graph.value_info, *graph.output]:
            if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
                shapes[value.name] = tuple(
                    d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                    for d in value.type.tensor_type.shape.dim
                )
    for graph in iter_graphs(proto.graph):
        shapes.update((tensor.name, tuple(tensor.dims)) for tensor in graph.initializer)
        for node in graph.node:
            if (tensor := constant_node_tensor(node)) is not None:
                shapes[node.output[0]] = tuple(tensor.dims)
    return shapes


def error_line(exc: BaseException | str) -> str:
    """The first line of an error, cut to ERROR_CHARS: what a note has room for."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 3] + "..."
