"""Multiply-accumulates (MACs) of the heavy ops, from shapes inferred for concrete input shapes.

Shapes come from ONNX shape inference; where it leaves a heavy node's shapes open, an onnxruntime run
with the missing tensors exposed as graph outputs supplies real ones (a subgraph is run lifted into a
model of its own). What neither resolves is listed as unknown rather than guessed.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from ortforge.core import runtime
from ortforge.core.model import (
    Model,
    iter_graphs,
    iter_nodes,
    iter_tensors,
    opset_versions,
)
from ortforge.data import ShapeOptions, generate_feeds, input_specs

TOP_NODES = 10
# Tensors above this many elements lose their data in the copy given to shape inference: only dims
# matter there, and a copy over 2 GB could not be handed to the C++ inference engine at all.
STRIP_ELEMENTS = 1024
# Integer tensors up to this size are read as values (Loop trip counts).
SMALL_VALUE_ELEMENTS = 64
ERROR_CHARS = 200
# Each fallback run builds a session; a model with many subgraphs must not make inspect slow.
MAX_RUNS = 16

Dims = tuple[int, ...]
PartialDims = tuple[int | None, ...]
DimsOf = Callable[[str], Dims]
Rule = Callable[[onnx.NodeProto, DimsOf], int]  # MACs of one execution of a node

MS = "com.microsoft"
# Ops with real arithmetic that have no counting rule here; reported so a total is not mistaken for complete.
NOT_COUNTED = {
    "Einsum", "QAttention", "PackedAttention", "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention",
    "DecoderMaskedSelfAttention", "LongformerAttention", "SparseAttention", "PagedAttention", "DecoderAttention",
    "QOrderedAttention", "QOrderedMatMul", "QOrderedLongformerAttention",
}


@dataclass(frozen=True)
class NodeMacs:
    """One counted node: MACs per model run, repetitions (Loop/Scan iterations) included."""

    name: str
    op_type: str
    macs: int
    where: str = ""  # "" for the main graph, else the subgraph path, e.g. "If 'If_3' then_branch"
    repeat: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UnknownMacs:
    """A heavy node whose MACs could not be counted, and why."""

    name: str
    op_type: str
    reason: str
    where: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MacReport:
    """MACs of the heavy ops for one set of input shapes; FLOPs counted as 2 per MAC."""

    total_macs: int = 0
    by_op_type: dict[str, int] = field(default_factory=dict)
    top_nodes: list[NodeMacs] = field(default_factory=list)
    unknown: list[UnknownMacs] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counted_nodes: int = 0
    shapes_from_ort: int = 0  # tensors whose shapes came from the onnxruntime fallback run

    @property
    def flops(self) -> int:
        return 2 * self.total_macs

    def to_dict(self) -> dict:
        return {
            "total_macs": self.total_macs,
            "flops": self.flops,
            "by_op_type": dict(self.by_op_type),
            "counted_nodes": self.counted_nodes,
            "top_nodes": [node.to_dict() for node in self.top_nodes],
            "unknown": [node.to_dict() for node in self.unknown],
            "shapes_from_ort": self.shapes_from_ort,
            "notes": list(self.notes),
        }


def op_key(node: onnx.NodeProto) -> str:
    """How an op is named in histograms: bare for ONNX ops, 'domain:Op' for others."""
    domain = node.domain or "ai.onnx"
    return node.op_type if domain == "ai.onnx" else f"{domain}:{node.op_type}"


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in a node's attributes (If branches, Loop/Scan bodies)."""
    found = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            found.append(attribute.g)
        found.extend(attribute.graphs)
    return found


def count_macs(
    model: Model,
    shapes: dict[str, tuple[int, ...]],
    *,
    feeds: dict[str, np.ndarray] | None = None,
    top: int = TOP_NODES,
) -> MacReport:
    """MACs of Conv/MatMul/Gemm/attention/recurrent nodes (subgraphs included) for the given input shapes.

    `feeds` are used for the onnxruntime fallback run; generated inputs of `shapes` otherwise.
    """
    notes: list[str] = []
    inferred = _infer(_inference_copy(model, shapes), notes)
    context = _Context(
        shapes=_collect_shapes(inferred),
        values=_small_int_values(model.proto),
        opset=opset_versions(model.proto).get("ai.onnx", 0),
    )
    # Count on the original structure (same names as the inferred copy), so that a fallback run
    # can lift a subgraph together with its real weights.
    tally = _count_graph(model.proto.graph, context, "", 1)
    resolver = _Resolver(model, shapes, feeds, context.opset)
    ort_shapes: dict[str, Dims] = {}
    if any(entry.missing for entry in tally.unknown) or tally.wanted_values:
        ort_shapes = resolver.resolve(tally, context)
        tally = _count_graph(model.proto.graph, context, "", 1)
        notes.extend(resolver.summary(len(ort_shapes)))
    notes.extend(tally.notes)
    if tally.not_counted:
        listed = ", ".join(f"{count} {op}" for op, count in sorted(tally.not_counted.items()))
        notes.append(f"not counted (no rule for these ops): {listed}")
    if model.proto.functions:
        notes.append(f"{len(model.proto.functions)} model-local function(s): nodes inside them are not counted")
    return MacReport(
        total_macs=tally.total,
        by_op_type=dict(tally.by_op.most_common()),
        top_nodes=sorted(tally.nodes, key=lambda node: node.macs, reverse=True)[:top],
        unknown=[resolver.explain(entry) for entry in tally.unknown],
        notes=notes,
        counted_nodes=len(tally.nodes),
        shapes_from_ort=len(ort_shapes),
    )


# ---------------------------------------------------------------------------------------------------
# Shape inference on a data-free copy


def inferred_shapes(model: Model, shapes: dict[str, tuple[int, ...]]) -> dict[str, PartialDims]:
    """Every value's dims (None where unknown) for these input shapes, by ONNX shape inference on a data-free copy."""
    return _collect_shapes(_infer(_inference_copy(model, shapes), []))


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
        if elements <= STRIP_ELEMENTS and _is_integer(tensor.data_type) and model.base_dir is not None:
            with contextlib.suppress(OSError):
                external_data_helper.load_external_data_for_tensor(tensor, str(model.base_dir))
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    elif elements > STRIP_ELEMENTS:
        for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            tensor.ClearField(name)


def _is_integer(data_type: int) -> bool:
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
            error = _first_line(exc)
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
    shapes.update((name, tuple(tensor.dims)) for name, tensor in _constant_tensors(proto).items())
    return shapes


def _constant_tensors(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node tensors of every graph, by the name they are read under."""
    tensors: dict[str, onnx.TensorProto] = {}
    for graph in iter_graphs(proto.graph):
        for tensor in graph.initializer:
            tensors[tensor.name] = tensor
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
                tensors[node.output[0]] = node.attribute[0].t
    return tensors


def _small_int_values(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Small integer constants held inline (initializers, Constant nodes): Loop trip counts among them."""
    values: dict[str, np.ndarray] = {}
    for name, tensor in _constant_tensors(proto).items():
        inline = tensor.data_location != onnx.TensorProto.EXTERNAL
        if inline and _is_integer(tensor.data_type) and math.prod(tensor.dims) <= SMALL_VALUE_ELEMENTS:
            values[name] = numpy_helper.to_array(tensor)
    for node in iter_nodes(proto):
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name in ("value_int", "value_ints"):
            values[node.output[0]] = np.array(helper.get_attribute_value(node.attribute[0]), dtype=np.int64)
    return values


# ---------------------------------------------------------------------------------------------------
# Counting


class _Missing(Exception):
    """A needed tensor's shape is not (fully) known."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Bad(Exception):
    """The node's shapes do not fit the op (malformed model, or a layout this counter does not know)."""


@dataclass
class _Context:
    """What counting knows about tensors: their shapes, and the values of small integer ones."""

    shapes: dict[str, PartialDims]
    values: dict[str, np.ndarray]
    opset: int = 0  # of the default domain: Scan changed meaning at 9

    def dims(self, name: str) -> Dims:
        if not name:
            raise _Bad("a required input is absent")
        if not self.known(name):
            raise _Missing(name)
        return self.shapes[name]  # type: ignore[return-value]

    def known(self, name: str) -> bool:
        shape = self.shapes.get(name)
        return shape is not None and all(d is not None for d in shape)

    def int_value(self, name: str) -> int | None:
        value = self.values.get(name)
        if value is None or value.size != 1:
            return None
        return int(value.reshape(-1)[0])


@dataclass
class _Pending:
    """An uncounted heavy node: the tensor that stopped it and every open tensor it touches."""

    node: onnx.NodeProto
    graph: onnx.GraphProto
    where: str
    missing: str | None  # None: the node is malformed for its rule (see reason), a run cannot help
    reason: str
    open_names: list[str]


@dataclass
class _Tally:
    """What counting a graph (its subgraphs included) found."""

    total: int = 0
    by_op: Counter = field(default_factory=Counter)
    nodes: list[NodeMacs] = field(default_factory=list)
    unknown: list[_Pending] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_counted: Counter = field(default_factory=Counter)  # op key -> nodes of ops without a rule
    # (graph, tensor): Loop trip counts that a fallback run could supply
    wanted_values: list[tuple[onnx.GraphProto, str]] = field(default_factory=list)

    def absorb(self, other: _Tally) -> None:
        self.total += other.total
        self.by_op.update(other.by_op)
        self.nodes.extend(other.nodes)
        self.unknown.extend(other.unknown)
        self.notes.extend(other.notes)
        self.not_counted.update(other.not_counted)
        self.wanted_values.extend(other.wanted_values)

    @property
    def has_heavy(self) -> bool:
        return bool(self.nodes or self.unknown)

    def describe(self) -> str:
        text = f"{self.total:,} MACs"
        return text + (f" + {len(self.unknown)} uncounted node(s)" if self.unknown else "")


def _is_onnx(node: onnx.NodeProto) -> bool:
    """Whether the node is in the default domain, which may be written out."""
    return node.domain in ("", "ai.onnx")


def _count_graph(graph: onnx.GraphProto, context: _Context, where: str, repeat: int) -> _Tally:
    tally = _Tally()
    for node in graph.node:
        rule = COUNTERS.get(("" if _is_onnx(node) else node.domain, node.op_type))
        if rule is not None:
            try:
                macs = rule(node, context.dims) * repeat
            except _Missing as exc:
                open_names = [n for n in [*node.input, *node.output] if n and not context.known(n)]
                tally.unknown.append(_Pending(node, graph, where, exc.name, "", open_names))
            except _Bad as exc:
                tally.unknown.append(_Pending(node, graph, where, None, str(exc), []))
            else:
                tally.total += macs
                tally.by_op[op_key(node)] += macs
                tally.nodes.append(NodeMacs(node.name or node.op_type, node.op_type, macs, where, repeat))
        elif node.op_type in NOT_COUNTED:
            tally.not_counted[op_key(node)] += 1
        if subgraphs(node):
            tally.absorb(_count_subgraphs(node, graph, context, where, repeat))
    return tally


def _count_subgraphs(node: onnx.NodeProto, parent: onnx.GraphProto, context: _Context, where: str, repeat: int) -> _Tally:
    """The subgraphs' share: the larger If branch, Loop/Scan bodies times their iterations."""
    holder = f"{node.op_type} '{node.name or node.op_type}'"
    inner = f"{where} > {holder}" if where else holder
    graphs = {a.name: a.g for a in node.attribute if a.HasField("g")}
    if _is_onnx(node) and node.op_type == "If" and {"then_branch", "else_branch"} <= graphs.keys():
        return _count_if(holder, graphs["then_branch"], graphs["else_branch"], context, inner, repeat)
    if _is_onnx(node) and node.op_type in ("Loop", "Scan") and "body" in graphs:
        return _count_body(node, holder, graphs["body"], parent, context, inner, repeat)
    result = _Tally()
    for attribute in node.attribute:
        held = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        for index, subgraph in enumerate(held):
            name = attribute.name if attribute.HasField("g") else f"{attribute.name}[{index}]"
            body = _count_graph(subgraph, context, f"{inner} {name}", repeat)
            result.absorb(body)
            if body.has_heavy:
                result.notes.append(f"{holder}: subgraph {name} counted once (how often it runs is unknown)")
    return result


def _count_if(
    holder: str, then_graph: onnx.GraphProto, else_graph: onnx.GraphProto, context: _Context, inner: str, repeat: int
) -> _Tally:
    """Both branches listed; one run takes one branch, so the total takes the costlier."""
    then_branch = _count_graph(then_graph, context, f"{inner} then_branch", repeat)
    else_branch = _count_graph(else_graph, context, f"{inner} else_branch", repeat)
    chosen, larger = ("else_branch", else_branch) if else_branch.total > then_branch.total else ("then_branch", then_branch)
    result = _Tally()
    result.absorb(then_branch)
    result.absorb(else_branch)
    result.total = larger.total
    result.by_op = Counter(larger.by_op)
    if then_branch.has_heavy or else_branch.has_heavy:
        result.notes.append(
            f"{holder}: then_branch {then_branch.describe()}, else_branch {else_branch.describe()}; "
            f"branches counted separately, the total takes the larger ({chosen})"
        )
    return result


def _count_body(
    node: onnx.NodeProto, holder: str, body_graph: onnx.GraphProto, parent: onnx.GraphProto, context: _Context, inner: str, repeat: int
) -> _Tally:
    """A Loop/Scan body, times its iterations when they are known."""
    times, why = _iterations(node, context)
    body = _count_graph(body_graph, context, f"{inner} body", repeat * (times or 1))
    if body.has_heavy:
        if times is not None:
            body.notes.append(f"{holder}: body counted {times:,} times ({why})")
        else:
            body.notes.append(f"{holder}: {why}; its body is counted once")
            if node.op_type == "Loop" and _input(node, 0):
                body.wanted_values.append((parent, node.input[0]))
    return body


def _iterations(node: onnx.NodeProto, context: _Context) -> tuple[int | None, str]:
    """How often a Loop/Scan body runs, and how that was decided."""
    if node.op_type == "Loop":
        if not _input(node, 0):
            return None, "no trip count (runs until its condition turns false)"
        trip = context.int_value(node.input[0])
        if trip is None:
            return None, f"trip count '{node.input[0]}' is not a known constant"
        condition = bool(_input(node, 1))
        return trip, f"trip count {trip}" + (", or fewer if its condition ends it" if condition else "")
    attrs = _attrs(node)
    scan_count = int(attrs.get("num_scan_inputs", 0))
    if scan_count <= 0 or scan_count > len(node.input):
        return None, "no scan inputs"
    first = node.input[len(node.input) - scan_count]
    if not context.known(first):
        return None, f"length of scan input '{first}' is not known"
    shape = context.dims(first)
    if context.opset < 9:
        # Scan-8 scans axis 1 and runs its body for every batch entry (axis 0) as well.
        if len(shape) < 2:
            return None, f"scan input '{first}' has rank {len(shape)}"
        return shape[0] * shape[1], f"scan input '{first}': {shape[0]} batch x {shape[1]} steps"
    if not shape:
        return None, f"scan input '{first}' is a scalar"
    axis = (attrs.get("scan_input_axes") or [0])[0] % len(shape)
    return shape[axis], f"scan input '{first}' has {shape[axis]} steps"


# ---------------------------------------------------------------------------------------------------
# Fallback: run the model (and, for shapes inside subgraphs, each subgraph lifted into a model of its
# own) in onnxruntime with the open tensors exposed as outputs.


class _Resolver:
    """Real shapes for tensors shape inference left open, from unoptimised CPU runs."""

    def __init__(
        self, model: Model, shapes: dict[str, tuple[int, ...]], feeds: dict[str, np.ndarray] | None, opset: int
    ) -> None:
        self.model = model
        self.shapes = shapes
        self.feeds = feeds
        self.opset = opset
        self.tensors = _constant_tensors(model.proto)
        # id(subgraph) -> (the graph holding it, the node holding it)
        self.parents: dict[int, tuple[onnx.GraphProto, onnx.NodeProto]] = {
            id(subgraph): (graph, node)
            for graph in iter_graphs(model.proto.graph)
            for node in graph.node
            for subgraph in subgraphs(node)
        }
        self.needs: dict[int, set[str]] = {}  # id(graph) -> tensors a run of that graph must expose
        self.active: set[int] = set()  # ids of the graphs to run: those with needs and all their ancestors
        self.found: dict[str, np.ndarray] = {}  # every value seen: the feeds and exposed outputs of each run
        self.errors: dict[int, str] = {}  # id(graph) -> why it could not be run
        self.runs = 0
        self.first_iteration = False

    def resolve(self, tally: _Tally, context: _Context) -> dict[str, Dims]:
        """Run for what `tally` misses; add the shapes and small integer values seen to `context`.

        Returns the shapes added.
        """
        for entry in tally.unknown:
            if entry.missing is not None:
                self._need(entry.graph, entry.open_names)
        for graph, name in tally.wanted_values:
            self._need(graph, [name])
        try:
            feeds = self.feeds if self.feeds is not None else self._generated_feeds()
        except Exception as exc:  # the generator raises UserError for inputs it cannot invent
            self.errors[id(self.model.proto.graph)] = f"no inputs to run it on: {_first_line(exc)}"
            return {}
        self._run_scope(self.model.proto.graph, None, dict(feeds), None)
        new_shapes = {
            name: tuple(int(d) for d in array.shape) for name, array in self.found.items() if not context.known(name)
        }
        # A generated input's value says nothing about the model (a random trip count), so only
        # given feeds and computed tensors count as values.
        generated = {value.name for value in self.model.proto.graph.input} if self.feeds is None else set()
        context.values.update(
            (name, array)
            for name, array in self.found.items()
            if array.dtype.kind in "iu" and array.size <= SMALL_VALUE_ELEMENTS and name not in generated
        )
        context.shapes.update(new_shapes)
        return new_shapes

    def summary(self, shapes_found: int) -> list[str]:
        """Notes on what the runs supplied."""
        if not shapes_found:
            return []
        origin = "the given inputs" if self.feeds is not None else "generated inputs"
        notes = [
            (
                f"shapes of {shapes_found} tensor(s) that shape inference left open came from onnxruntime "
                f"({self.runs} run(s) on {origin})"
            )
        ]
        if self.first_iteration:
            notes.append("shapes inside Loop/Scan bodies came from a run of their first iteration")
        return notes

    def _need(self, graph: onnx.GraphProto, names: Iterable[str]) -> None:
        self.needs.setdefault(id(graph), set()).update(names)
        child = graph
        while id(child) in self.parents and id(child) not in self.active:
            self.active.add(id(child))
            parent, holder = self.parents[id(child)]
            # A lifted child is fed from its parent's run: what it reads from outside, and for Loop/Scan
            # the holder's inputs (initial values). An If condition is not needed: both branches are run.
            fed = set(_outer_names(child))
            if holder.op_type != "If":
                fed.update(n for n in holder.input if n)
            self.needs.setdefault(id(parent), set()).update(fed)
            child = parent
        self.active.add(id(child))

    def _run_scope(
        self, graph: onnx.GraphProto, holder: onnx.NodeProto | None, env: dict[str, np.ndarray], parent_error: str | None
    ) -> None:
        """Run `graph` (the main graph when holder is None) for its needs, then its active subgraphs."""
        produced = {name for node in graph.node for name in node.output if name}
        wanted = sorted(self.needs.get(id(graph), set()) & produced)
        if holder is None:
            outputs, error = self._run(self.model.proto, env, wanted) if wanted else ({}, None)
        elif self.runs >= MAX_RUNS:
            outputs, error = {}, f"skipped: at most {MAX_RUNS} fallback runs per model"
        else:
            outputs, error = self._run_lifted(graph, holder, env, wanted, parent_error)
        self.found.update(env)
        self.found.update(outputs)
        if error is not None:
            self.errors[id(graph)] = error
        # Children are tried even when this scope failed: they may read only inputs and constants.
        scope = {**env, **outputs}
        for node in graph.node:
            for subgraph in subgraphs(node):
                if id(subgraph) in self.active:
                    self._run_scope(subgraph, node, scope, error or parent_error)

    def _run_lifted(
        self,
        graph: onnx.GraphProto,
        holder: onnx.NodeProto,
        env: dict[str, np.ndarray],
        wanted: list[str],
        parent_error: str | None,
    ) -> tuple[dict[str, np.ndarray], str | None]:
        """Run one subgraph as a model of its own: outer-scope tensors become inputs or initializers."""
        try:
            own, error = self._own_inputs(graph, holder, env)
            if error is not None:
                return {}, parent_error or error
            lifted = onnx.GraphProto()
            lifted.CopyFrom(graph)
            feeds = dict(own)
            for name in sorted(_outer_names(graph)):
                if name in env:
                    array = env[name]
                    elem_type = helper.np_dtype_to_tensor_dtype(array.dtype)
                    lifted.input.append(helper.make_tensor_value_info(name, elem_type, array.shape))
                    feeds[name] = array
                elif name in self.tensors:
                    tensor = lifted.initializer.add()
                    tensor.CopyFrom(self.tensors[name])
                    tensor.name = name
                else:
                    return {}, parent_error or f"the value of outer tensor '{name}' is not available"
            proto = helper.make_model(lifted, opset_imports=list(self.model.proto.opset_import))
            proto.ir_version = self.model.proto.ir_version
            proto.functions.extend(self.model.proto.functions)
        except Exception as exc:  # odd dtypes (strings), bad scan axes: this scope is just not resolved
            return {}, _first_line(exc)
        outputs, error = self._run(proto, feeds, wanted)
        # The body's own first-iteration inputs are real shapes too.
        return {**own, **outputs}, error

    def _own_inputs(
        self, graph: onnx.GraphProto, holder: onnx.NodeProto, env: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], str | None]:
        """Feeds for a Loop/Scan body's own inputs: its first iteration."""
        names = [value.name for value in graph.input]
        if not names:
            return {}, None
        if holder.op_type == "Loop" and _is_onnx(holder):
            initial = list(holder.input[2:])
            if any(n not in env for n in initial):
                return {}, "initial Loop values not available"
            self.first_iteration = True
            values = [np.array(0, dtype=np.int64), np.array(True)] + [env[n] for n in initial]
            return dict(zip(names, values)), None
        if holder.op_type == "Scan" and _is_onnx(holder) and self.opset >= 9:
            attrs = _attrs(holder)
            scan_count = int(attrs.get("num_scan_inputs", 0))
            states = list(holder.input[: len(holder.input) - scan_count])
            scans = list(holder.input[len(holder.input) - scan_count :])
            if any(n not in env for n in states + scans):
                return {}, "Scan inputs not available"
            axes = list(attrs.get("scan_input_axes", []) or [0] * scan_count)
            slices = [np.take(env[n], 0, axis=axes[i] if i < len(axes) else 0) for i, n in enumerate(scans)]
            self.first_iteration = True
            return dict(zip(names, [env[n] for n in states] + slices)), None
        return {}, f"a {holder.op_type} subgraph with its own inputs, which the fallback cannot feed"

    def _run(self, proto: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> tuple[dict[str, np.ndarray], str | None]:
        """One CPU run, unoptimised, with `names` exposed as outputs."""
        self.runs += 1
        try:
            ort = runtime.ort()
            exposed_proto = onnx.ModelProto()
            exposed_proto.CopyFrom(proto)
            present = {value.name for value in exposed_proto.graph.output}
            exposed_proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in present)
            exposed = Model(proto=exposed_proto, data_dir=self.model.base_dir, changes=["exposed intermediate tensors"])
            source, entries = exposed.ort_source()
            options = runtime.quiet_session_options()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            for key, value in entries.items():
                options.add_session_config_entry(key, value)
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            accepted = {i.name for i in session.get_inputs()}
            run_options = ort.RunOptions()
            run_options.log_severity_level = 4  # a failing run is reported in the result, not on stderr
            results = session.run(names, {k: v for k, v in feeds.items() if k in accepted}, run_options)
        except Exception as exc:  # ORT and protobuf raise their own types
            return {}, _first_line(_compact_ort_error(str(exc)))
        return {name: value for name, value in zip(names, results) if isinstance(value, np.ndarray)}, None

    def _generated_feeds(self) -> dict[str, np.ndarray]:
        """The package's seeded generated inputs, at exactly the shapes inference was given."""
        specs = input_specs(self.model)
        for spec in specs:
            if spec.name not in self.shapes:
                raise ValueError(f"no shape given for input '{spec.name}'")
        chosen = ShapeOptions(shapes={spec.name: tuple(self.shapes[spec.name]) for spec in specs})
        return generate_feeds(self.model, shape_options=chosen).samples[0]

    def explain(self, entry: _Pending) -> UnknownMacs:
        """Why a node stayed uncounted, in a sentence."""
        reason = entry.reason
        if entry.missing is not None:
            # Uncounted for a missing shape means the fallback was tried and did not supply it.
            error = self._error_for(entry.graph)
            outcome = f"failed: {error}" if error is not None else "did not produce it"
            reason = f"shape of '{entry.missing}' not inferred, and the onnxruntime fallback {outcome}"
        return UnknownMacs(entry.node.name or entry.node.op_type, entry.node.op_type, reason, entry.where)

    def _error_for(self, graph: onnx.GraphProto) -> str | None:
        """Why this graph, or the nearest enclosing one, could not be run."""
        while id(graph) not in self.errors:
            if id(graph) not in self.parents:
                return None
            graph = self.parents[id(graph)][0]
        return self.errors[id(graph)]


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (nested ones included) reads from enclosing scopes."""
    produced: set[str] = set()
    used: set[str] = set()
    for inner in iter_graphs(graph):
        produced.update(value.name for value in inner.input)
        produced.update(tensor.name for tensor in inner.initializer)
        for node in inner.node:
            produced.update(n for n in node.output if n)
            used.update(n for n in node.input if n)
        used.update(value.name for value in inner.output)
    return used - produced


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 3] + "..."


ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")
ORT_SOURCE = re.compile(r"\S+\.(?:h|cc|cpp):\d+ [^()]*\(.*?\) ")
ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _compact_ort_error(text: str) -> str:
    """ORT's message cut to the innermost failing node and what it said (no source paths)."""
    text = ORT_PREFIX.sub("", text.strip())
    nodes = ORT_NODE.findall(text)
    message = ORT_SOURCE.sub("", text.rsplit("Status Message: ", 1)[-1])
    if nodes:
        op, name = nodes[-1]
        return f"{op} node '{name}': {message}"
    return message


# ---------------------------------------------------------------------------------------------------
# Per-op rules. Each returns MACs for one execution of the node or raises _Missing/_Bad.


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _input(node: onnx.NodeProto, index: int) -> str:
    """The name of an optional input, "" when absent."""
    return node.input[index] if index < len(node.input) else ""


def _conv(weight: int) -> Rule:
    """Each output element takes (C/groups) x kernel MACs: that is the weight's size past its first axis."""

    def count(node: onnx.NodeProto, dims: DimsOf) -> int:
        w = dims(_input(node, weight))
        y = dims(node.output[0])
        if len(w) < 3 or len(y) < 3:
            raise _Bad(f"weight rank {len(w)} / output rank {len(y)}; a convolution needs at least 3")
        return math.prod(y) * math.prod(w[1:])

    return count


def _conv_transpose(node: onnx.NodeProto, dims: DimsOf) -> int:
    """Each input element scatters into (M/groups) x kernel outputs: weight (C, M/g, k...) past its first axis."""
    x = dims(_input(node, 0))
    w = dims(_input(node, 1))
    if len(w) < 3 or len(x) < 3:
        raise _Bad(f"weight rank {len(w)} / input rank {len(x)}; a convolution needs at least 3")
    return math.prod(x) * math.prod(w[1:])


def _matmul(node: onnx.NodeProto, dims: DimsOf) -> int:
    """Every output element is a dot product of length K (A's last axis, or second last when transposed)."""
    a = dims(_input(node, 0))
    y = dims(node.output[0])
    if not a:
        raise _Bad("MatMul operand is a scalar")
    transposed = bool(_attrs(node).get("transA", 0)) and len(a) >= 2  # only FusedMatMul has transA
    return math.prod(y) * (a[-2] if transposed else a[-1])


def _matmul_nbits(node: onnx.NodeProto, dims: DimsOf) -> int:
    k = int(_attrs(node).get("K", 0))
    if k <= 0:
        raise _Bad("MatMulNBits without its K attribute")
    return math.prod(dims(node.output[0])) * k


def _gemm(node: onnx.NodeProto, dims: DimsOf) -> int:
    a = dims(_input(node, 0))
    if len(a) != 2:
        raise _Bad(f"Gemm operand A has rank {len(a)}, expected 2")
    k = a[0] if _attrs(node).get("transA", 0) else a[1]
    return math.prod(dims(node.output[0])) * k


def _recurrent(node: onnx.NodeProto, dims: DimsOf) -> int:
    """Per time step and direction: gates x H x (input + hidden), i.e. the sizes of W and R together."""
    x = dims(_input(node, 0))
    w = dims(_input(node, 1))
    r = dims(_input(node, 2))
    if len(x) != 3:
        raise _Bad(f"input has rank {len(x)}, expected 3")
    batch_first = _attrs(node).get("layout", 0) == 1
    steps, batch = (x[1], x[0]) if batch_first else (x[0], x[1])
    return steps * batch * (math.prod(w) + math.prod(r))


def _present_length(node: onnx.NodeProto, dims: DimsOf, axis: int) -> int | None:
    """The attended length (past + new positions) read off the present-key output, when its shape is known."""
    present = node.output[1] if len(node.output) > 1 else ""
    return dims(present)[axis] if present and _known(dims, present) else None


def _known(dims: DimsOf, name: str) -> bool:
    try:
        dims(name)
    except (_Missing, _Bad):
        return False
    return True


def _ms_attention(node: onnx.NodeProto, dims: DimsOf) -> int:
    """com.microsoft Attention: the packed Q/K/V projection, then QK^T and scores x V."""
    x = dims(_input(node, 0))
    weights = dims(_input(node, 1))
    y = dims(node.output[0])
    if len(x) != 3 or len(weights) != 2 or len(y) != 3:
        raise _Bad("expected input (B, S, D), weights (D, 3D') and output (B, S, Dv)")
    batch, steps, _ = x
    sizes = list(_attrs(node).get("qkv_hidden_sizes", []) or [])
    q_size, v_size = (sizes[0], sizes[2]) if len(sizes) == 3 else (weights[1] // 3, weights[1] // 3)
    total = _present_length(node, dims, axis=3)  # present: (2, B, N, T, H)
    if total is None:
        past = _input(node, 4)
        total = (dims(past)[3] if past else 0) + steps
    projection = math.prod(x) * weights[1]
    return projection + batch * steps * total * (q_size + v_size)


def _ms_multihead(node: onnx.NodeProto, dims: DimsOf) -> int:
    """com.microsoft MultiHeadAttention: inputs come projected; QK^T and scores x V only."""
    query = dims(_input(node, 0))
    y = dims(node.output[0])
    if len(y) != 3:
        raise _Bad(f"output has rank {len(y)}, expected 3")
    batch, steps, v_size = y
    if len(query) == 3:
        q_size = query[2]
    elif len(query) == 5:  # packed QKV: (B, S, N, 3, H)
        q_size = query[2] * query[4]
    else:
        raise _Bad(f"query has rank {len(query)}, expected 3 or 5")
    total = _present_length(node, dims, axis=2)  # present: (B, N, T, H)
    if total is None and not _input(node, 1):
        total = steps
    elif total is None:
        key = dims(_input(node, 1))
        if len(key) == 4:  # (B, N, L, H): a cross-attention cache, already complete
            total = key[2]
        else:  # (B, L, D) or packed KV (B, L, N, 2, H), after the past key if any
            past = _input(node, 6)
            total = key[1] + (dims(past)[2] if past else 0)
    return batch * steps * total * (q_size + v_size)


def _ms_group_query(node: onnx.NodeProto, dims: DimsOf) -> int:
    """com.microsoft GroupQueryAttention: every query head scores all T cached positions."""
    y = dims(node.output[0])
    if len(y) != 3 or len(node.output) < 2:
        raise _Bad("expected output (B, S, D) and a present_key output")
    present = dims(node.output[1])
    batch, steps, hidden = y
    return 2 * batch * steps * present[2] * hidden


def _onnx_attention(node: onnx.NodeProto, dims: DimsOf) -> int:
    """ONNX Attention (opset 23): QK^T over all key positions, then scores x V."""
    q = dims(_input(node, 0))
    y = dims(node.output[0])
    total = _present_length(node, dims, axis=2)
    if total is None:
        key = dims(_input(node, 1))
        if len(key) not in (3, 4):
            raise _Bad(f"key has rank {len(key)}, expected 3 or 4")
        past = _input(node, 4)
        total = (key[2] if len(key) == 4 else key[1]) + (dims(past)[2] if past else 0)
    return (math.prod(q) + math.prod(y)) * total


COUNTERS: dict[tuple[str, str], Rule] = {
    ("", "Conv"): _conv(1),
    ("", "ConvInteger"): _conv(1),
    ("", "QLinearConv"): _conv(3),
    (MS, "QLinearConv"): _conv(3),
    (MS, "FusedConv"): _conv(1),
    (MS, "NhwcConv"): _conv(1),
    ("", "ConvTranspose"): _conv_transpose,
    ("", "MatMul"): _matmul,
    ("", "MatMulInteger"): _matmul,
    ("", "QLinearMatMul"): _matmul,
    (MS, "FusedMatMul"): _matmul,
    (MS, "MatMulIntegerToFloat"): _matmul,
    (MS, "DynamicQuantizeMatMul"): _matmul,
    (MS, "MatMulNBits"): _matmul_nbits,
    ("", "Gemm"): _gemm,
    (MS, "FusedGemm"): _gemm,
    (MS, "QGemm"): _gemm,
    ("", "LSTM"): _recurrent,
    ("", "GRU"): _recurrent,
    ("", "RNN"): _recurrent,
    (MS, "DynamicQuantizeLSTM"): _recurrent,
    (MS, "Attention"): _ms_attention,
    (MS, "MultiHeadAttention"): _ms_multihead,
    (MS, "GroupQueryAttention"): _ms_group_query,
    ("", "Attention"): _onnx_attention,
}
