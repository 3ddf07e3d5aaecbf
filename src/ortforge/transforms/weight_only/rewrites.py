"""Edits made before ORT's quantizer runs, for what it would otherwise miss or get wrong.

Unique node names (it excludes by name), Constant weights lifted to initializers (it quantizes only
initializers), Gemm rewritten as MatMul (+ Add) (it quantizes only MatMul), and a weight shared by a
Gather and a MatMul copied per role (both quantized forms would get the same name).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ortforge.core.model import fresh_name, iter_graphs, iter_nodes
from ortforge.transforms.weight_only.graph import _attributes, _lookup, _taken_names
from ortforge.transforms.weight_only.options import FLOAT_TYPES, OP_TYPES
from ortforge.transforms.weight_only.sites import _is_target, _position, _Site


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
