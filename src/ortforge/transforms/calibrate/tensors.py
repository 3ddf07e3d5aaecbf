"""Which tensors to calibrate, and the probes that read them through the tensor tap (`analysis/tap.py`).

ORT's choice of tensors (float inputs/outputs of quantizable ops in the main graph) is reproduced
here; each tensor is read back through a probe: the feed for graph inputs, a ReduceMin/ReduceMax
pair for minmax, the tensor itself for the histogram methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import TensorProto, helper

from ortforge.analysis.tap import element_counts, names_in_use, passes, tap_session
from ortforge.core.errors import UserError
from ortforge.core.model import Model, fresh_name, iter_graphs
from ortforge.core.session import SessionConfig
from ortforge.data import Feed
from ortforge.transforms.calibrate.options import CALIBRATED_TYPES, CalibrationOptions

INITIALIZER_STUB_BYTES = 1024  # shape inference gets larger initializers as shape-only stubs


def quantizable_op_types() -> tuple[str, ...]:
    """The op types `quantize_static` quantizes by default (ORT's QLinear and QDQ registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return tuple(sorted(set(QLinearOpsRegistry) | set(QDQRegistry)))


def select_tensors(model: Model, op_types: Sequence[str] | None = None) -> tuple[list[str], dict[str, int]]:
    """The tensors ORT's calibrator would calibrate, and their element types.

    Float32/float16 inputs and outputs of the main graph's nodes of `op_types` (ORT's quantizable
    ops by default) whose type shape inference knows, initializers excepted. Sorted, for stable output.
    """
    wanted = set(op_types) if op_types is not None else set(quantizable_op_types())
    types = tensor_types(model.proto)
    initializers = {tensor.name for tensor in model.proto.graph.initializer}
    chosen = set()
    for node in model.proto.graph.node:
        if node.op_type not in wanted:
            continue
        for name in (*node.input, *node.output):
            if name and name not in initializers and types.get(name) in CALIBRATED_TYPES:
                chosen.add(name)
    return sorted(chosen), {name: types[name] for name in chosen}


def tensor_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every main-graph tensor that shape inference types (as ORT's calibrator sees them)."""
    inferred = _infer_shapes(proto).graph
    types = {}
    for info in (*inferred.value_info, *inferred.output, *inferred.input):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on a copy of the graph without the weights' bytes (types and dims are enough)."""
    light = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, name, getattr(proto, name))
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    graph = proto.graph
    light.graph.name = graph.name
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(light.graph, part).extend(getattr(graph, part))
    # Small initializers keep their values: Reshape/Slice/... shapes are inferred from them.
    light.graph.initializer.extend(_stub(tensor) for tensor in graph.initializer)
    try:
        return onnx.shape_inference.infer_shapes(light)
    except Exception:  # onnx raises several types; ORT's calibrator would fail here, we calibrate what is typed
        return light


def _stub(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_location != TensorProto.EXTERNAL and tensor.ByteSize() <= INITIALIZER_STUB_BYTES:
        return tensor
    return onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)


def tensors_to_calibrate(model: Model, tensors: Sequence[str] | None, options: CalibrationOptions) -> tuple[list[str], list[str]]:
    """The tensors to calibrate (the caller's, checked, or ORT's choice) and notes on what is left out."""
    notes = []
    if any(graph is not model.proto.graph for graph in iter_graphs(model.proto.graph)):
        notes.append("tensors inside If/Loop/Scan subgraphs are not calibrated (ORT's calibrator skips them too)")
    if tensors is None:
        names, types = select_tensors(model, options.op_types)
    else:
        names, types = list(dict.fromkeys(tensors)), tensor_types(model.proto)
        initializers = {tensor.name for tensor in model.proto.graph.initializer}
        for name in names:
            if name in initializers:
                raise UserError(f"{model.name}: '{name}' is an initializer (a weight), not an activation to calibrate")
            if types.get(name) not in CALIBRATED_TYPES:
                raise UserError(f"{model.name}: no float32/float16 tensor '{name}' in the main graph to calibrate")
    if not names:
        raise UserError(f"{model.name}: no float tensors to calibrate (none feed or leave a quantizable op)")
    if any(types[name] == TensorProto.FLOAT16 for name in names):
        notes.append("float16 tensors are calibrated in float32 (ORT keeps float16 ranges; the values are the same)")
    return names, notes


@dataclass
class Probe:
    """How one tensor's values come back from a run: from the feed, the tensor itself, or its min/max."""

    tensor: str
    outputs: tuple[str, ...]  # empty: a graph input, read from the feed


def plan_probes(model: Model, tensors: Sequence[str], method: str) -> tuple[list[Probe], list[onnx.NodeProto], list[onnx.ValueInfoProto]]:
    """Probes per tensor, and the nodes and graph outputs to add for them.

    MinMax adds ReduceMin/ReduceMax so that a run returns two numbers per tensor instead of the
    whole tensor (ORT's MinMax calibrator does the same); the other methods need the values.
    """
    graph = model.proto.graph
    graph_inputs = {value.name for value in graph.input}
    graph_outputs = {value.name for value in graph.output}
    taken = names_in_use(graph)
    probes, nodes, outputs = [], [], []
    for tensor in tensors:
        if tensor in graph_inputs:
            probes.append(Probe(tensor, ()))
        elif method == "minmax":
            low, high = fresh_name(f"{tensor}__ortforge_min", taken), fresh_name(f"{tensor}__ortforge_max", taken)
            nodes.append(helper.make_node("ReduceMin", [tensor], [low], name=low, keepdims=1))
            nodes.append(helper.make_node("ReduceMax", [tensor], [high], name=high, keepdims=1))
            outputs += [helper.make_empty_tensor_value_info(low), helper.make_empty_tensor_value_info(high)]
            probes.append(Probe(tensor, (low, high)))
        else:
            if tensor not in graph_outputs:
                outputs.append(helper.make_empty_tensor_value_info(tensor))
            probes.append(Probe(tensor, (tensor,)))
    return probes, nodes, outputs


@dataclass
class Runner:
    """A session exposing some tensors, and how to read each tensor back from its outputs."""

    session: Any
    probes: list[Probe]
    wanted: list[str]


def make_runner(model: Model, tensors: Sequence[str], method: str, config: SessionConfig) -> Runner:
    """The session and probes that read `tensors` (their values, or min/max for minmax) in one run."""
    probes, nodes, outputs = plan_probes(model, tensors, method)
    wanted = list(dict.fromkeys(output for probe in probes for output in probe.outputs))
    return Runner(tap_session(model, [value.name for value in outputs], config, probes=nodes, purpose="calibration"), probes, wanted)


def groups_by_size(model: Model, names: list[str], feed: Feed, budget: int, config: SessionConfig) -> list[list[str]]:
    """Tensors split, in order, into groups whose outputs for `feed` take at most `budget` bytes each.

    Sizes come from a run that returns only each tensor's element count, so finding them costs about
    one plain run; a tensor larger than the budget gets a group of its own.
    """
    graph_inputs = {value.name for value in model.proto.graph.input}
    measured = [name for name in names if name not in graph_inputs]
    if not measured:
        return [names]
    types = tensor_types(model.proto)
    counts = element_counts(model, measured, feed, config)
    groups = passes(measured, {name: count * (2 if types.get(name) == TensorProto.FLOAT16 else 4) for name, count in counts.items()}, budget)
    groups[0].extend(name for name in names if name in graph_inputs)  # read from the feed: free
    return groups
