"""Weight-only quantization: MatMul/Gemm weights to MatMulNBits (4 or 8 bit), embeddings to GatherBlockQuantized.

ORT's `MatMulNBitsQuantizer` does the block quantization (its C++ kernels, its node layout) and already walks
If/Loop/Scan subgraphs. What it misses is handled here before it runs: weights held in Constant nodes are made
initializers, Gemm with a constant B becomes MatMul (+ Add), a weight shared by a Gather and a MatMul gets a copy
per role, and exclusions are resolved by node name or op type. After it runs, its side effects are undone where
they are wrong: it forces the default opset to 21 when Gather is quantized (breaking e.g. ReduceMean with an
`axes` attribute) and drops the domain of nodes holding subgraphs.

Graph edits are made on the protos directly rather than through onnx-ir: ORT's quantizer consumes and mutates a
ModelProto, and the edits here are local node swaps, so one representation avoids two whole-model conversions.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor

from ortforge.core.errors import UserError
from ortforge.core.model import Model, fresh_name, iter_graphs, iter_nodes, iter_tensors
from ortforge.transforms import TransformResult, op_count_changes

BITS = (4, 8)
# MLAS's blockwise quantizer accepts exactly these (it aborts on 24, 512, ...).
BLOCK_SIZES = (16, 32, 64, 128, 256)
# MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute (activations quantized on the fly).
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
OP_TYPES = ("MatMul", "Gemm", "Gather")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
QUANTIZED_OPS = ("MatMulNBits", "GatherBlockQuantized")
ORT_LOGGER = "onnxruntime.quantization.matmul_nbits_quantizer"


@dataclass(frozen=True)
class WeightOnlyOptions:
    """What to quantize and how; checked on construction so impossible settings fail before any work."""

    bits: int = 4
    block_size: int = 32
    symmetric: bool = False  # ORT's default: asymmetric (zero points stored) is the more accurate
    accuracy_level: int | None = None  # None/0: the attribute is left out and ORT chooses
    op_types: tuple[str, ...] = ("MatMul", "Gemm")  # "Gather" (embeddings) is opt-in
    exclude: tuple[str, ...] = ()  # node names or op types left in float

    mode = "weight-only"  # what `ortforge quantize --mode` calls it; not a field

    def describe(self) -> str:
        """A short label, e.g. 'weight-only int4 block 32 asym level 4 MatMul+Gemm'."""
        level = f" level {self.accuracy_level}" if self.accuracy_level else ""
        symmetry = "sym" if self.symmetric else "asym"
        return f"weight-only int{self.bits} block {self.block_size} {symmetry}{level} {'+'.join(self.op_types)}"

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if isinstance(self.bits, bool) or self.bits not in BITS:
            raise UserError(f"bits {self.bits}: weight-only quantization supports {' or '.join(map(str, BITS))} bits")
        if isinstance(self.block_size, bool) or self.block_size not in BLOCK_SIZES:
            raise UserError(f"block size {self.block_size}: choose one of {', '.join(map(str, BLOCK_SIZES))}",
                            hint="ORT's block quantizer accepts only these powers of two")
        if self.accuracy_level is not None and self.accuracy_level not in ACCURACY_LEVELS:
            raise UserError(f"accuracy level {self.accuracy_level}: choose 0-4 (4 = int8 compute on CPU) or leave it unset")
        unknown = [op for op in self.op_types if op not in OP_TYPES]
        if unknown or not self.op_types:
            raise UserError(f"op type(s) {', '.join(unknown) or '(none)'}: weight-only quantization handles {', '.join(OP_TYPES)}")
        if "Gather" in self.op_types and self.bits != 4:
            raise UserError(f"Gather is quantized at 4 bits only (ORT's GatherBlockQuantized path); got bits {self.bits}",
                            hint="use bits 4, or leave Gather out of the op types")


@dataclass
class _Site:
    """One MatMul/Gemm/Gather node of a selected op type, and why it stays float (if it does)."""

    node: onnx.NodeProto
    stack: tuple[onnx.GraphProto, ...]  # the graphs enclosing the node, outermost first
    kind: str  # the original op type
    name: str
    output: str  # of the node to be quantized (a Gemm's MatMul once rewritten)
    reason: str | None = None


@dataclass
class _Edits:
    """What the pre-passes did, for the report."""

    lifted: int = 0
    gemms: int = 0
    split: int = 0
    renamed: int = 0
    notes: list[str] = field(default_factory=list)


def quantize_weight_only(model: Model, options: WeightOnlyOptions) -> TransformResult:
    """Block-quantize constant MatMul/Gemm (and opt-in Gather) weights; report what was done and skipped.

    Weights still in external data keep their locations: wrap the result with the source model's folder.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)  # ORT's quantizer edits in place
    edits = _Edits()
    aliases = _name_nodes(proto)
    edits.renamed = len(aliases)
    edits.lifted = _lift_constants(proto, _weight_names(proto, options, aliases))
    sites = _classify(proto, options, aliases)
    _load_weights(sites, model.base_dir)
    edits.gemms = _rewrite_gemms(proto, sites)
    edits.split = _split_shared_weights(proto, sites)
    chosen = [site for site in sites if site.reason is None]
    if not chosen:
        return _unchanged(model, options, sites, edits)
    _run_ort_quantizer(proto, options, chosen)
    edits.notes.extend(_undo_side_effects(proto, model.proto))
    return _result(model, proto, options, sites, edits)


# ---- walking graphs with scope -------------------------------------------------------------------------------


def _walk(graph: onnx.GraphProto, stack: tuple[onnx.GraphProto, ...] = ()) -> Iterator[tuple[onnx.NodeProto, tuple]]:
    """Every node with the graphs enclosing it, so names resolve the way ONNX scoping does."""
    stack = stack + (graph,)
    for node in graph.node:
        yield node, stack
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
            for subgraph in subgraphs:
                yield from _walk(subgraph, stack)


def _lookup(name: str, stack: tuple[onnx.GraphProto, ...]) -> tuple[onnx.TensorProto | None, onnx.GraphProto | None]:
    """The initializer `name` refers to from the innermost graph, or None when it is computed or an input."""
    for graph in reversed(stack):
        for tensor in graph.initializer:
            if tensor.name == name:
                return tensor, graph
        if any(value.name == name for value in graph.input) or any(name in node.output for node in graph.node):
            return None, None
    return None, None


def _is_graph_input(name: str, graph: onnx.GraphProto) -> bool:
    return any(value.name == name for value in graph.input)


def _taken_names(proto: onnx.ModelProto) -> set[str]:
    names = {node.name for node in iter_nodes(proto)}
    for graph in iter_graphs(proto.graph):
        names.update(tensor.name for tensor in graph.initializer)
        names.update(value.name for value in list(graph.input) + list(graph.output) + list(graph.value_info))
        for node in graph.node:
            names.update(node.input)
            names.update(node.output)
    return names


def _weight_index(op_type: str) -> int:
    return 0 if op_type == "Gather" else 1


def _position(site: _Site) -> int:
    """Where the site's node sits in its graph, found by its (unique) name rather than by a proto reference
    that edits to the node list may have invalidated."""
    return next(index for index, node in enumerate(site.stack[-1].node) if node.name == site.name and node.op_type in OP_TYPES)


# ---- pre-passes ----------------------------------------------------------------------------------------------


def _name_nodes(proto: onnx.ModelProto) -> dict[str, str]:
    """Give unnamed or duplicate-named MatMul/Gemm/Gather nodes unique names (ORT's tool excludes by name).

    Returns new name -> name before, so exclusions by the user's names still apply.
    """
    taken = {node.name for node in iter_nodes(proto) if node.name}
    seen: set[str] = set()
    aliases = {}
    for node in iter_nodes(proto):
        if not _is_target(node, OP_TYPES):
            continue
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        old = node.name
        node.name = fresh_name(old or node.op_type, taken)
        aliases[node.name] = old
        seen.add(node.name)
    return aliases


def _is_target(node: onnx.NodeProto, op_types: tuple[str, ...]) -> bool:
    return node.op_type in op_types and node.domain in ("", "ai.onnx")


def _weight_names(proto: onnx.ModelProto, options: WeightOnlyOptions, aliases: dict[str, str]) -> set[str]:
    """Names feeding the weight input of a node that may be quantized (to know which Constants to lift)."""
    names = set()
    for node in iter_nodes(proto):
        index = _weight_index(node.op_type)
        if _is_target(node, options.op_types) and len(node.input) > index and not _exclusion(node, options, aliases):
            names.add(node.input[index])
    return names


def _lift_constants(proto: onnx.ModelProto, weight_names: set[str]) -> int:
    """Turn float Constant nodes that feed weight inputs into initializers: ORT's tool only quantizes initializers."""
    count = 0
    for graph in iter_graphs(proto.graph):
        outputs = {value.name for value in graph.output}
        kept = []
        for node in graph.node:
            value = _constant_tensor(node)
            if value is not None and node.output[0] in weight_names and node.output[0] not in outputs and value.data_type in FLOAT_TYPES:
                lifted = onnx.TensorProto()
                lifted.CopyFrom(value)
                lifted.name = node.output[0]
                graph.initializer.append(lifted)
                count += 1
            else:
                kept.append(node)
        if len(kept) != len(graph.node):
            del graph.node[:]
            graph.node.extend(kept)
    return count


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.HasField("t"):
            return attribute.t
    return None


def _classify(proto: onnx.ModelProto, options: WeightOnlyOptions, aliases: dict[str, str]) -> list[_Site]:
    """Every node of a selected op type, with the reason it cannot be quantized (None when it can)."""
    sites = []
    for node, stack in _walk(proto.graph):
        if _is_target(node, options.op_types):
            site = _Site(node, stack, node.op_type, node.name, node.output[0])
            site.reason = _exclusion(node, options, aliases) or _weight_problem(node, stack)
            sites.append(site)
    return sites


def _exclusion(node: onnx.NodeProto, options: WeightOnlyOptions, aliases: dict[str, str]) -> str | None:
    if node.name in options.exclude or aliases.get(node.name, node.name) in options.exclude:
        return "excluded by name"
    if node.op_type in options.exclude:
        return "excluded by op type"
    return None


def _weight_problem(node: onnx.NodeProto, stack: tuple) -> str | None:
    """Why this node's weight cannot be block-quantized, in words; None when it can."""
    role = "data" if node.op_type == "Gather" else "B"
    index = _weight_index(node.op_type)
    tensor, graph = _lookup(node.input[index], stack) if len(node.input) > index else (None, None)
    if tensor is None:
        return f"{role} is an activation, not a weight"
    if _is_graph_input(tensor.name, graph):
        return f"{role} is also a graph input, so it can be replaced at run time"
    if tensor.data_type not in FLOAT_TYPES:
        return f"{role} is {onnx.TensorProto.DataType.Name(tensor.data_type)}, not floating point"
    dims = list(tensor.dims)
    if len(dims) < 2:
        return f"{role} is {len(dims)}-D; only matrices are block-quantized"
    if node.op_type == "MatMul" and any(d != 1 for d in dims[:-2]):
        return f"B has shape {dims}: MatMulNBits takes one [K, N] matrix, not a batch of them"
    if node.op_type == "Gemm" and _attributes(node).get("alpha", 1.0) == 0.0:
        return "alpha is 0, so B does not contribute"
    return None


def _attributes(node: onnx.NodeProto) -> dict:
    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def _load_weights(sites: list[_Site], base_dir: Path | None) -> None:
    """Read from external data only the weights about to be quantized; the rest stay on disk."""
    for site in sites:
        if site.reason is not None:
            continue
        tensor, _ = _lookup(site.node.input[_weight_index(site.kind)], site.stack)
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        if base_dir is None:
            site.reason = "the weight is in external data and the model's folder is unknown"
        else:
            load_external_data_for_tensor(tensor, str(base_dir))


def _rewrite_gemms(proto: onnx.ModelProto, sites: list[_Site]) -> int:
    """Replace each quantizable Gemm with MatMul (+ Add): ORT's tool only quantizes MatMul."""
    taken = _taken_names(proto)
    folded: dict[tuple, str] = {}
    count = 0
    for site in sites:
        if site.kind != "Gemm" or site.reason is not None:
            continue
        graph = site.stack[-1]
        position = _position(site)
        nodes = _gemm_as_matmul(graph.node[position], site.stack, taken, folded)
        del graph.node[position]
        for offset, node in enumerate(nodes):
            graph.node.insert(position + offset, node)
        site.node = next(node for node in graph.node if node.name == site.name and node.op_type == "MatMul")
        site.output = site.node.output[0]
        count += 1
    return count


def _gemm_as_matmul(gemm: onnx.NodeProto, stack: tuple, taken: set[str], folded: dict[tuple, str]) -> list[onnx.NodeProto]:
    """MatMul(A', alpha*B') [+ beta*C]: alpha and transB are folded into the constant B (it is quantized next,
    and block quantization is scale-invariant), transA becomes a Transpose, beta a folded or explicit scale of C."""
    attributes = _attributes(gemm)
    alpha, beta = float(attributes.get("alpha", 1.0)), float(attributes.get("beta", 1.0))
    name = gemm.name
    b_name = _matmul_weight(gemm.input[1], bool(attributes.get("transB", 0)), alpha, stack, taken, folded)
    nodes = []
    a_name = gemm.input[0]
    if attributes.get("transA", 0):
        a_name = fresh_name(f"{name}_a_transposed", taken)
        nodes.append(helper.make_node("Transpose", [gemm.input[0]], [a_name], name=fresh_name(f"{name}_transpose_a", taken), perm=[1, 0]))
    has_c = len(gemm.input) > 2 and gemm.input[2] != "" and beta != 0.0
    product = fresh_name(f"{name}_product", taken) if has_c else gemm.output[0]
    nodes.append(helper.make_node("MatMul", [a_name, b_name], [product], name=name))
    if has_c:
        c_name = _scaled_c(gemm.input[2], beta, stack, name, taken, nodes)
        nodes.append(helper.make_node("Add", [product, c_name], [gemm.output[0]], name=fresh_name(f"{name}_bias", taken)))
    return nodes


def _matmul_weight(b_name: str, trans_b: bool, alpha: float, stack: tuple, taken: set[str], folded: dict[tuple, str]) -> str:
    """B as MatMul wants it (alpha * B'), one initializer per distinct fold so Gemms sharing a weight still share it."""
    if not trans_b and alpha == 1.0:
        return b_name
    b_tensor, graph = _lookup(b_name, stack)
    key = (id(graph), b_name, trans_b, alpha)
    if key not in folded:
        b = numpy_helper.to_array(b_tensor)
        b = b.T if trans_b else b
        b = (b.astype(np.float32) * alpha).astype(b.dtype) if alpha != 1.0 else b
        folded[key] = fresh_name(f"{b_name}_as_matmul", taken)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b), folded[key]))
    return folded[key]


def _scaled_c(c_name: str, beta: float, stack: tuple, name: str, taken: set[str], nodes: list) -> str:
    """beta*C: folded when C is a weight, a Mul node when it is computed; C itself when beta is 1."""
    if beta == 1.0:
        return c_name
    c_tensor, _ = _lookup(c_name, stack)
    if c_tensor is not None and c_tensor.data_location != onnx.TensorProto.EXTERNAL:
        c = numpy_helper.to_array(c_tensor)
        scaled = fresh_name(f"{c_name}_scaled", taken)
        stack[-1].initializer.append(numpy_helper.from_array((c.astype(np.float32) * beta).astype(c.dtype), scaled))
        return scaled
    beta_name = fresh_name(f"{name}_beta", taken)
    dtype = helper.tensor_dtype_to_np_dtype(c_tensor.data_type) if c_tensor is not None else np.float32
    stack[-1].initializer.append(numpy_helper.from_array(np.array(beta, dtype=dtype), beta_name))
    scaled = fresh_name(f"{c_name}_scaled", taken)
    nodes.append(helper.make_node("Mul", [c_name, beta_name], [scaled], name=fresh_name(f"{name}_beta_mul", taken)))
    return scaled


def _split_shared_weights(proto: onnx.ModelProto, sites: list[_Site]) -> int:
    """Give MatMuls their own copy of a weight a quantized Gather also uses.

    ORT names both quantized forms `<weight>_Q4`; sharing one initializer yields a model ORT rejects.
    """
    chosen = [site for site in sites if site.reason is None]
    gathered = {_lookup(site.node.input[0], site.stack)[0].name for site in chosen if site.kind == "Gather"}
    if not gathered:
        return 0
    taken = _taken_names(proto)
    copies: dict[tuple[int, str], str] = {}
    for site in chosen:
        node = site.stack[-1].node[_position(site)]
        if site.kind == "Gather" or node.input[1] not in gathered:
            continue
        tensor, graph = _lookup(node.input[1], site.stack)
        key = (id(graph), tensor.name)
        if key not in copies:
            copies[key] = fresh_name(f"{tensor.name}_for_matmul", taken)
            duplicate = onnx.TensorProto()
            duplicate.CopyFrom(tensor)
            duplicate.name = copies[key]
            graph.initializer.append(duplicate)
        node.input[1] = copies[key]
    return len(copies)


# ---- ORT's quantizer -----------------------------------------------------------------------------------------


def _run_ort_quantizer(proto: onnx.ModelProto, options: WeightOnlyOptions, chosen: list[_Site]) -> None:
    """Quantize exactly the chosen nodes with ORT's tool (in memory: it writes no files when given a proto)."""
    quantizer_module = _import_ort_quantizer()
    chosen_names = {site.name for site in chosen}
    ort_ops = {"MatMul"} | ({"Gather"} if any(site.kind == "Gather" for site in chosen) else set())
    others = [node.name for node in iter_nodes(proto) if node.op_type in ort_ops and node.name not in chosen_names]
    quantizer = quantizer_module.MatMulNBitsQuantizer(
        proto,
        bits=options.bits,
        block_size=options.block_size,
        is_symmetric=options.symmetric,
        accuracy_level=options.accuracy_level,
        nodes_to_exclude=others,
        op_types_to_quantize=tuple(sorted(ort_ops)),
        quant_axes=(("MatMul", 0), ("Gather", -1)),  # Gather: blocks along each embedding row
    )
    with _quiet(ORT_LOGGER):
        quantizer.process()


def _import_ort_quantizer():
    """Import ORT's weight-only module without letting its import-time `logging.basicConfig` claim the root logger."""
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard:
        root.addHandler(guard)  # basicConfig does nothing when the root logger already has a handler
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        if guard:
            root.removeHandler(guard)
    return matmul_nbits_quantizer


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Mute a library logger for the duration (it logs per node; transforms do not print)."""
    logger = logging.getLogger(name)
    previous = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = previous


def _undo_side_effects(proto: onnx.ModelProto, original: onnx.ModelProto) -> list[str]:
    """Put back the default opset ORT's tool forces to 21 and the node domains it drops; say what stays changed."""
    notes = []
    before = {entry.domain: entry.version for entry in original.opset_import}
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.domain in before and entry.version != before[entry.domain]:
            # Only com.microsoft ops read the int4 tensors; raising the default opset would change other ops' meaning.
            entry.version = before[entry.domain]
    if proto.ir_version != original.ir_version:
        notes.append(f"IR version raised from {original.ir_version} to {proto.ir_version}: int4 tensors need IR 10")
    domains = {(node.name, tuple(node.output)): node.domain for node in iter_nodes(original) if _has_subgraph(node)}
    for node in iter_nodes(proto):
        key = (node.name, tuple(node.output))
        if _has_subgraph(node) and key in domains:
            node.domain = domains[key]
    return notes


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(attribute.HasField("g") or len(attribute.graphs) for attribute in node.attribute)


# ---- the report ----------------------------------------------------------------------------------------------


def _tensor_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of every initializer and tensor attribute, external data included (its recorded length)."""
    total = 0
    for tensor in iter_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += int({entry.key: entry.value for entry in tensor.external_data}.get("length", 0))
            continue
        total += len(tensor.raw_data) + sum(map(len, tensor.string_data))
        total += 8 * (len(tensor.int64_data) + len(tensor.double_data) + len(tensor.uint64_data))
        total += 4 * len(tensor.float_data) + _int32_field_bytes(tensor)
    return total


def _int32_field_bytes(tensor: onnx.TensorProto) -> int:
    """int32_data also carries float16/int8/... one value per entry: count their real width."""
    if not tensor.int32_data:
        return 0
    try:
        width = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError):
        width = 4
    return width * len(tensor.int32_data)


def _mark_outcomes(proto: onnx.ModelProto, sites: list[_Site]) -> None:
    """A chosen site that ORT's tool left alone gets a reason too (it should not happen; the report must not lie)."""
    produced = set()
    for node in iter_nodes(proto):
        if node.op_type in QUANTIZED_OPS and node.domain == "com.microsoft":
            produced.update(node.output)
    for site in sites:
        quantized = site.output in produced or f"{site.output}_pre_reshape" in produced
        if site.reason is None and not quantized:
            site.reason = "left float by ORT's quantizer"


def _sizes(before: int, after: int) -> str:
    """Both sizes in one unit, so the shrink reads at a glance."""
    unit, scale = ("MB", 1e6) if max(before, after) >= 1e6 else ("kB", 1e3)
    return f"{before / scale:.1f} {unit} -> {after / scale:.1f} {unit}"


def _details(sites: list[_Site], options: WeightOnlyOptions, edits: _Edits, before: int, after: int, op_changes: dict) -> dict:
    quantized = Counter(site.kind for site in sites if site.reason is None)
    skipped = [{"node": site.name, "op_type": site.kind, "reason": site.reason} for site in sites if site.reason]
    return {
        "bits": options.bits,
        "block_size": options.block_size,
        "symmetric": options.symmetric,
        "accuracy_level": options.accuracy_level,
        "quantized": {op: quantized.get(op, 0) for op in options.op_types},
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(entry["reason"] for entry in skipped)),
        "constants_lifted": edits.lifted,
        "gemms_rewritten": edits.gemms,
        "weights_split": edits.split,
        "nodes_named": edits.renamed,
        "weight_bytes_before": before,
        "weight_bytes_after": after,
        "op_changes": op_changes,
    }


def _unmatched_exclusions(proto: onnx.ModelProto, options: WeightOnlyOptions) -> list[str]:
    names = {node.name for node in iter_nodes(proto)}
    return [entry for entry in options.exclude if entry not in names and entry not in OP_TYPES]


def _notes(sites: list[_Site], options: WeightOnlyOptions, edits: _Edits, proto: onnx.ModelProto) -> list[str]:
    notes = list(edits.notes)
    for reason, count in Counter(site.reason for site in sites if site.reason).items():
        notes.append(f"{count} node(s) left float: {reason}")
    unmatched = _unmatched_exclusions(proto, options)
    if unmatched:
        notes.append(f"exclude entries matching no node name or op type: {', '.join(unmatched)}")
    if edits.split:
        notes.append(f"{edits.split} weight(s) used by both a Gather and a MatMul were copied so each is quantized its own way")
    if not any(site.reason is None for site in sites):
        return notes
    if options.accuracy_level == 4:
        notes.append("accuracy level 4: activations are quantized to int8 at run time on CPU (fastest, least exact)")
    elif options.bits == 8:
        # Measured: 8-bit MatMulNBits without int8 compute took ~7.5x the float time on a 1024-wide MLP (ORT 1.31 CPU).
        notes.append("8-bit without accuracy level 4 takes a slow dequantizing path on ORT's CPU EP; accuracy level 4 avoids it")
    return notes


def _changes(sites: list[_Site], options: WeightOnlyOptions, edits: _Edits, before: int, after: int) -> list[str]:
    quantized = Counter(site.kind for site in sites if site.reason is None)
    scheme = f"{options.bits}-bit, block {options.block_size}, {'symmetric' if options.symmetric else 'asymmetric'}"
    lines = []
    if edits.lifted:
        lines.append(f"moved {edits.lifted} Constant weight(s) into initializers")
    if edits.gemms:
        lines.append(f"rewrote {edits.gemms} Gemm(s) with a constant B as MatMul (+ Add)")
    matmuls = quantized.get("MatMul", 0) + quantized.get("Gemm", 0)
    if matmuls:
        lines.append(f"quantized {matmuls} MatMul/Gemm weight(s) to MatMulNBits ({scheme})")
    if quantized.get("Gather"):
        lines.append(f"quantized {quantized['Gather']} Gather table(s) to GatherBlockQuantized ({scheme})")
    if edits.renamed:
        lines.append(f"named {edits.renamed} unnamed or duplicate-named MatMul/Gemm/Gather node(s)")
    lines.append(f"weights {_sizes(before, after)}")
    return lines


def _result(model: Model, proto: onnx.ModelProto, options: WeightOnlyOptions, sites: list[_Site], edits: _Edits) -> TransformResult:
    _mark_outcomes(proto, sites)
    before, after = _tensor_bytes(model.proto), _tensor_bytes(proto)
    op_changes = op_count_changes(model.proto, proto)
    return TransformResult(
        proto=proto,
        changed=True,
        changes=_changes(sites, options, edits, before, after),
        notes=_notes(sites, options, edits, proto),
        details=_details(sites, options, edits, before, after, op_changes),
    )


def _unchanged(model: Model, options: WeightOnlyOptions, sites: list[_Site], edits: _Edits) -> TransformResult:
    """Nothing to quantize: hand back the original untouched (no lifted Constants, no rewritten Gemms)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    size = _tensor_bytes(proto)
    edits = _Edits(notes=edits.notes)
    return TransformResult(
        proto=proto,
        changed=False,
        changes=[],
        notes=["no weight could be quantized"] + _notes(sites, options, edits, proto),
        details=_details(sites, options, edits, size, size, {}),
    )
