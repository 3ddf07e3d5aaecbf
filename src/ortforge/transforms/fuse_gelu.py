"""GELU fusion: the tanh approximation of GELU written out in elementwise ops, made one com.microsoft FastGelu node.

0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) is nine elementwise passes over the activation when an
exporter writes it out (jax2tf does: Google's magika has two, 12% of its time in Mul alone). ORT's own FastGeluFusion
matches the orders PyTorch exports write, not jax's (0.044715 * x first, then two more products by x), so the GELUs
stay; FastGelu computes the same formula in one pass (ORT's CPU kernel), float outputs equal to rounding.

Matched from each Tanh: its input a product of sqrt(2/pi) and x + 0.044715 * x * x * x (products in any order and
nesting), its output plus 1, times 0.5 and x (in any order). Every intermediate value must be read inside the pattern
only, or the site is left alone. The fused output keeps the inferred type and shape of the value it replaces, so
tools running onnx's shape inference (ORT's quantizer) still know it: onnx has no schema for the contrib op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx
from onnx import helper

from ortforge.core.graph import GraphIndex
from ortforge.core.model import Model
from ortforge.transforms import TransformResult

SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
CUBIC = 0.044715
MAX_FACTORS = 6  # a product chain longer than this is not a GELU term
MICROSOFT = "com.microsoft"


@dataclass
class GeluSite:
    """One written-out GELU: its input, its output, and every node of the pattern (the proto's own node objects)."""

    x: str
    output: str
    nodes: list[onnx.NodeProto]


def _factors(index: GraphIndex, name: str, nodes: list[onnx.NodeProto]) -> list[str] | None:
    """The factors of a product (nested Mul nodes flattened), collecting the Mul nodes; None when over MAX_FACTORS."""
    node = index.producer.get(name)
    if node is None or node.op_type != "Mul" or node.domain not in ("", "ai.onnx"):
        return [name]
    nodes.append(node)
    found: list[str] = []
    for part in node.input:
        sub = _factors(index, part, nodes)
        if sub is None or len(found) + len(sub) > MAX_FACTORS:
            return None
        found += sub
    return found


def _split(index: GraphIndex, factors: list[str]) -> tuple[list[float], list[str]]:
    constants = [index.scalar(f) for f in factors]
    return [c for c in constants if c is not None], [f for f, c in zip(factors, constants) if c is None]


def _close(value: float, expected: float) -> bool:
    return abs(value - expected) <= 1e-4 * max(1.0, abs(expected))


def _inner_x(index: GraphIndex, name: str, nodes: list[onnx.NodeProto]) -> str | None:
    """x, when `name` is x + 0.044715 * x^3 (the Add's operands in either order)."""
    add = index.producer.get(name)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    for x, cube in (add.input, add.input[::-1]):
        chain: list[onnx.NodeProto] = []
        factors = _factors(index, cube, chain)
        if factors is None:
            continue
        constants, others = _split(index, factors)
        if len(constants) == 1 and _close(constants[0], CUBIC) and others == [x] * 3:
            nodes += [add, *chain]
            return x
    return None


def _site_at(index: GraphIndex, tanh: onnx.NodeProto) -> GeluSite | None:
    nodes: list[onnx.NodeProto] = [tanh]
    factors = _factors(index, tanh.input[0], nodes)
    if factors is None:
        return None
    constants, others = _split(index, factors)
    if len(constants) != 1 or not _close(constants[0], SQRT_2_OVER_PI) or len(others) != 1:
        return None
    x = _inner_x(index, others[0], nodes)
    readers = index.consumers.get(tanh.output[0], [])
    if x is None or len(readers) != 1 or readers[0].op_type != "Add":
        return None
    plus_one = readers[0]
    ones = [n for n in plus_one.input if (value := index.scalar(n)) is not None and _close(value, 1.0)]
    if len(ones) != 1 or tanh.output[0] not in plus_one.input:
        return None
    nodes.append(plus_one)
    current = plus_one  # climb the product until it holds x, 0.5 and (1 + tanh)
    while True:
        readers = index.consumers.get(current.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "Mul":
            return None
        current = readers[0]
        chain: list[onnx.NodeProto] = []
        product = _factors(index, current.output[0], chain)
        if product is None:
            return None
        constants, others = _split(index, product)
        if sorted(others) == sorted([x, plus_one.output[0]]) and len(constants) == 1 and _close(constants[0], 0.5):
            unique = list({id(n): n for n in nodes + chain}.values())
            return GeluSite(x, current.output[0], unique)


def find_gelus(proto: onnx.ModelProto) -> list[GeluSite]:
    """Written-out tanh GELUs of the main graph whose intermediate values nothing else reads."""
    index = GraphIndex(proto)
    outputs = {o.name for o in proto.graph.output}
    found = []
    for tanh in [n for n in proto.graph.node if n.op_type == "Tanh"]:
        site = _site_at(index, tanh)
        if site is None:
            continue
        inside = {id(n) for n in site.nodes}
        produced = {o for n in site.nodes for o in n.output if o != site.output}
        leaks = any(o in outputs or any(id(r) not in inside for r in index.consumers.get(o, [])) for o in produced)
        if not leaks:
            found.append(site)
    return found


def fuse_gelu(model: Model) -> TransformResult:
    """Replace each written-out tanh GELU with one FastGelu node (see the module's description)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    sites = find_gelus(proto)
    if not sites:
        return TransformResult(proto, False, notes=["no written-out tanh GELU to fuse"])
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    known = {v.name for v in proto.graph.value_info}
    for site in sites:
        position = next(i for i, n in enumerate(proto.graph.node) if site.output in n.output)
        fused = helper.make_node("FastGelu", [site.x], [site.output], name=f"{site.output}_FastGelu", domain=MICROSOFT)
        proto.graph.node.insert(position, fused)
        for node in site.nodes:
            proto.graph.node.remove(node)
        if site.output in inferred and site.output not in known:
            proto.graph.value_info.append(inferred[site.output])
    if not any(entry.domain == MICROSOFT for entry in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MICROSOFT, 1))
    removed = sum(len(s.nodes) for s in sites)
    return TransformResult(proto, True, [f"fused {len(sites)} written-out tanh GELU(s) ({removed} nodes) into FastGelu"],
                           details={"gelus": len(sites), "nodes_removed": removed})  # fmt: skip
