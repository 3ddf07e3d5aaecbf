"""Multiply-accumulates (MACs) of the heavy ops, from shapes inferred for concrete input shapes.

Shapes come from ONNX shape inference (`shapes`); where it leaves a heavy node's shapes open, an
onnxruntime run supplies real ones (`ort_shapes`). What neither resolves is listed as unknown rather
than guessed. Here: the counting rules per op, and the walk that applies them, subgraphs included.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from ortforge.analysis.ort_shapes import ShapeResolver
from ortforge.analysis.shapes import PartialDims, inferred_shapes, is_integer
from ortforge.core.graph import GraphIndex, attributes, is_default_domain, subgraphs
from ortforge.core.model import Model, opset_versions

TOP_NODES = 10

Dims = tuple[int, ...]
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
    # Holds every graph and node while counting: the resolver keys subgraphs by id().
    index = GraphIndex(model.proto)
    context = _Context(
        shapes=inferred_shapes(model, shapes, notes),
        values=_small_int_values(index),
        opset=opset_versions(model.proto).get("ai.onnx", 0),
    )
    # Count on the original structure (same names as the inferred copy), so that a fallback run
    # can lift a subgraph together with its real weights.
    tally = _count_graph(model.proto.graph, context, "", 1)
    resolver = ShapeResolver(model, shapes, feeds, context.opset, index)
    ort_shapes: dict[str, Dims] = {}
    if any(entry.missing for entry in tally.unknown) or tally.wanted_values:
        needs = [(entry.graph, entry.open_names) for entry in tally.unknown if entry.missing is not None]
        needs += [(graph, [name]) for graph, name in tally.wanted_values]
        found = resolver.resolve(needs)
        ort_shapes = {name: shape for name, shape in found.shapes.items() if not context.known(name)}
        context.values.update(found.values)
        context.shapes.update(ort_shapes)
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
        unknown=[_explain(entry, resolver) for entry in tally.unknown],
        notes=notes,
        counted_nodes=len(tally.nodes),
        shapes_from_ort=len(ort_shapes),
    )


def _small_int_values(index: GraphIndex) -> dict[str, np.ndarray]:
    """Small integer constants held inline (initializers, Constant nodes): Loop trip counts among them."""
    values = {name: index.value(name) for name, tensor in index.tensors.items() if is_integer(tensor.data_type)}
    return {name: value for name, value in values.items() if value is not None}


def _explain(entry: _Pending, resolver: ShapeResolver) -> UnknownMacs:
    """Why a node stayed uncounted, in a sentence."""
    reason = entry.reason
    if entry.missing is not None:
        # Uncounted for a missing shape means the fallback was tried and did not supply it.
        error = resolver.failure(entry.graph)
        outcome = f"failed: {error}" if error is not None else "did not produce it"
        reason = f"shape of '{entry.missing}' not inferred, and the onnxruntime fallback {outcome}"
    return UnknownMacs(entry.node.name or entry.node.op_type, entry.node.op_type, reason, entry.where)


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


def _count_graph(graph: onnx.GraphProto, context: _Context, where: str, repeat: int) -> _Tally:
    tally = _Tally()
    for node in graph.node:
        rule = COUNTERS.get(("" if is_default_domain(node) else node.domain, node.op_type))
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
    graphs = dict(subgraphs(node))
    if is_default_domain(node) and node.op_type == "If" and {"then_branch", "else_branch"} <= graphs.keys():
        return _count_if(holder, graphs["then_branch"], graphs["else_branch"], context, inner, repeat)
    if is_default_domain(node) and node.op_type in ("Loop", "Scan") and "body" in graphs:
        return _count_body(node, holder, graphs["body"], parent, context, inner, repeat)
    result = _Tally()
    for name, subgraph in graphs.items():
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
    attrs = attributes(node)
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
# Per-op rules. Each returns MACs for one execution of the node or raises _Missing/_Bad.


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
    transposed = bool(attributes(node).get("transA", 0)) and len(a) >= 2  # only FusedMatMul has transA
    return math.prod(y) * (a[-2] if transposed else a[-1])


def _matmul_nbits(node: onnx.NodeProto, dims: DimsOf) -> int:
    k = int(attributes(node).get("K", 0))
    if k <= 0:
        raise _Bad("MatMulNBits without its K attribute")
    return math.prod(dims(node.output[0])) * k


def _gemm(node: onnx.NodeProto, dims: DimsOf) -> int:
    a = dims(_input(node, 0))
    if len(a) != 2:
        raise _Bad(f"Gemm operand A has rank {len(a)}, expected 2")
    k = a[0] if attributes(node).get("transA", 0) else a[1]
    return math.prod(dims(node.output[0])) * k


def _recurrent(node: onnx.NodeProto, dims: DimsOf) -> int:
    """Per time step and direction: gates x H x (input + hidden), i.e. the sizes of W and R together."""
    x = dims(_input(node, 0))
    w = dims(_input(node, 1))
    r = dims(_input(node, 2))
    if len(x) != 3:
        raise _Bad(f"input has rank {len(x)}, expected 3")
    batch_first = attributes(node).get("layout", 0) == 1
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
    sizes = list(attributes(node).get("qkv_hidden_sizes", []) or [])
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
