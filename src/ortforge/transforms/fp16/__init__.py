"""Float16 conversion that keeps the answers right, and its simulation on a CPU.

`plan_fp16` decides per node whether it computes in float16 and records why every other float node stays
float32: blocked by the user, no float16 kernel in the target EP (ORT's kernel registry, not a hand list),
a constant or a measured activation beyond float16's range (kept, never clamped), an output type an
attribute fixes, no schema, control flow. `convert_fp16` applies a plan: float16 weights, Casts at every
float16/float32 boundary, graph and subgraph signatures unchanged. `simulate_fp16` applies the same plan
inside a float32 graph by rounding every would-be-float16 tensor through float16, so accuracy can be judged
on a CPU whose EP has no float16 kernels.

A plan is made once (type inference, registry and range look-ups) and applied many times: node decisions
are independent of each other (boundaries get Casts), so `Fp16Plan.with_fp32(names)` is cheap and a
mixed-precision search can simulate many keep-sets from one plan.

The graph is edited as protos, not through onnx-ir: every edit is a rename, a Cast inserted after a
producer or a tensor swapped, names are unique model-wide (ONNX's SSA rule spans subgraphs, so one
name -> consumers index covers outer-scope uses), and `simulate_fp16` is called repeatedly by a search,
where a ModelProto -> IR -> ModelProto round trip per call would cost as much as the edit itself.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ortforge.core import runtime
from ortforge.core.errors import UserError, first_line
from ortforge.core.model import Model, from_proto, opset_versions
from ortforge.core.session import provider_name
from ortforge.data import FeedSet
from ortforge.transforms import TransformResult

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FLOAT_TYPE, FLOAT16_TYPE = "tensor(float)", "tensor(float16)"
FLOAT16_MAX = 65504.0
# Half of float16's largest finite value: measured activations are a sample of what real data gives,
# and a product or sum of two in-range float16 values can still overflow.
DEFAULT_MAX_FINITE = 32768.0
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")
# Attributes that fix an output's type; only used to name the attribute in a reason.
TYPE_ATTRIBUTES = ("to", "dtype", "stash_type", "output_datatype", "output_dtype", "value")
# An initializer or Constant with at least this many elements is a weight: a float16 node holding one
# is worth its boundary Casts (halved weight traffic, tensor cores) even with float32 neighbours.
WEIGHT_ELEMENTS = 1024
ONNX_DOMAINS = ("ai.onnx", "ai.onnx.ml")

# Reason kinds of float32 nodes (machine-readable; `NodeDecision.reason` says it in words).
BLOCKED_OP = "blocked-op"
BLOCKED_NODE = "blocked-node"
KEPT = "kept"
NO_KERNEL = "no-kernel"
CONSTANT_RANGE = "constant-range"
ACTIVATION_RANGE = "activation-range"
FIXED_TYPE = "fixed-type"
NO_FLOAT16_TYPE = "no-float16-type"
NO_SCHEMA = "no-schema"
CONTROL_FLOW = "control-flow"
FUNCTION = "function"
UNKNOWN_TYPE = "unknown-type"
NOT_TENSOR = "not-tensor"
INFERENCE = "inference"
ISOLATED = "isolated"
RUNTIME = "runtime"
# Conversions retried after a float16 node failed to run (a kernel registered for float16 can still
# refuse an attribute, e.g. ScatterND's reductions on CPU); each retry keeps one more node float32.
MAX_RUNTIME_REPAIRS = 8


# --- options and plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fp16Options:
    """What to convert and for which EP; `activation_ranges` comes from `measure_activation_ranges`."""

    keep_io_types: bool = True  # graph inputs/outputs keep their dtypes (and names, always)
    block_ops: tuple[str, ...] = ()  # op types kept float32
    block_nodes: tuple[str, ...] = ()  # node names kept float32
    keep_fp32_nodes: tuple[str, ...] = ()  # node names a mixed-precision search keeps float32
    # Whose float16 kernels count; None: no EP asked, the ONNX schemas alone decide.
    provider: str | None = "CPUExecutionProvider"
    max_finite: float = DEFAULT_MAX_FINITE  # |values| above this keep their node float32
    activation_ranges: Mapping[str, float] | None = None  # tensor name -> max |x| measured on data
    drop_islands: bool = True  # a lone float16 node between float32 ones (no weights) stays float32

    def __post_init__(self) -> None:
        for name in ("block_ops", "block_nodes", "keep_fp32_nodes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.provider is not None:
            object.__setattr__(self, "provider", provider_name(self.provider))
        if not 0 < self.max_finite <= FLOAT16_MAX:
            raise UserError(f"max_finite {self.max_finite:g}: choose a value in (0, {FLOAT16_MAX:g}] (float16's largest finite value)")


@dataclass(frozen=True)
class NodeDecision:
    """One float node: float16 or float32, and why float32 (`kind` for code, `reason` for people)."""

    name: str
    op_type: str
    graph: str  # 'main', or the path of the subgraph holding it, e.g. 'main/loop:body'
    fp16: bool
    kind: str = ""  # one of the reason kinds above; '' for float16 nodes
    reason: str = ""
    inputs: tuple[int, ...] = ()  # input slots that take float16 when the node is float16
    outputs: tuple[int, ...] = ()  # output slots that become float16
    note: str = ""  # e.g. outputs an attribute keeps float32 although the node is float16

    def to_dict(self) -> dict:
        return {"node": self.name, "op_type": self.op_type, "graph": self.graph, "fp16": self.fp16,
                "kind": self.kind, "reason": self.reason, "note": self.note}


@dataclass
class Fp16Plan:
    """Per-node decisions for one model; apply it with `convert_fp16` or `simulate_fp16`."""

    options: Fp16Options
    decisions: dict[str, NodeDecision]  # float nodes only, in graph order
    node_names: list[list[str]]  # per graph (depth-first order), the name of each node (unnamed ones named)
    types: dict[str, int]  # value name -> element type in the original model
    notes: list[str] = field(default_factory=list)
    kernel_source: str = "registry"  # 'registry' (ORT asked) or 'schema' (ONNX schemas only)
    _wiring: _Wiring | None = field(default=None, repr=False)
    _constants: _Constants | None = field(default=None, repr=False)

    def fp16_nodes(self) -> list[str]:
        return [name for name, d in self.decisions.items() if d.fp16]

    def fp32_nodes(self) -> list[NodeDecision]:
        return [d for d in self.decisions.values() if not d.fp16]

    def with_fp32(self, names: Iterable[str], reason: str = "kept float32 by the caller", kind: str = KEPT) -> Fp16Plan:
        """A copy with these nodes float32 too (cheap: no re-analysis); islands are dropped again if enabled."""
        names = list(names)
        unknown = [name for name in names if name not in self.decisions]
        if unknown:
            raise UserError(f"no float node named '{unknown[0]}' in this plan", hint="see Fp16Plan.decisions for the names")
        decisions = dict(self.decisions)
        for name in names:
            if decisions[name].fp16:
                decisions[name] = _as_fp32(decisions[name], kind, reason)
        if self.options.drop_islands and self._wiring is not None and self._constants is not None:
            _drop_islands(decisions, self._wiring, self._constants, self.options)
        return replace(self, decisions=decisions, notes=list(self.notes))

    @property
    def constants(self) -> _Constants:
        if self._constants is None:
            raise UserError("this fp16 plan has no constant index: make it with plan_fp16")
        return self._constants

    def summary(self) -> dict:
        """Counts and the float32 nodes with their reasons, for reports."""
        fp32 = self.fp32_nodes()
        return {
            "provider": self.options.provider,
            "kernel_source": self.kernel_source,
            "fp16_nodes": len(self.decisions) - len(fp32),
            "fp32_nodes": len(fp32),
            "fp32_reasons": dict(Counter(d.kind for d in fp32)),
            "fp32": [d.to_dict() for d in fp32],
            "notes": list(self.notes),
        }


def _as_fp32(decision: NodeDecision, kind: str, reason: str) -> NodeDecision:
    return replace(decision, fp16=False, kind=kind, reason=reason, note="")


# --- graph walking ------------------------------------------------------------------------------


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.name, attribute.g
        for index, graph in enumerate(attribute.graphs):
            yield f"{attribute.name}[{index}]", graph


def _walk(graph: onnx.GraphProto, path: str = "main") -> Iterator[tuple[str, onnx.GraphProto]]:
    """(path, graph) for the graph and its subgraphs, in `model.iter_graphs` order."""
    yield path, graph
    for node in graph.node:
        for attribute, subgraph in _subgraphs(node):
            yield from _walk(subgraph, f"{path}/{node.name or node.op_type}:{attribute}")


def _unique_node_names(graphs: list[onnx.GraphProto]) -> list[list[str]]:
    """Each node's name, with unnamed and duplicate-named nodes given fresh unique names."""
    taken = {node.name for graph in graphs for node in graph.node if node.name}
    seen: set[str] = set()
    counters: Counter = Counter()
    names = []
    for graph in graphs:
        per_graph = []
        for node in graph.node:
            name = node.name
            if not name or name in seen:
                base = name or node.op_type
                while f"{base}_{counters[base]}" in taken:
                    counters[base] += 1
                name = f"{base}_{counters[base]}"
                taken.add(name)
            seen.add(name)
            per_graph.append(name)
        names.append(per_graph)
    return names


# --- types --------------------------------------------------------------------------------------

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
        for _, subgraph in _subgraphs(node):
            _propagate(subgraph, types, context)
        if all(not name or name in types for name in node.output):
            continue
        for name, elem in zip(node.output, _original_outputs(node, types, context)):
            if name and elem:
                types.setdefault(name, elem)


def _original_outputs(node: onnx.NodeProto, types: dict[str, int], context: _Context) -> list[int | None]:
    """Output types of a node as the model stands (control flow from its bodies' outputs)."""
    if node.op_type in CONTROL_FLOW_OPS and node.domain in ("", "ai.onnx"):
        body = next((g for _, g in _subgraphs(node)), None)
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


# --- constants ----------------------------------------------------------------------------------


class _Constants:
    """Initializers and Constant-node tensors, by value name, with their peak |value| computed on demand."""

    def __init__(self, graphs: list[onnx.GraphProto], base_dir: Path | None) -> None:
        self.base_dir = base_dir
        self.tensors: dict[str, TensorProto] = {}
        for graph in graphs:
            for tensor in graph.initializer:
                self.tensors[tensor.name] = tensor
            for node in graph.node:
                if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                    value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
                    if value is not None:
                        self.tensors[node.output[0]] = value
        self._peaks: dict[str, float] = {}
        self._halves: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def elements(self, name: str) -> int:
        return int(np.prod(self.tensors[name].dims)) if name in self.tensors else 0

    def peak(self, name: str) -> float:
        """Largest finite |value| of a constant (infinities and NaN exist in float16 too, so they do not count)."""
        if name not in self._peaks:
            array = self.array(name)
            self._peaks[name] = _finite_peak(array) if array.dtype.kind == "f" else 0.0
        return self._peaks[name]

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.tensors[name], str(self.base_dir) if self.base_dir else "")

    def float16(self, name: str) -> np.ndarray:
        """The constant as float16, kept: a search applying many plans converts each weight once."""
        if name not in self._halves:
            self._halves[name] = self.array(name).astype(np.float16)
        return self._halves[name]


# --- kernels ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _kernels(provider: str) -> dict[tuple[str, str], tuple[tuple[int, int, Mapping[str, frozenset[str]]], ...]] | None:
    """(domain, op) -> (first, last, type constraints) of each kernel the provider registered in this ORT.

    None when this ORT cannot list its kernels (`runtime.kernel_rows` asks in a child process).
    """
    rows = runtime.kernel_rows()
    if rows is None:
        return None
    table: dict[tuple[str, str], list] = {}
    for domain, op_type, kernel_provider, first, last, constraints in rows:
        if kernel_provider == provider:
            allowed = {param: frozenset(types) for param, types in constraints.items()}
            table.setdefault((domain or "ai.onnx", op_type), []).append((first, last, allowed))
    return {key: tuple(value) for key, value in table.items()}


def _kernel_problem(node: onnx.NodeProto, signature: _Signature, binding: dict[str, str], provider: str) -> str:
    """Why the provider cannot run the node with this type binding ('' if a registered kernel can)."""
    domain = node.domain or "ai.onnx"
    ranges = [k for k in (_kernels(provider) or {}).get((domain, node.op_type), ()) if k[0] <= signature.since_version <= k[1]]
    label = f"{node.op_type}-{signature.since_version}"
    if not ranges:
        return f"{provider} has no {label} kernel at all"
    for _, _, constraints in ranges:
        if all(binding[param] in allowed for param, allowed in constraints.items() if param in binding):
            return ""
    shown = ", ".join(f"{param}={text}" for param, text in sorted(binding.items()))
    return f"{provider} has no {label} kernel for {shown}"


# --- deciding -----------------------------------------------------------------------------------


@dataclass
class _Wiring:
    """Who produces and consumes each value at convertible slots, for the island rule."""

    produced: dict[str, tuple[str, int]]  # value -> (node, output slot)
    consumed: dict[str, list[tuple[str, int]]]  # value -> [(node, input slot)]
    fp16_boundaries: set[str]  # graph inputs/outputs that become float16 themselves (keep_io_types off)
    inputs_of: dict[str, tuple[str, ...]]  # node -> input value per slot
    outputs_of: dict[str, tuple[str, ...]]


def plan_fp16(model: Model, options: Fp16Options | None = None) -> Fp16Plan:
    """Decide per float node: float16, or float32 with the reason. Reads the model, changes nothing."""
    options = options or Fp16Options()
    proto = model.proto
    walked = list(_walk(proto.graph))
    graphs = [graph for _, graph in walked]
    node_names = _unique_node_names(graphs)
    context = _Context(opset_versions(proto), list(proto.opset_import), {(f.domain, f.name) for f in proto.functions})
    types = _value_types(proto, context)
    constants = _Constants(graphs, model.base_dir)
    notes: list[str] = []
    kernel_source = _kernel_source(options, notes)
    decisions: dict[str, NodeDecision] = {}
    for (path, graph), names in zip(walked, node_names):
        for node, name in zip(graph.node, names):
            decision = _decide(node, name, path, types, constants, context, options, kernel_source)
            if decision is not None:
                decisions[name] = decision
    wiring = _wire(graphs, node_names, proto.graph, types, options)
    if options.drop_islands:
        _drop_islands(decisions, wiring, constants, options)
    _range_notes(options, graphs, notes)
    return Fp16Plan(options, decisions, node_names, types, notes, kernel_source, wiring, constants)


def _kernel_source(options: Fp16Options, notes: list[str]) -> str:
    """'registry' when this ORT registered kernels for the provider, else 'schema' (with a note why)."""
    if options.provider is None:
        notes.append("no execution provider given: float16 support judged from the ONNX schemas alone")
        return "schema"
    kernels = _kernels(options.provider)
    if kernels is None:
        notes.append(f"this onnxruntime ({runtime.flavour()}) cannot list its kernels: float16 support judged from the ONNX schemas alone")
        return "schema"
    if not kernels:
        notes.append(
            f"this onnxruntime ({runtime.flavour()}) has no {options.provider} kernels to ask: float16 support judged from "
            f"the ONNX schemas alone; plan on a machine with that EP to check its kernels"
        )
        return "schema"
    return "registry"


def _range_notes(options: Fp16Options, graphs: list[onnx.GraphProto], notes: list[str]) -> None:
    if options.activation_ranges is None:
        notes.append("activations were not measured: only constants were checked against float16's range")
    elif len(graphs) > 1:
        notes.append("activations inside If/Loop/Scan bodies cannot be measured; only their constants were range-checked")


def _decide(
    node: onnx.NodeProto,
    name: str,
    path: str,
    types: dict[str, int],
    constants: _Constants,
    context: _Context,
    options: Fp16Options,
    kernel_source: str,
) -> NodeDecision | None:
    """The node's decision, or None when it has no float32 tensor it could convert (left untouched)."""
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        return None  # a constant follows its consumers when the plan is applied
    ins = [types.get(value) if value else None for value in node.input]
    outs = [types.get(value) if value else None for value in node.output]
    signature = context.signature(node)
    if not _has_float(node, signature, ins, outs):
        return None
    base = NodeDecision(name, node.op_type, path, fp16=False)
    early = _early_reason(node, name, signature, context, options)
    if early:
        return replace(base, kind=early[0], reason=early[1])
    assert signature is not None
    params = _convertible_params(signature, node, ins, outs)
    problem = _type_problem(node, signature, ins, outs, params)
    if problem:
        return replace(base, kind=problem[0], reason=problem[1])
    new_ins = [FLOAT16 if _param_of(signature.input_type(i), signature) in params and t == FLOAT else t for i, t in enumerate(ins)]
    in_slots = tuple(i for i, (old, new) in enumerate(zip(ins, new_ins)) if old != new)
    try:
        new_outs = _infer_outputs(node, signature, new_ins, context)
    except Exception as exc:  # onnx inference rejects float16 inputs for this node
        return replace(base, kind=INFERENCE, reason=f"type inference rejects float16 inputs: {first_line(exc, 120)}")
    out_slots = tuple(i for i, (old, new) in enumerate(zip(outs, new_outs)) if old == FLOAT and new == FLOAT16)
    if kernel_source == "registry":
        assert options.provider is not None
        why = _kernel_problem(node, signature, _binding(signature, new_ins, [FLOAT16 if i in out_slots else t for i, t in enumerate(outs)]), options.provider)
        if why:
            return replace(base, kind=NO_KERNEL, reason=why)
    ranged = _range_reason(node, in_slots, out_slots, constants, options)
    if ranged:
        return replace(base, kind=ranged[0], reason=ranged[1])
    return NodeDecision(name, node.op_type, path, True, inputs=in_slots, outputs=out_slots, note=_fixed_note(node, signature, outs, out_slots))


def _has_float(node: onnx.NodeProto, signature: _Signature | None, ins: list, outs: list) -> bool:
    """Whether the node has a float32 (or untyped float-capable) tensor on a slot whose type can vary."""
    if signature is None:
        return FLOAT in ins or FLOAT in outs
    for values, elems, formal_of in ((node.input, ins, signature.input_type), (node.output, outs, signature.output_type)):
        for slot, (value, elem) in enumerate(zip(values, elems)):
            allowed = signature.allowed.get(formal_of(slot) or "")
            if value and allowed is not None and (elem == FLOAT or (elem is None and FLOAT_TYPE in allowed)):
                return True
    return False


def _early_reason(node: onnx.NodeProto, name: str, signature: _Signature | None, context: _Context, options: Fp16Options) -> tuple[str, str] | None:
    """Reasons that need no type analysis: control flow, functions, the user's blocks, no schema."""
    if any(True for _ in _subgraphs(node)):
        return CONTROL_FLOW, "holds subgraphs: its inputs and outputs keep their types, its bodies are converted inside"
    if (node.domain, node.op_type) in context.functions:
        return FUNCTION, "calls a model-local function: the function body is not converted"
    if node.op_type in options.block_ops:
        return BLOCKED_OP, f"op type {node.op_type} blocked by the user"
    if name in options.block_nodes:
        return BLOCKED_NODE, "node blocked by the user"
    if name in options.keep_fp32_nodes:
        return KEPT, "kept float32 by the caller"
    if signature is None:
        return NO_SCHEMA, f"no schema for {node.domain or 'ai.onnx'}:{node.op_type} in onnx or ORT: its type rules are unknown"
    return None


def _param_of(formal: str | None, signature: _Signature) -> str | None:
    return formal if formal in signature.allowed else None


def _convertible_params(signature: _Signature, node: onnx.NodeProto, ins: list, outs: list) -> set[str]:
    """Type parameters that can switch from float32 to float16: bound to float32 by an input, float16 allowed.

    Output-only parameters (Cast's T2, LayerNormalization's U) are left to type inference: an attribute
    fixes them.
    """
    seen: dict[str, set[int | None]] = {}
    with_input: set[str] = set()
    for slot, elem in enumerate(ins):
        param = _param_of(signature.input_type(slot), signature)
        if param and node.input[slot]:
            seen.setdefault(param, set()).add(elem)
            with_input.add(param)
    for slot, elem in enumerate(outs):
        param = _param_of(signature.output_type(slot), signature)
        if param and node.output[slot] and elem is not None:
            seen.setdefault(param, set()).add(elem)
    return {p for p in with_input if seen[p] == {FLOAT} and FLOAT16_TYPE in signature.allowed[p]}


def _type_problem(node: onnx.NodeProto, signature: _Signature, ins: list, outs: list, params: set[str]) -> tuple[str, str] | None:
    """Why no slot can switch to float16 (unknown types, sequences, fixed types), or None."""
    for values, elems, formal_of in ((node.input, ins, signature.input_type), (node.output, outs, signature.output_type)):
        for slot, (value, elem) in enumerate(zip(values, elems)):
            allowed = signature.allowed.get(formal_of(slot) or "", frozenset())
            if value and elem is None and any(not t.startswith("tensor(") and "float" in t for t in allowed):
                return NOT_TENSOR, f"'{value}' is a sequence/optional/map: those keep their types"
            if value and elem is None and FLOAT_TYPE in allowed:
                return UNKNOWN_TYPE, f"the type of '{value}' could not be inferred"
    if params:
        return None
    float_outs = [value for value, elem in zip(node.output, outs) if elem == FLOAT]
    if float_outs and FLOAT not in ins:
        return FIXED_TYPE, f"output '{float_outs[0]}' has its type fixed by {_type_attribute(node, signature)}"
    blocked = next((value for value, elem in zip(node.input, ins) if elem == FLOAT), float_outs[0] if float_outs else "?")
    return NO_FLOAT16_TYPE, f"its schema allows no float16 for '{blocked}'"


def _type_attribute(node: onnx.NodeProto, signature: _Signature | None = None) -> str:
    """Which attribute fixes an output type, for the reason: one set on the node, else one its schema defaults."""
    present = [a.name for a in node.attribute if a.name in TYPE_ATTRIBUTES]
    if present:
        return f"attribute '{present[0]}'"
    defaults = [name for name in getattr(signature and signature.schema, "attributes", {}) if name in TYPE_ATTRIBUTES]
    return f"attribute '{defaults[0]}' (default)" if defaults else "its schema"


def _binding(signature: _Signature, ins: list, outs: list) -> dict[str, str]:
    """Type parameter -> type string, as a kernel's type constraints name them."""
    binding: dict[str, str] = {}
    for slots, formal_of in ((ins, signature.input_type), (outs, signature.output_type)):
        for slot, elem in enumerate(slots):
            param = _param_of(formal_of(slot), signature)
            if param and elem:
                binding.setdefault(param, _TYPE_STRINGS[elem])
    return binding


def _range_reason(node: onnx.NodeProto, in_slots: tuple[int, ...], out_slots: tuple[int, ...], constants: _Constants, options: Fp16Options) -> tuple[str, str] | None:
    """A constant or measured activation this node would hold in float16 beyond `max_finite`, or None."""
    for slot in in_slots:
        value = node.input[slot]
        if value in constants and constants.peak(value) > options.max_finite:
            return CONSTANT_RANGE, f"constant '{value}' holds {constants.peak(value):.4g}, beyond float16's range (kept, not clamped)"
    ranges = options.activation_ranges or {}
    for value in [node.input[s] for s in in_slots] + [node.output[s] for s in out_slots]:
        if value in ranges and not ranges[value] <= options.max_finite:  # NaN counts as out of range
            return ACTIVATION_RANGE, f"activation '{value}' reaches {ranges[value]:.4g} on the measured data, beyond float16's range"
    for attribute in node.attribute:
        if attribute.HasField("t") and attribute.t.data_type == FLOAT and _finite_peak(numpy_helper.to_array(attribute.t)) > options.max_finite:
            return CONSTANT_RANGE, f"attribute '{attribute.name}' holds a value beyond float16's range"
    return None


def _finite_peak(array: np.ndarray) -> float:
    finite = array[np.isfinite(array)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def _fixed_note(node: onnx.NodeProto, signature: _Signature, outs: list, out_slots: tuple[int, ...]) -> str:
    kept = [node.output[i] for i, elem in enumerate(outs) if elem == FLOAT and i not in out_slots]
    return f"output(s) {', '.join(kept)} stay float32 ({_type_attribute(node, signature)})" if kept else ""


def _wire(graphs: list[onnx.GraphProto], node_names: list[list[str]], main: onnx.GraphProto, types: dict[str, int], options: Fp16Options) -> _Wiring:
    produced: dict[str, tuple[str, int]] = {}
    consumed: dict[str, list[tuple[str, int]]] = {}
    inputs_of, outputs_of = {}, {}
    for graph, names in zip(graphs, node_names):
        for node, name in zip(graph.node, names):
            inputs_of[name], outputs_of[name] = tuple(node.input), tuple(node.output)
            for slot, value in enumerate(node.output):
                if value:
                    produced[value] = (name, slot)
            for slot, value in enumerate(node.input):
                if value:
                    consumed.setdefault(value, []).append((name, slot))
    boundaries = set()
    if not options.keep_io_types:
        boundaries = {v.name for v in (*main.input, *main.output) if types.get(v.name) == FLOAT}
    return _Wiring(produced, consumed, boundaries, inputs_of, outputs_of)


def _drop_islands(decisions: dict[str, NodeDecision], wiring: _Wiring, constants: _Constants, options: Fp16Options) -> None:
    """Make float32 every float16 node without a float16 neighbour or weight: its two Casts would cost more than it gains."""
    changed = True
    while changed:
        changed = False
        for name, decision in decisions.items():
            if decision.fp16 and not _has_fp16_neighbour(decision, decisions, wiring, constants):
                decisions[name] = _as_fp32(decision, ISOLATED, "isolated: no float16 neighbour or weight, its boundary Casts would cost more than float16 saves")
                changed = True


def _has_fp16_neighbour(decision: NodeDecision, decisions: dict[str, NodeDecision], wiring: _Wiring, constants: _Constants) -> bool:
    for slot in decision.inputs:
        value = wiring.inputs_of[decision.name][slot]
        if value in wiring.fp16_boundaries or constants.elements(value) >= WEIGHT_ELEMENTS:
            return True
        producer = wiring.produced.get(value)
        if producer and producer[0] in decisions and decisions[producer[0]].fp16 and producer[1] in decisions[producer[0]].outputs:
            return True
    for slot in decision.outputs:
        value = wiring.outputs_of[decision.name][slot]
        if value in wiring.fp16_boundaries:
            return True
        for consumer, consumer_slot in wiring.consumed.get(value, ()):
            other = decisions.get(consumer)
            if other is not None and other.fp16 and consumer_slot in other.inputs:
                return True
    return False


# --- applying a plan ----------------------------------------------------------------------------


@dataclass
class _Applied:
    proto: onnx.ModelProto
    casts: int = 0  # Cast nodes (convert) or round trips (simulate) added
    constants: int = 0  # initializers/Constants stored (or rounded) as float16
    copies: int = 0  # float16 copies of constants that float32 nodes also read


class _Surgery:
    """Applies a plan to a copy of the model: real float16 (convert) or float16 rounding in float32 (simulate)."""

    def __init__(self, model: Model, plan: Fp16Plan, simulate: bool) -> None:
        self.plan, self.simulate = plan, simulate
        self.base_dir = model.base_dir
        self.proto = onnx.ModelProto()
        self.proto.CopyFrom(model.proto)
        self.graphs = [graph for _, graph in _walk(self.proto.graph)]
        if [len(g.node) for g in self.graphs] != [len(n) for n in plan.node_names]:
            raise UserError(f"{model.name}: this fp16 plan was made for another model (its graphs differ)")
        for graph, names in zip(self.graphs, plan.node_names):
            for node, name in zip(graph.node, names):
                node.name = name
        self._index()
        self.inserts: dict[int, dict[int, list[onnx.NodeProto]]] = {}
        self.available: dict[tuple[str, bool], str] = {}
        self.result = _Applied(self.proto)

    def _index(self) -> None:
        self.defined: dict[str, tuple[int, int]] = {}  # value -> (graph, producer index or -1)
        self.initializers: dict[str, tuple[int, TensorProto]] = {}
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        self.graph_outputs: dict[str, list[int]] = {}
        self.infos: dict[str, list[onnx.ValueInfoProto]] = {}
        self.taken: set[str] = set()
        for gi, graph in enumerate(self.graphs):
            for value in graph.input:
                self.defined.setdefault(value.name, (gi, -1))
            for tensor in graph.initializer:
                self.defined.setdefault(tensor.name, (gi, -1))
                self.initializers[tensor.name] = (gi, tensor)
            for info in (*graph.input, *graph.output, *graph.value_info):
                self.infos.setdefault(info.name, []).append(info)
                self.taken.add(info.name)
            for value in graph.output:
                self.graph_outputs.setdefault(value.name, []).append(gi)
            for ni, node in enumerate(graph.node):
                self.taken.update((node.name, *node.input, *node.output))
                for value in node.output:
                    self.defined[value] = (gi, ni)
                for slot, value in enumerate(node.input):
                    if value:
                        self.consumers.setdefault(value, []).append((node, slot))
                if node.op_type == "Constant" and node.output and node.output[0] in self.plan.constants:
                    self.constant_nodes[node.output[0]] = node
        self.taken.update(self.initializers)
        self.graph_inputs = {value.name for graph in self.graphs for value in graph.input}

    # -- precision bookkeeping

    def wants_fp16(self, node: onnx.NodeProto, slot: int) -> bool:
        decision = self.plan.decisions.get(node.name)
        return decision is not None and decision.fp16 and slot in decision.inputs

    def run(self) -> _Applied:
        produced = {node.output[s] for graph in self.graphs for node in graph.node
                    for s in self._fp16_outputs(node) if node.output[s]}
        for value in sorted(produced, key=self._order):
            self._fp16_value(value)
        self._boundary_inputs()
        self._constants_in_place()
        for value, uses in self.consumers.items():
            for node, slot in uses:
                node.input[slot] = self._name_at(value, self.wants_fp16(node, slot))
        self._insert()
        return self.result

    def _name_at(self, value: str, fp16: bool) -> str:
        """The name to read `value` by at this precision; creates a Cast/copy/round trip when needed."""
        if (value, fp16) in self.available:
            return self.available[(value, fp16)]
        if not fp16 and (value, True) not in self.available:
            return value  # never made float16: its own name has its original type
        return self._variant(value, fp16)

    def _fp16_outputs(self, node: onnx.NodeProto) -> tuple[int, ...]:
        decision = self.plan.decisions.get(node.name)
        return decision.outputs if decision is not None and decision.fp16 else ()

    def _order(self, value: str) -> tuple[int, int]:
        return self.defined.get(value, (0, -1))

    def _keeps_type(self, value: str) -> bool:
        """Whether a graph output named `value` must keep its dtype (subgraph outputs always do)."""
        graphs = self.graph_outputs.get(value, [])
        return any(gi != 0 or self.plan.options.keep_io_types for gi in graphs)

    def _fp16_value(self, value: str) -> None:
        """A float16 node's output: float16 under its name, or renamed when the name must stay float32."""
        gi, ni = self.defined[value]
        producer = self.graphs[gi].node[ni]
        if self.simulate or self._keeps_type(value):
            raw = self._fresh(f"{value}__fp16")
            producer.output[list(producer.output).index(value)] = raw
            if self.simulate:
                self._round_trip(raw, value, gi, ni)
                self.available[(value, True)] = self.available[(value, False)] = value
            else:
                self._add(gi, ni, self._cast(raw, value, FLOAT))
                self.available[(value, True)], self.available[(value, False)] = raw, value
            return
        self.available[(value, True)] = value
        self._retype(value, FLOAT16)

    def _boundary_inputs(self) -> None:
        """Without keep_io_types, main-graph float inputs read by float16 nodes become float16."""
        if self.plan.options.keep_io_types:
            return
        for value in self.graphs[0].input:
            if self.plan.types.get(value.name) != FLOAT or value.name in self.initializers:
                continue
            if not any(self.wants_fp16(node, slot) for node, slot in self.consumers.get(value.name, [])):
                continue
            if self.simulate:
                rounded = self._fresh(f"{value.name}__fp16")
                self._round_trip(value.name, rounded, 0, -1)
                self.available[(value.name, True)] = self.available[(value.name, False)] = rounded
            else:
                self._retype(value.name, FLOAT16)
                self.available[(value.name, True)] = value.name

    def _constants_in_place(self) -> None:
        """Constants read only by float16 slots are stored as float16 (rounded in place when simulating)."""
        for value in list(self.initializers) + list(self.constant_nodes):
            uses = self.consumers.get(value, [])
            if self.plan.types.get(value) != FLOAT or not uses or value in self.graph_outputs or value in self.graph_inputs:
                continue
            if not all(self.wants_fp16(node, slot) for node, slot in uses):
                continue
            tensor = self._tensor(value)
            tensor.CopyFrom(self._converted(value, tensor.name))
            self.result.constants += 1
            self.available[(value, True)] = value
            if self.simulate:
                self.available[(value, False)] = value
            else:
                self._retype(value, FLOAT16)

    def _tensor(self, value: str) -> TensorProto:
        if value in self.initializers:
            return self.initializers[value][1]
        return next(a.t for a in self.constant_nodes[value].attribute if a.name == "value")

    def _converted(self, value: str, name: str) -> TensorProto:
        """The constant as float16 (convert) or rounded through float16 (simulate), cached in the plan."""
        half = self.plan.constants.float16(value)
        return numpy_helper.from_array(half.astype(np.float32) if self.simulate else half, name)

    def _variant(self, value: str, fp16: bool) -> str:
        """A name holding `value` at the other precision: a constant copy, a Cast, or a round trip."""
        gi, ni = self.defined.get(value, (0, -1))
        if fp16 and value in self.initializers and value not in self.graph_inputs:
            name = self._fresh(f"{value}__fp16")
            self.graphs[self.initializers[value][0]].initializer.append(self._converted(value, name))
            self.result.copies += 1
        elif self.simulate:
            name = self._fresh(f"{value}__fp16")
            self._round_trip(value, name, gi, ni)
        else:
            name = self._fresh(f"{value}__fp16" if fp16 else f"{value}__fp32")
            self._add(gi, ni, self._cast(value, name, FLOAT16 if fp16 else FLOAT))
        self.available[(value, fp16)] = name
        if self.simulate:
            self.available[(value, not fp16)] = self.available.get((value, not fp16), value)
        return name

    # -- emitting

    def _cast(self, source: str, target: str, to: int) -> onnx.NodeProto:
        self.result.casts += 1
        return helper.make_node("Cast", [source], [target], name=self._fresh(f"{target}__cast"), to=to)

    def _round_trip(self, source: str, target: str, gi: int, ni: int) -> None:
        """target = float32(float16(source)): the rounding a float16 tensor would get, in a float32 graph."""
        middle = self._fresh(f"{target}__half")
        self._add(gi, ni, helper.make_node("Cast", [source], [middle], name=self._fresh(f"{middle}__cast"), to=FLOAT16))
        self._add(gi, ni, helper.make_node("Cast", [middle], [target], name=self._fresh(f"{target}__cast"), to=FLOAT))
        self.result.casts += 1

    def _add(self, gi: int, after: int, node: onnx.NodeProto) -> None:
        self.inserts.setdefault(gi, {}).setdefault(after, []).append(node)

    def _insert(self) -> None:
        """Put the new nodes in place, one rebuild per graph, subgraphs first.

        Graphs are in depth-first order, so going backwards edits every subgraph before the graph that
        holds it copies it along with its nodes.
        """
        for gi in sorted(self.inserts, reverse=True):
            graph, by_position = self.graphs[gi], self.inserts[gi]
            nodes = list(by_position.get(-1, []))
            for index, node in enumerate(graph.node):
                nodes.append(node)
                nodes.extend(by_position.get(index, []))
            del graph.node[:]
            graph.node.extend(nodes)

    def _retype(self, value: str, elem: int) -> None:
        for info in self.infos.get(value, []):
            if info.type.HasField("tensor_type"):
                info.type.tensor_type.elem_type = elem

    def _fresh(self, base: str) -> str:
        name, index = base, 0
        while name in self.taken:
            index += 1
            name = f"{base}_{index}"
        self.taken.add(name)
        return name


# --- public entry points --------------------------------------------------------------------------

SIMULATION_NOTE = (
    "simulated float16: every tensor a float16 model would hold (weights, activations, boundary values) is rounded "
    "through float16 inside a float32 graph; rounding of storage is captured, float16 arithmetic inside kernels "
    "(accumulation, intermediate overflow) is not"
)


def _as_plan(model: Model, options: Fp16Options | Fp16Plan | None) -> Fp16Plan:
    return options if isinstance(options, Fp16Plan) else plan_fp16(model, options)


def convert_fp16(model: Model, options: Fp16Options | Fp16Plan | None = None, *, feeds: FeedSet | None = None) -> TransformResult:
    """The model with the plan's float16 nodes in float16, checked: onnx.checker, same I/O signature, loads in ORT.

    With `feeds`, the result also runs once (first sample) on the plan's EP when this ORT has it, else on
    CPU: a float16 node ORT fails to run (a registered kernel that refuses an attribute) is kept float32
    and the conversion redone. Raises UserError with the reason when the result fails a check.
    """
    plan = _as_plan(model, options)
    for _ in range(MAX_RUNTIME_REPAIRS + 1):
        applied = _Surgery(model, plan, simulate=False).run()
        _check_converted(model, applied.proto, plan.options)
        failure = _runtime_failure(model, applied.proto, plan, feeds) if feeds is not None and len(feeds) else None
        if failure is None:
            return _result(model, plan, applied, simulate=False)
        node, message = failure
        plan = plan.with_fp32([node], f"ORT failed to run it in float16: {message}", kind=RUNTIME)
    raise UserError(f"{model.name}: float16 conversion still fails to run after keeping {MAX_RUNTIME_REPAIRS} nodes float32",
                    hint="--block-op the op types that fail")


def simulate_fp16(model: Model, options: Fp16Options | Fp16Plan | None = None) -> TransformResult:
    """A float32 model that computes with the values the plan's float16 model would hold, for judging accuracy on a CPU.

    Each float16 node's float16 outputs and inputs are rounded through float16 (Cast to float16 and back;
    constants rounded in numpy), so the rounding of every stored tensor is what real float16 gives. Not
    captured: float16 arithmetic inside kernels (a real float16 MatMul/reduction may accumulate in float16,
    or in float32 on most GPUs) and overflow of intermediates inside a kernel, and EP-specific fusions.
    Run it with ORT's CPU EP at any optimisation level (ORT keeps the Cast pairs).
    """
    plan = _as_plan(model, options)
    applied = _Surgery(model, plan, simulate=True).run()
    return _result(model, plan, applied, simulate=True)


def measure_activation_ranges(model: Model, feeds: FeedSet | Iterable[dict], *, session: Any = None) -> dict[str, float]:
    """Max |x| of every float32 activation of the main graph over the feeds (for `Fp16Options.activation_ranges`).

    Each sample runs once through the float32 model with a ReduceMin/ReduceMax pair per tensor (ortforge's
    streaming calibrator), so memory is one sample's run whatever the number of samples.
    """
    from ortforge.transforms.calibrate import (
        CalibrationOptions,
        calibrate,
        tensor_types,
    )

    proto = model.proto
    context = _Context(opset_versions(proto), list(proto.opset_import), {(f.domain, f.name) for f in proto.functions})
    types = _value_types(proto, context)
    known = tensor_types(proto)  # what the calibrator can see; contrib-op outputs it cannot type are skipped
    initializers = {tensor.name for tensor in proto.graph.initializer}
    candidates = [value.name for value in proto.graph.input] + [
        value for node in proto.graph.node if node.op_type != "Constant" for value in node.output
    ]
    names = [n for n in dict.fromkeys(candidates) if n and n not in initializers and types.get(n) == FLOAT and known.get(n) == FLOAT]
    if not names:
        return {}
    ranges = calibrate(model, feeds, CalibrationOptions(method="minmax"), tensors=names, session=session).ranges
    return {name: max(abs(low), abs(high)) for name, (low, high) in ranges.items()}


# --- checks and results -------------------------------------------------------------------------


def _signature_of(graph_values: Iterable[onnx.ValueInfoProto]) -> list[tuple[str, int | None, tuple]]:
    def dims(info: onnx.ValueInfoProto) -> tuple:
        shape = info.type.tensor_type.shape
        return tuple(d.dim_value or d.dim_param for d in shape.dim) if info.type.tensor_type.HasField("shape") else ()

    return [(info.name, _elem(info.type), dims(info)) for info in graph_values]


def _check_converted(model: Model, proto: onnx.ModelProto, options: Fp16Options) -> None:
    """onnx.checker, the I/O signature (names always; dtypes and shapes with keep_io_types), an ORT CPU session."""
    what = f"{model.name}: float16 conversion"
    problem = _checker_problem(proto)
    # A complaint the original model earns too (a missing output shape, say) is not the conversion's doing.
    if problem and _checker_problem(model.proto) != problem:
        raise UserError(f"{what} produced a model onnx.checker rejects: {problem}", hint="--block-op/--block-node the op it names")
    for kind in ("input", "output"):
        before = _signature_of(getattr(model.proto.graph, kind))
        after = _signature_of(getattr(proto.graph, kind))
        if [b[0] for b in before] != [a[0] for a in after] or (options.keep_io_types and before != after):
            raise UserError(f"{what} changed the graph {kind}s: {after} instead of {before}")
    try:
        _session(from_proto(proto, base_dir=model.base_dir), ["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types per failure kind
        raise UserError(f"{what} produced a model ORT cannot load: {first_line(exc, 300)}", hint="--block-op/--block-node the op it names") from None


def _runtime_failure(model: Model, proto: onnx.ModelProto, plan: Fp16Plan, feeds: FeedSet) -> tuple[str, str] | None:
    """(node, ORT's message) when a float16 node of the converted model fails on the first sample, else None."""
    provider = plan.options.provider
    providers = [provider] if provider and provider in runtime.available_providers() else []
    providers += [] if "CPUExecutionProvider" in providers else ["CPUExecutionProvider"]
    try:
        _session(from_proto(proto, base_dir=model.base_dir), providers).run(None, feeds.samples[0])
    except Exception as exc:  # ORT raises its own exception types per failure kind
        message = str(exc)
        match = re.search(r"running (\S+) node\. Name:'([^']*)'", message)
        decision = plan.decisions.get(match.group(2)) if match else None
        if decision is None or not decision.fp16 or not _runs(model, providers, feeds.samples[0]):
            raise UserError(f"{model.name}: the float16 model fails to run: {first_line(exc, 300)}") from None
        detail = message.split("Status Message:", 1)[-1].strip().splitlines()
        return decision.name, (detail[0] if detail else "")[:160]
    return None


def _session(model: Model, providers: list[str]) -> Any:
    source, entries = model.ort_source()
    session_options = runtime.quiet_session_options()
    for key, value in entries.items():
        session_options.add_session_config_entry(key, value)
    return runtime.ort().InferenceSession(source, session_options, providers=providers)


def _runs(model: Model, providers: list[str], feed: dict) -> bool:
    """Whether the original model runs on the feed (a feed that breaks it too says nothing about float16)."""
    try:
        _session(model, providers).run(None, feed)
    except Exception:  # ORT raises its own exception types per failure kind
        return False
    return True


def _checker_problem(proto: onnx.ModelProto) -> str:
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        return first_line(exc)
    return ""


def _result(model: Model, plan: Fp16Plan, applied: _Applied, simulate: bool) -> TransformResult:
    summary = plan.summary()
    fp16, fp32 = summary["fp16_nodes"], summary["fp32_nodes"]
    reasons = ", ".join(f"{count} {kind}" for kind, count in Counter(summary["fp32_reasons"]).most_common())
    verb = "are simulated in" if simulate else "compute in"
    changes = [f"{fp16} of {fp16 + fp32} float nodes {verb} float16" + (f"; {fp32} stay float32 ({reasons})" if fp32 else "")]
    if applied.casts:
        changes.append(f"{applied.casts} " + ("float16 round trips (Cast pairs) inserted" if simulate else "Cast nodes at float16/float32 boundaries"))
    if applied.constants or applied.copies:
        stored = "rounded through float16" if simulate else "stored as float16"
        changes.append(f"{applied.constants + applied.copies} constants {stored}" + (f" ({applied.copies} as copies beside float32 readers)" if applied.copies else ""))
    notes = list(plan.notes) + _runtime_notes(plan, fp16, fp16 + fp32)
    if simulate:
        notes.insert(0, SIMULATION_NOTE)
    details = {**summary, "casts_inserted": applied.casts, "constants_converted": applied.constants, "constant_copies": applied.copies,
               "simulated": simulate}
    return TransformResult(applied.proto, changed=bool(fp16), changes=changes, notes=notes, details=details)


def _runtime_notes(plan: Fp16Plan, fp16: int, total: int) -> list[str]:
    """What the numbers mean on this machine: CPU float16 gains little, a missing EP cannot be timed."""
    provider = plan.options.provider
    if provider == "CPUExecutionProvider":
        return [(f"ORT's CPU EP has float16 kernels for few ops ({fp16} of {total} float nodes here): a float16 model on CPU "
                 f"mostly shrinks the file; it is not faster")]
    if provider is not None and provider not in runtime.available_providers():
        return [(f"{provider} is not available in this onnxruntime: judge accuracy with simulate_fp16; latency measured on this "
                 f"machine's CPU (which inserts Casts around float16 ops it lacks) does not represent {provider}")]
    return []
